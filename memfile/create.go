package memfile

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvdimm-backend/nvdimm-backend/internal/atomicfile"
)

// CreateOptions describes a new backing.
type CreateOptions struct {
	// Size is what the guest sees (QEMU's P); it must be a multiple of Align.
	Size uint64
	// LabelSize is the label area at the end of the backing: 0 or at least
	// 128 KiB.
	LabelSize uint64
	// Align is the backend alignment; 0 means DefaultAlign (2 MiB).
	Align uint64
	// Prealloc allocates every block now (fallocate, or zero-filling where
	// the filesystem has no fallocate) instead of leaving the file sparse.
	Prealloc bool
	// Progress, if set, is called while preallocating.
	Progress func(done, total uint64)
	// ReadOnly is recorded in the metadata: the backing may then only be
	// attached read-only.
	ReadOnly bool
	// Perm is the file permission; 0 means 0600.
	Perm os.FileMode
	// Context cancels a long preallocation; nil means never.
	Context context.Context
	// Probe finds the kind of the created file; the zero value probes the host.
	Probe Probe
}

// CreateReport says how a backing was made.
type CreateReport struct {
	// ZeroFilled is true when the filesystem had no fallocate and the
	// blocks were written with zeros.
	ZeroFilled bool
	// FreeBytes is the free space the filesystem reported before creation.
	FreeBytes uint64
	// Warnings are notes for the operator (overcommitted sparse file, ...).
	Warnings []string
}

// ErrNoSpace means a backing could not be created for lack of space: the
// filesystem had less free space than the backing needs up front, or the
// filesystem or the user's quota ran out while it was written (the ENOSPC
// or EDQUOT then stays in the chain as well). Match it with errors.Is.
var ErrNoSpace = errors.New("not enough free space")

// noSpaceError puts an ENOSPC or EDQUOT failure under ErrNoSpace, its
// text unchanged.
type noSpaceError struct{ err error }

func (e noSpaceError) Error() string   { return e.err.Error() }
func (e noSpaceError) Unwrap() []error { return []error{e.err, ErrNoSpace} }

// markNoSpace returns err under ErrNoSpace if it is an ENOSPC or EDQUOT
// failure not already there, otherwise err unchanged.
func markNoSpace(err error) error {
	if err == nil || errors.Is(err, ErrNoSpace) || !(errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT)) {
		return err
	}
	return noSpaceError{err}
}

// sparseReserve is the free space a sparse create needs besides the
// label area: the metadata record and a little slack.
const sparseReserve = 64 * KiB

