package memfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/nvdimm-backend/nvdimm-backend/internal/atomicfile"
)

// Clone methods reported by Clone.
const (
	CloneReflink       = "reflink"         // FICLONE: shared extents, instant
	CloneCopyFileRange = "copy_file_range" // in-kernel copy of the data extents
	CloneCopy          = "copy"            // read/write copy of the data extents
)

// copyChunk is the largest piece copied between progress reports.
const copyChunk = 64 * MiB

// Clone makes dst a writable copy of the backing file src (for a per-guest
// copy of a golden image) and copies its metadata record with ReadOnly
// cleared. It tries a FICLONE reflink first and falls back to
// copy_file_range over the data extents (holes stay holes), then to a
// plain copy. It holds a shared lock on src while copying, so a backing
// that a VM is writing is refused. dst must not exist; on error nothing is
// left behind. It returns the method used.
func Clone(src, dst string, progress func(done, total uint64)) (method string, err error) {
	sfi, err := os.Stat(src)
	if err != nil {
		return "", fmt.Errorf("clone %s: %w", src, err)
	}
	if !sfi.Mode().IsRegular() {
		return "", fmt.Errorf("clone %s: not a regular file; only backing files can be cloned", src)
	}
	meta, err := ReadMeta(src)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("clone %s: %w", src, err)
	}
	if meta != nil && uint64(sfi.Size()) != meta.Layout.BackingSize {
		return "", fmt.Errorf("clone %s: file is %d bytes but its metadata record says %d", src, sfi.Size(), meta.Layout.BackingSize)
	}
	sf, err := os.OpenFile(src, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("clone %s: %w", src, err)
	}
	defer sf.Close()
	fl := unix.Flock_t{Type: unix.F_RDLCK}
	if err := unix.FcntlFlock(sf.Fd(), unix.F_OFD_SETLK, &fl); err != nil {
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			return "", fmt.Errorf("clone %s: %w: a writer holds it, probably a running VM; a copy now would be inconsistent", src, ErrLocked)
		}
		return "", fmt.Errorf("clone %s: lock: %w", src, err)
	}
	if _, err := os.Lstat(dst); err == nil {
		return "", fmt.Errorf("clone to %s: already exists; refusing to overwrite it", dst)
	}
	dmp := MetaPath(dst)
	if _, err := os.Lstat(dmp); err == nil {
		return "", fmt.Errorf("clone to %s: a metadata record %s already exists; remove it first", dst, dmp)
	}
	df, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, sfi.Mode().Perm())
	if err != nil {
		return "", fmt.Errorf("clone to %s: %w", dst, err)
	}
	defer func() {
		df.Close()
		if err != nil {
			os.Remove(dst)
			os.Remove(dmp)
		}
	}()
	total := uint64(sfi.Size())
	if err = unix.IoctlFileClone(int(df.Fd()), int(sf.Fd())); err == nil {
		method = CloneReflink
		if progress != nil {
			progress(total, total)
		}
	} else {
		method, err = copyExtents(sf, df, total, progress)
		if err != nil {
			return "", fmt.Errorf("clone %s to %s: %w", src, dst, err)
		}
	}
	if err = unix.Fsync(int(df.Fd())); err != nil {
		return "", fmt.Errorf("clone to %s: fsync: %w", dst, err)
	}
	if meta != nil {
		m := *meta
		m.ReadOnly = false
		if err = WriteMeta(dst, &m); err != nil {
			return "", fmt.Errorf("clone to %s: %w", dst, err)
		}
	}
	if err = atomicfile.SyncDir(filepath.Dir(dst)); err != nil {
		return "", err
	}
	return method, nil
}

// copyExtents copies the data extents of sf into df (sized total), leaving
// holes as holes. It uses copy_file_range and, where the kernel refuses it
// for these files, read and write.
func copyExtents(sf, df *os.File, total uint64, progress func(done, total uint64)) (string, error) {
	if err := df.Truncate(int64(total)); err != nil {
		return "", err
	}
	method := CloneCopyFileRange
	var buf []byte
	report := func(done uint64) {
		if progress != nil {
			progress(done, total)
		}
	}
	sfd := int(sf.Fd())
	for off := int64(0); off < int64(total); {
		data, err := unix.Seek(sfd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole remains
		}
		if err != nil {
			data = off // no SEEK_DATA: copy everything
		}
		hole, err := unix.Seek(sfd, data, unix.SEEK_HOLE)
		if err != nil || hole > int64(total) {
			hole = int64(total)
		}
		report(uint64(data))
		for pos := data; pos < hole; {
			n := min(hole-pos, copyChunk)
			if method == CloneCopyFileRange {
				roff, woff := pos, pos
				c, err := copyFileRange(sfd, &roff, int(df.Fd()), &woff, int(n), 0)
				switch {
				case err == nil && c > 0:
					pos += int64(c)
					report(uint64(pos))
					continue
				case err == nil && c == 0:
					return "", fmt.Errorf("copy_file_range at %d: source ended early", pos)
				case errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) ||
					errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP):
					method = CloneCopy
					buf = make([]byte, 4*MiB)
				default:
					return "", fmt.Errorf("copy_file_range at %d: %w", pos, err)
				}
			}
			m := min(n, int64(len(buf)))
			r, err := sf.ReadAt(buf[:m], pos)
			if r == 0 && err != nil {
				if err == io.EOF {
					return "", fmt.Errorf("read at %d: source ended early", pos)
				}
				return "", fmt.Errorf("read at %d: %w", pos, err)
			}
			if _, err := df.WriteAt(buf[:r], pos); err != nil {
				return "", fmt.Errorf("write at %d: %w", pos, err)
			}
			pos += int64(r)
			report(uint64(pos))
		}
		off = hole
	}
	report(total)
	return method, nil
}

// copyFileRange is unix.CopyFileRange; tests replace it to force the
// read/write fallback.
var copyFileRange = unix.CopyFileRange
