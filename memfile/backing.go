package memfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/sync"
)

// OpenOptions controls Open.
type OpenOptions struct {
	// ReadOnly opens the backing O_RDONLY; mappings and the label area are
	// then read-only. A backing whose metadata says read-only is always
	// opened read-only.
	ReadOnly bool
	// LabelSize and Align describe a backing that has no metadata record
	// (a devdax or pmem device, or a file made elsewhere). Align 0 means
	// the devdax alignment for devdax, else DefaultAlign. They are ignored
	// when a metadata record exists.
	LabelSize uint64
	Align     uint64
	// Probe finds the kind; the zero value probes the host.
	Probe Probe
}

// Backing is an open backing store.
type Backing struct {
	path     string
	kind     string
	f        *os.File
	size     uint64
	layout   Layout
	meta     *Meta
	dax      bool
	mapSync  bool
	devAlign uint64
	readOnly bool

	mu sync.Mutex
	// +checklocks:mu
	held LockKind
	// +checklocks:mu
	areas []*Area
	// +checklocks:mu
	closed bool
}

// Open opens and validates the backing at path: it finds the kind, reads
// the metadata record when there is one, and checks that the size on disk
// matches it.
func Open(path string, o OpenOptions) (*Backing, error) {
	meta, err := ReadMeta(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	// The *fs.PathError of os.Stat, os.OpenFile and f.Stat names path.
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("open backing: %w", err)
	}
	if fi.IsDir() {
		return nil, fmt.Errorf("open backing %s: is a directory, not a backing", path)
	}
	readOnly := o.ReadOnly || (meta != nil && meta.ReadOnly)
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open backing: %w", err)
	}
	b, err := newBacking(path, f, meta, o, readOnly)
	if err != nil {
		f.Close()
		return nil, err
	}
	return b, nil
}

func newBacking(path string, f *os.File, meta *Meta, o OpenOptions, readOnly bool) (*Backing, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("open backing: %w", err)
	}
	d, err := probeDevice(path, f, fi, o.Probe, !readOnly)
	if err != nil {
		return nil, err
	}
	labelSize, align := o.LabelSize, o.Align
	if meta != nil {
		labelSize, align = meta.Layout.LabelSize, meta.Layout.Align
		if meta.Layout.BackingSize != d.size {
			return nil, fmt.Errorf("backing %s is %d bytes but its metadata record %s says %d: it was resized outside nvdimm-backend",
				path, d.size, MetaPath(path), meta.Layout.BackingSize)
		}
	}
	if align == 0 {
		align = DefaultAlign
		if d.devAlign != 0 {
			align = d.devAlign
		}
	}
	if d.devAlign != 0 && align < d.devAlign {
		return nil, fmt.Errorf("devdax %s: align %s is below the device's alignment %s: QEMU mappings must be %s aligned; use --align %s",
			path, FormatSize(align), FormatSize(d.devAlign), FormatSize(d.devAlign), FormatSize(d.devAlign))
	}
	layout, err := LayoutFromBacking(d.size, labelSize, align)
	if err != nil {
		return nil, fmt.Errorf("backing %s: %w", path, err)
	}
	return &Backing{
		path: path, kind: d.kind, f: f, size: d.size, layout: layout, meta: meta,
		dax: d.dax, mapSync: d.mapSync, devAlign: d.devAlign, readOnly: readOnly,
	}, nil
}

// CheckOptions refuses a LabelSize or Align in o that Open ignored
// because the backing has a metadata record saying otherwise, and a
// LabelSize below QEMU's minimum, so that a --label-size or --align given
// for such a backing is not silently replaced by the recorded one. Zero
// fields were not given and pass.
func (b *Backing) CheckOptions(o OpenOptions) error {
	if o.LabelSize != 0 && o.LabelSize < MinLabelSize {
		rec := ""
		if b.meta != nil {
			rec = fmt.Sprintf("; the label-size recorded in %s is %s: omit --label-size", MetaPath(b.path), FormatSize(b.meta.Layout.LabelSize))
		}
		return fmt.Errorf("backing %s: --label-size %s is below QEMU's minimum of %s%s", b.path, FormatSize(o.LabelSize), FormatSize(MinLabelSize), rec)
	}
	if b.meta == nil {
		return nil
	}
	rec := b.meta.Layout
	if o.LabelSize != 0 && o.LabelSize != rec.LabelSize {
		return fmt.Errorf("backing %s: --label-size %s conflicts with the label-size %s recorded in %s; omit --label-size (it describes backings without a metadata record)",
			b.path, FormatSize(o.LabelSize), FormatSize(rec.LabelSize), MetaPath(b.path))
	}
	if o.Align != 0 && o.Align != rec.Align {
		return fmt.Errorf("backing %s: --align %s conflicts with the align %s recorded in %s; omit --align (it describes backings without a metadata record)",
			b.path, FormatSize(o.Align), FormatSize(rec.Align), MetaPath(b.path))
	}
	return nil
}

// Path is the path the backing was opened by (for a memfd, a
// /proc/PID/fd/N path that other processes can open while this one lives).
func (b *Backing) Path() string { return b.path }

// Kind is one of the Kind constants.
func (b *Backing) Kind() string { return b.kind }

// Size is the whole backing size in bytes (QEMU's backend size).
func (b *Backing) Size() uint64 { return b.size }

// Meta is the metadata record, nil when the backing has none.
func (b *Backing) Meta() *Meta { return b.meta }

// Layout is QEMU's layout of this backing.
func (b *Backing) Layout() Layout { return b.layout }

// File is the open backing file.
func (b *Backing) File() *os.File { return b.f }