// statfsFree reports the free bytes available to unprivileged users in dir.
var statfsFree = func(dir string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// Create makes a new backing at path, never overwriting anything, and
// writes its metadata record. On any error nothing is left behind; too
// little free space is errors.Is ErrNoSpace.
func Create(path string, o CreateOptions) (*Backing, error) {
	b, _, err := CreateWithReport(path, o)
	return b, err
}

// CreateWithReport is Create that also says how the backing was made.
// Too little free space, up front or while the backing is written, is
// errors.Is ErrNoSpace.
func CreateWithReport(path string, o CreateOptions) (b *Backing, rep CreateReport, err error) {
	defer func() { err = markNoSpace(err) }()
	align := o.Align
	if align == 0 {
		align = DefaultAlign
	}
	layout, err := ComputeLayout(o.Size, o.LabelSize, align)
	if err != nil {
		return nil, rep, fmt.Errorf("create %s: %w", path, err)
	}
	if path == "" {
		return nil, rep, errors.New("create: empty path")
	}
	dir := filepath.Dir(path)
	di, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, rep, fmt.Errorf("create %s: directory %s does not exist; create it first", path, dir)
	case err != nil:
		return nil, rep, fmt.Errorf("create %s: %w", path, err)
	case !di.IsDir():
		return nil, rep, fmt.Errorf("create %s: %s is not a directory", path, dir)
	}
	if fi, err := os.Lstat(path); err == nil {
		what := "a file"
		switch {
		case fi.IsDir():
			what = "a directory"
		case fi.Mode()&os.ModeDevice != 0:
			what = "a device (devdax and pmem devices are used as they are: run inspect or qemu-args on them)"
		}
		return nil, rep, fmt.Errorf("create %s: already exists as %s; refusing to overwrite it", path, what)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, rep, fmt.Errorf("create %s: %w", path, err)
	}
	mp := MetaPath(path)
	if _, err := os.Lstat(mp); err == nil {
		return nil, rep, fmt.Errorf("create %s: a metadata record %s already exists without its backing; remove it first", path, mp)
	}
	free, err := statfsFree(dir)
	if err != nil {
		return nil, rep, fmt.Errorf("create %s: free space of %s: %w", path, dir, err)
	}
	rep.FreeBytes = free
	need := layout.LabelSize + sparseReserve
	if o.Prealloc {
		need = layout.BackingSize + sparseReserve
	}
	if free < need {
		how := "a sparse backing needs room for its label area and metadata"
		if o.Prealloc {
			how = "--prealloc allocates the whole backing"
		}
		return nil, rep, fmt.Errorf("create %s: %w in %s: %s free, %s needed (%s); free some space or choose another directory",
			path, ErrNoSpace, dir, FormatSize(free), FormatSize(need), how)
	}
	if !o.Prealloc && free < layout.BackingSize {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("sparse backing of %s on a filesystem with %s free: guest writes beyond that fail and the guest sees a memory error",
			FormatSize(layout.BackingSize), FormatSize(free)))
	}
	perm := o.Perm
	if perm == 0 {
		perm = 0o600
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, perm)
	if err != nil {
		return nil, rep, fmt.Errorf("create %s: %w", path, err)
	}
	metaWritten := false
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(path)
			if metaWritten {
				os.Remove(mp)
			}
			_ = atomicfile.SyncDir(dir)
		}
	}()
	if err = f.Truncate(int64(layout.BackingSize)); err != nil {
		if errors.Is(err, unix.EFBIG) {
			return nil, rep, fmt.Errorf("create %s: %w", path, tooLargeError(f, dir, layout, err))
		}
		return nil, rep, fmt.Errorf("create %s: set size %d: %w", path, layout.BackingSize, err)
	}
	if o.Prealloc {
		if rep.ZeroFilled, err = preallocate(f, layout.BackingSize, o); err != nil {
			return nil, rep, fmt.Errorf("create %s: preallocate: %w", path, err)
		}
	}
	if err = unix.Fsync(int(f.Fd())); err != nil {
		return nil, rep, fmt.Errorf("create %s: fsync: %w", path, err)
	}
	meta := &Meta{
		Version:  MetaVersion,
		Kind:     KindFile,
		Layout:   layout,
		ReadOnly: o.ReadOnly,
		Slot:     NoSlot,
		Prealloc: o.Prealloc,
		Created:  time.Now().UTC().Truncate(time.Second),
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, rep, fmt.Errorf("create %s: %w", path, err)
	}
	d, err := probeDevice(path, f, fi, o.Probe, true)
	if err != nil {
		return nil, rep, fmt.Errorf("create %s: %w", path, err)
	}
	meta.Kind = d.kind
	metaWritten = true
	if err = WriteMeta(path, meta); err != nil {
		return nil, rep, fmt.Errorf("create %s: %w", path, err)
	}
	if o.ReadOnly {
		// Hand back a read-only backing, as Open would.
		f2, err2 := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
		if err2 != nil {
			err = fmt.Errorf("create %s: reopen read-only: %w", path, err2)
			return nil, rep, err
		}
		f.Close()
		f = f2
	}
	b, err = newBacking(path, f, meta, OpenOptions{Probe: o.Probe}, o.ReadOnly)
	if err != nil {
		return nil, rep, err
	}
	return b, rep, nil
}

// tooLargeError explains an EFBIG from sizing the new, empty file f to
// the backing of l: it finds the largest size the filesystem (or the
// process's file-size limit) accepts, names both numbers and the largest
// --size that would fit.
func tooLargeError(f *os.File, dir string, l Layout, cause error) error {
	size := l.BackingSize
	limit, ok := maxFileSize(func(n int64) error { return f.Truncate(n) }, size)
	_ = f.Truncate(0)
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	if !ok {
		return fmt.Errorf("backing size %s (%d bytes) is larger than the filesystem at %s accepts: %w",
			FormatSize(size), size, dir, cause)
	}
	whose := "the filesystem at " + dir
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_FSIZE, &rl) == nil && rl.Cur != unix.RLIM_INFINITY && rl.Cur <= limit {
		whose = "this process's file-size limit (ulimit -f)"
	}
	fix := "use another filesystem"
	if limit > l.LabelSize {
		if p := (limit - l.LabelSize) &^ (l.Align - 1); p != 0 && p >= l.LabelSize {
			fix = fmt.Sprintf("use --size %s or less, or another filesystem", qemuSize(p))
		}
	}
	return fmt.Errorf("backing size %s (%d bytes) is larger than %s accepts: its largest file is %d bytes (%s); %s: %w",
		FormatSize(size), size, whose, limit, approxSize(limit), fix, cause)
}

