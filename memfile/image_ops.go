package memfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// VerifyReport is the result of re-hashing an image. Its JSON form is
// stable.
type VerifyReport struct {
	Name               string   `json:"name"`
	Path               string   `json:"path"`
	OK                 bool     `json:"ok"`
	SHA256             string   `json:"sha256"`
	ExpectedSHA256     string   `json:"expected_sha256"`
	DataSHA256         string   `json:"data_sha256"`
	ExpectedDataSHA256 string   `json:"expected_data_sha256"`
	Problems           []string `json:"problems,omitempty"`
}

// Verify re-hashes the image under a shared lock and compares it with the
// catalog; it also checks that the protections recorded are still in
// place (read-only record, no write permission, immutable attribute).
// A mismatch is reported in the VerifyReport (OK false), not as an error;
// errors are for images that cannot be read at all.
func (c *Catalog) Verify(name string, progress func(done, total uint64)) (VerifyReport, error) {
	im, err := c.Get(name)
	if err != nil {
		return VerifyReport{}, fmt.Errorf("image verify: %w", err)
	}
	rep := VerifyReport{Name: im.Name, Path: im.Path, ExpectedSHA256: im.SHA256, ExpectedDataSHA256: im.DataSHA256}
	fi, err := os.Stat(im.Path)
	if err != nil {
		return rep, fmt.Errorf("image verify %s: %w", name, err)
	}
	if uint64(fi.Size()) != im.Size {
		rep.Problems = append(rep.Problems, fmt.Sprintf("file is %d bytes, the catalog says %d", fi.Size(), im.Size))
		return rep, nil
	}
	if fi.Mode().Perm()&0o222 != 0 {
		rep.Problems = append(rep.Problems, fmt.Sprintf("file mode %v has write permission", fi.Mode().Perm()))
	}
	if im.Immutable && !isImmutable(im.Path) {
		rep.Problems = append(rep.Problems, "the immutable attribute was cleared")
	}
	if m, err := ReadMeta(im.Path); err != nil {
		rep.Problems = append(rep.Problems, fmt.Sprintf("metadata record: %v", err))
	} else if !m.ReadOnly {
		rep.Problems = append(rep.Problems, fmt.Sprintf("metadata record %s no longer marks it read-only", MetaPath(im.Path)))
	}
	f, err := os.OpenFile(im.Path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return rep, fmt.Errorf("image verify %s: %w", name, err)
	}
	defer f.Close()
	fl := unix.Flock_t{Type: unix.F_RDLCK}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &fl); err != nil {
		return rep, fmt.Errorf("image verify %s: lock %s: %w: a writer holds it", name, im.Path, ErrLocked)
	}
	d, err := hashImage(f, im.Size, im.Layout.DataOffset, im.Layout.DataSize, progress)
	if err != nil {
		return rep, fmt.Errorf("image verify %s: hashing %s: %w", name, im.Path, err)
	}
	rep.SHA256, rep.DataSHA256 = d.SHA256, d.DataSHA256
	if d.SHA256 != im.SHA256 {
		rep.Problems = append(rep.Problems, "SHA-256 of the file differs from the catalog: the image was modified")
	}
	if d.DataSHA256 != im.DataSHA256 {
		rep.Problems = append(rep.Problems, "SHA-256 of the data range differs from the catalog")
	}
	rep.OK = len(rep.Problems) == 0
	return rep, nil
}

// RemoveReport says what Remove did.
type RemoveReport struct {
	Name    string `json:"name"`
	Path    string `json:"path"`
	Deleted bool   `json:"deleted"` // the file and its record were deleted
}

// Remove drops the image from the catalog. It refuses an image another
// user holds locked (a VM attached through the daemon). A file built into
// the catalog directory is deleted; an added file is kept (its record
// stays read-only, the immutable attribute and the record's image marker
// are cleared) unless purge.
func (c *Catalog) Remove(name string, purge bool) (RemoveReport, error) {
	var rep RemoveReport
	err := c.update(func(ims []Image) ([]Image, error) {
		i := findImage(ims, name)
		if i < 0 {
			return nil, fmt.Errorf("image %q: %w", name, ErrImageNotFound)
		}
		im := ims[i]
		rep = RemoveReport{Name: name, Path: im.Path}
		if by := lockHolder(im.Path); by != LockNone.String() && by != "" {
			return nil, fmt.Errorf("%s: %w: another user holds a %s lock, probably a running VM; stop it first", im.Path, ErrLocked, by)
		}
		if im.Owned || purge {
			if err := removeImageFile(im.Path); err != nil {
				return nil, err
			}
			rep.Deleted = true
		} else {
			if f, err := os.OpenFile(im.Path, os.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0); err == nil {
				_, _ = setImmutable(f, false)
				f.Close()
			}
			// The file stays read-only but is no longer this image.
			if m, err := ReadMeta(im.Path); err == nil && m.Image == name {
				m.Image = ""
				if err := WriteMeta(im.Path, m); err != nil {
					return nil, err
				}
			}
		}
		return append(ims[:i:i], ims[i+1:]...), nil
	})
	if err != nil {
		return RemoveReport{}, fmt.Errorf("image rm %s: %w", name, err)
	}
	return rep, nil
}

// lockHolder is the OFD lock another user holds on path: "none",
// "shared", "exclusive", or "" when the file cannot be opened.
func lockHolder(path string) string {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return ""
	}
	defer f.Close()
	fl := unix.Flock_t{Type: unix.F_WRLCK}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &fl); err != nil {
		return ""
	}
	switch fl.Type {
	case unix.F_RDLCK:
		return LockShared.String()
	case unix.F_WRLCK:
		return LockExclusive.String()
	}
	return LockNone.String()
}

