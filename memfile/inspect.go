package memfile

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// Info is what inspect reports about a backing. Its JSON form is stable.
type Info struct {
	Path string `json:"path"`
	Kind string `json:"kind"`
	Size uint64 `json:"size"`
	// Allocated is the bytes the filesystem allocated (regular files).
	Allocated uint64 `json:"allocated,omitempty"`
	DAX       bool   `json:"dax"`
	MapSync   bool   `json:"map_sync"`
	// DevAlign is the devdax alignment from sysfs (devdax only).
	DevAlign uint64 `json:"devdax_align,omitempty"`
	Layout   Layout `json:"layout"`
	ReadOnly bool   `json:"read_only"`
	// LockedBy is "none", "shared" or "exclusive": the lock another user
	// (usually a running VM) holds on the backing.
	LockedBy string `json:"locked_by"`
	// Meta is the metadata record, absent when there is none.
	Meta *Meta `json:"meta,omitempty"`
}

// Info describes the open backing.
func (b *Backing) Info() Info {
	in := Info{
		Path: b.path, Kind: b.kind, Size: b.size, DAX: b.dax, MapSync: b.mapSync,
		DevAlign: b.devAlign, Layout: b.layout, ReadOnly: b.readOnly, Meta: b.meta,
		LockedBy: b.lockedBy(),
	}
	if b.kind == KindFile || b.kind == KindDAXFile {
		if fi, err := b.f.Stat(); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Blocks > 0 {
				in.Allocated = uint64(st.Blocks) * 512
			}
		}
	}
	return in
}

// lockedBy asks the kernel which lock another open file holds, if any.
func (b *Backing) lockedBy() string {
	fl := unix.Flock_t{Type: unix.F_WRLCK}
	if err := unix.FcntlFlock(b.f.Fd(), unix.F_OFD_GETLK, &fl); err != nil {
		return "unknown"
	}
	switch fl.Type {
	case unix.F_RDLCK:
		return LockShared.String()
	case unix.F_WRLCK:
		return LockExclusive.String()
	}
	return LockNone.String()
}

// Inspect opens the backing at path read-only and describes it. A
// LabelSize or Align in o that disagrees with the metadata record is
// refused (see CheckOptions).
func Inspect(path string, o OpenOptions) (Info, error) {
	o.ReadOnly = true
	b, err := Open(path, o)
	if err != nil {
		return Info{}, fmt.Errorf("inspect: %w", err)
	}
	defer b.Close()
	if err := b.CheckOptions(o); err != nil {
		return Info{}, fmt.Errorf("inspect: %w", err)
	}
	in := b.Info()
	in.ReadOnly = b.meta != nil && b.meta.ReadOnly
	return in, nil
}