// approxSize renders a limit that is not a whole unit as the next whole
// multiple of its largest unit minus the rest ("16 TiB - 4 KiB").
func approxSize(n uint64) string {
	for _, u := range []uint64{TiB, GiB, MiB, KiB} {
		if n > u && n%u != 0 {
			up := (n/u + 1) * u
			return FormatSize(up) + " - " + FormatSize(up-n)
		}
		if n >= u {
			break
		}
	}
	return FormatSize(n)
}

// maxFileSize finds the largest n below size for which trunc(n) succeeds
// with a binary search (about 63 truncates of an empty file, which
// allocate nothing). It assumes trunc fails with EFBIG exactly above the
// limit; ok is false if some other error or no accepted size turns up.
func maxFileSize(trunc func(int64) error, size uint64) (limit uint64, ok bool) {
	lo, hi := uint64(0), min(size, MaxBackingSize) // lo accepted, hi refused
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		err := trunc(int64(mid))
		switch {
		case err == nil:
			lo = mid
		case errors.Is(err, unix.EFBIG) || errors.Is(err, unix.EINVAL):
			hi = mid
		default:
			return 0, false
		}
	}
	return lo, lo != 0
}

// preallocChunk is how much is allocated between progress reports.
const preallocChunk = 256 * MiB

// preallocate allocates [0, size) with fallocate, or writes zeros where the
// filesystem has no fallocate. It reports whether it zero-filled.
func preallocate(f *os.File, size uint64, o CreateOptions) (bool, error) {
	ctx := o.Context
	if ctx == nil {
		ctx = context.Background()
	}
	progress := func(done uint64) {
		if o.Progress != nil {
			o.Progress(done, size)
		}
	}
	zero := false
	var buf []byte
	for off := uint64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return zero, err
		}
		n := min(size-off, preallocChunk)
		if !zero {
			err := unix.Fallocate(int(f.Fd()), 0, int64(off), int64(n))
			switch {
			case err == nil:
				off += n
				progress(off)
				continue
			case errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS):
				zero = true
				buf = make([]byte, 4*MiB)
			case errors.Is(err, unix.ENOSPC):
				return zero, fmt.Errorf("fallocate at %d: filesystem full: %w", off, err)
			default:
				return zero, fmt.Errorf("fallocate at %d: %w", off, err)
			}
		}
		w := min(n, uint64(len(buf)))
		if _, err := f.WriteAt(buf[:w], int64(off)); err != nil {
			return zero, fmt.Errorf("zero-fill at %d: %w", off, err)
		}
		off += w
		progress(off)
	}
	return zero, nil
}

// Remove deletes a backing file and its metadata record. It refuses
// devices, and a backing that another user holds locked.
func Remove(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("remove %s: not a regular file; only backing files are removed", path)
	}
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	defer f.Close()
	fl := unix.Flock_t{Type: unix.F_WRLCK}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &fl); err != nil {
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			return fmt.Errorf("remove %s: %w: it is in use, probably by a running VM", path, ErrLocked)
		}
		return fmt.Errorf("remove %s: lock: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	if err := os.Remove(MetaPath(path)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", MetaPath(path), err)
	}
	return atomicfile.SyncDir(filepath.Dir(path))
}

// CreateMemfd makes an ephemeral backing in an anonymous memory file. Its
// Path is /proc/PID/fd/N, which QEMU can open while this process lives.
func CreateMemfd(name string, o CreateOptions) (*Backing, error) {
	align := o.Align
	if align == 0 {
		align = DefaultAlign
	}
	layout, err := ComputeLayout(o.Size, o.LabelSize, align)
	if err != nil {
		return nil, fmt.Errorf("memfd %s: %w", name, err)
	}
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd %s: %w", name, err)
	}
	path := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), fd)
	f := os.NewFile(uintptr(fd), path)
	if err := f.Truncate(int64(layout.BackingSize)); err != nil {
		f.Close()
		return nil, fmt.Errorf("memfd %s: set size %d: %w", name, layout.BackingSize, err)
	}
	meta := &Meta{Version: MetaVersion, Kind: KindMemfd, Layout: layout, ReadOnly: o.ReadOnly, Slot: NoSlot}
	return &Backing{
		path: path, kind: KindMemfd, f: f, size: layout.BackingSize, layout: layout, meta: meta,
		readOnly: false,
	}, nil
}