// Clone makes dst a private writable backing from the image: Clone (a
// reflink where the filesystem can, else a copy of the data extents) with
// a metadata record that is not read-only and owner write permission.
func (c *Catalog) Clone(name, dst string, progress func(done, total uint64)) (string, error) {
	im, err := c.Get(name)
	if err != nil {
		return "", fmt.Errorf("image clone: %w", err)
	}
	abs, err := filepath.Abs(dst)
	if err != nil {
		return "", fmt.Errorf("image clone %s to %s: %w", name, dst, err)
	}
	method, err := Clone(im.Path, abs, progress)
	if err != nil {
		return "", fmt.Errorf("image clone %s: %w", name, err)
	}
	fi, err := os.Stat(abs)
	if err == nil {
		err = os.Chmod(abs, fi.Mode().Perm()|0o200)
	}
	if err != nil {
		removeImageFile(abs)
		return "", fmt.Errorf("image clone %s to %s: %w", name, abs, err)
	}
	return method, nil
}

// Open opens the image for use by a guest: read-only, checked against the
// catalog's size, and held under a shared lock (so that Remove and
// writers are refused while it is in use). Map it with Map(b, true).
func (c *Catalog) Open(name string) (*Backing, error) {
	im, err := c.Get(name)
	if err != nil {
		return nil, err
	}
	b, err := Open(im.Path, OpenOptions{ReadOnly: true, Align: im.Layout.Align})
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", name, err)
	}
	if b.Size() != im.Size {
		b.Close()
		return nil, fmt.Errorf("image %s: %s is %d bytes, the catalog says %d: run image verify", name, im.Path, b.Size(), im.Size)
	}
	if err := b.Lock(LockShared, false); err != nil {
		b.Close()
		return nil, fmt.Errorf("image %s: %w", name, err)
	}
	return b, nil
}

// QEMUArgs builds the arguments that attach the image: always read-only
// (readonly=on,share=on on the backend, unarmed=on on the nvdimm). A
// writable attach is refused whatever the record says.
func (c *Catalog) QEMUArgs(name string, o QEMUArgOptions, writable bool) (QEMUArgs, error) {
	if writable {
		return QEMUArgs{}, fmt.Errorf("image %s: refusing a writable attach: images are shared read-only by every guest; make a private writable copy with `image clone %s PATH`", name, name)
	}
	im, err := c.Get(name)
	if err != nil {
		return QEMUArgs{}, err
	}
	m, err := ReadMeta(im.Path)
	if err != nil {
		return QEMUArgs{}, fmt.Errorf("image %s: %w", name, err)
	}
	if m.Layout.BackingSize != im.Size {
		return QEMUArgs{}, fmt.Errorf("image %s: record says %d bytes, the catalog %d: run image verify", name, m.Layout.BackingSize, im.Size)
	}
	m.ReadOnly = true
	o.ReadOnly = true
	a, err := QEMUArgsForMeta(im.Path, m, o)
	if err != nil {
		return QEMUArgs{}, fmt.Errorf("image %s: %w", name, err)
	}
	return a, nil
}

// ResidentBytes reports how many bytes of the file at path are in the
// page cache (mincore over a PROT_READ mapping, which faults nothing in),
// and the file size.
func ResidentBytes(path string) (resident, size uint64, err error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("resident %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, fmt.Errorf("resident %s: %w", path, err)
	}
	size = uint64(fi.Size())
	const window = 1 * GiB
	vec := make([]byte, window/PageSize)
	for off := uint64(0); off < size; off += window {
		n := min(window, size-off)
		m, err := unix.Mmap(int(f.Fd()), int64(off), int(n), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			return 0, size, fmt.Errorf("resident %s: map at %d: %w", path, off, err)
		}
		pages := (n + PageSize - 1) / PageSize
		err = mincore(m, vec[:pages])
		unix.Munmap(m) //nolint:errcheck
		if err != nil {
			return 0, size, fmt.Errorf("resident %s: mincore at %d: %w", path, off, err)
		}
		for i, v := range vec[:pages] {
			if v&1 != 0 {
				resident += min(PageSize, n-uint64(i)*PageSize)
			}
		}
	}
	return resident, size, nil
}

// ImageStatus is an image with what the host knows about it now. Its JSON
// form is the Image fields plus cached_bytes, locked_by and
// immutable_now.
type ImageStatus struct {
	Image
	// CachedBytes is how much of the file is in the host page cache.
	CachedBytes uint64 `json:"cached_bytes"`
	// LockedBy is the lock another user holds: none, shared, exclusive.
	LockedBy string `json:"locked_by"`
	// ImmutableNow reports the immutable attribute as it is now.
	ImmutableNow bool `json:"immutable_now"`
}

// Status describes the image called name.
func (c *Catalog) Status(name string) (ImageStatus, error) {
	im, err := c.Get(name)
	if err != nil {
		return ImageStatus{}, err
	}
	st := ImageStatus{Image: im, LockedBy: lockHolder(im.Path), ImmutableNow: isImmutable(im.Path)}
	if st.LockedBy == "" {
		st.LockedBy = "unknown"
	}
	if r, _, err := ResidentBytes(im.Path); err == nil {
		st.CachedBytes = r
	} else if !errors.Is(err, os.ErrNotExist) {
		return st, err
	}
	return st, nil
}

// mincore is mincore(2).
func mincore(m, vec []byte) error {
	if len(m) == 0 {
		return nil
	}
	_, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0])))
	if e != 0 {
		return e
	}
	return nil
}