// DAX reports whether the backing is real persistent memory mapped
// directly (devdax, a file on a DAX filesystem, a DAX pmem block device).
func (b *Backing) DAX() bool { return b.dax }

// PMem reports whether QEMU should be told pmem=on: the backing is
// persistent memory mapped directly (devdax or a file on a DAX
// filesystem). A pmem block device is DAX but QEMU maps it through the
// page cache, so it is not.
func (b *Backing) PMem() bool {
	return b.dax && (b.kind == KindDevDAX || b.kind == KindDAXFile)
}

// MapSync reports whether the kernel accepts MAP_SYNC mappings of it.
func (b *Backing) MapSync() bool { return b.mapSync }

// DevAlign is the devdax alignment from sysfs, 0 for other kinds.
func (b *Backing) DevAlign() uint64 { return b.devAlign }

// ReadOnly reports whether the backing was opened read-only.
func (b *Backing) ReadOnly() bool { return b.readOnly }

// Close releases locks, label-area mappings and the file.
func (b *Backing) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	areas := b.areas
	b.areas = nil
	b.held = LockNone
	b.mu.Unlock()
	var first error
	for _, a := range areas {
		if err := a.unmap(); err != nil && first == nil {
			first = err
		}
	}
	if err := b.f.Close(); err != nil && first == nil {
		first = fmt.Errorf("close backing %s: %w", b.path, err)
	}
	return first
}

// Area is a backing's label area [S-L, S). Accesses outside it fail.
type Area struct {
	b    *Backing
	base int64 // offset of the label area in the backing
	size int64
	// For devdax, which has no read/write, the area is accessed through a
	// shared mapping of the aligned window that contains it.
	mapped []byte
	skip   int64 // offset of the label area within mapped
}

// LabelArea returns the label area, or an error if the backing has none.
func (b *Backing) LabelArea() (*Area, error) {
	l := b.layout
	if l.LabelSize == 0 {
		return nil, fmt.Errorf("backing %s has no label area (label-size 0)", b.path)
	}
	if l.LabelSize > 1<<40 {
		return nil, fmt.Errorf("backing %s: label area of %s is implausibly large", b.path, FormatSize(l.LabelSize))
	}
	a := &Area{b: b, base: int64(l.LabelOffset), size: int64(l.LabelSize)}
	if b.kind == KindDevDAX {
		start := l.LabelOffset &^ (b.devAlign - 1)
		prot := unix.PROT_READ
		if !b.readOnly {
			prot |= unix.PROT_WRITE
		}
		m, err := mmapLabel(int(b.f.Fd()), int64(start), int(b.size-start), prot, unix.MAP_SHARED)
		if err != nil {
			return nil, fmt.Errorf("devdax %s: map label area at %d: %w", b.path, start, err)
		}
		a.mapped, a.skip = m, int64(l.LabelOffset-start)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		_ = a.unmap()
		return nil, fmt.Errorf("backing %s: closed", b.path)
	}
	b.areas = append(b.areas, a)
	return a, nil
}

// Size is the label area's size in bytes.
func (a *Area) Size() int64 { return a.size }

func (a *Area) check(op string, n int, off int64) error {
	if off < 0 || off > a.size || int64(n) > a.size-off {
		return fmt.Errorf("label area of %s: %s of %d bytes at offset %d is outside the %d-byte area: %w",
			a.b.path, op, n, off, a.size, io.EOF)
	}
	return nil
}

// ReadAt reads len(p) bytes at offset off within the label area.
func (a *Area) ReadAt(p []byte, off int64) (int, error) {
	if err := a.check("read", len(p), off); err != nil {
		return 0, err
	}
	if a.mapped != nil {
		return copy(p, a.mapped[a.skip+off:]), nil
	}
	n, err := a.b.f.ReadAt(p, a.base+off)
	if err != nil {
		return n, fmt.Errorf("label area of %s: read at %d: %w", a.b.path, off, err)
	}
	return n, nil
}

// WriteAt writes p at offset off within the label area.
func (a *Area) WriteAt(p []byte, off int64) (int, error) {
	if a.b.readOnly {
		return 0, fmt.Errorf("label area of %s: the backing is open read-only", a.b.path)
	}
	if err := a.check("write", len(p), off); err != nil {
		return 0, err
	}
	if a.mapped != nil {
		return copy(a.mapped[a.skip+off:], p), nil
	}
	n, err := a.b.f.WriteAt(p, a.base+off)
	if err != nil {
		return n, fmt.Errorf("label area of %s: write at %d: %w", a.b.path, off, err)
	}
	return n, nil
}

// Sync makes label writes durable.
func (a *Area) Sync() error {
	if a.mapped != nil {
		if err := unix.Msync(a.mapped, unix.MS_SYNC); err != nil {
			return fmt.Errorf("label area of %s: msync: %w", a.b.path, err)
		}
		return nil
	}
	if a.b.kind == KindMemfd {
		return nil
	}
	if err := unix.Fdatasync(int(a.b.f.Fd())); err != nil {
		return fmt.Errorf("label area of %s: fdatasync: %w", a.b.path, err)
	}
	return nil
}

func (a *Area) unmap() error {
	if a.mapped == nil {
		return nil
	}
	m := a.mapped
	a.mapped = nil
	if err := unix.Munmap(m); err != nil {
		return fmt.Errorf("label area of %s: munmap: %w", a.b.path, err)
	}
	return nil
}

// mmapLabel maps a devdax label window; tests replace it because the
// character device they stand in with maps only from offset 0.
var mmapLabel = unix.Mmap
