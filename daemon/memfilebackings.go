package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/nvdimm-backend/nvdimm-backend/label/backing"
	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

// ErrBadLayout marks a size or label size that memfile's layout refuses
// (not a multiple of the alignment, beyond the largest file, below the
// label area); the control API answers it with 400 "bad_layout".
var ErrBadLayout = errors.New("bad layout")

// MemfileBackings is the production Backings: backings are created and
// opened with memfile/, and locked with memfile's OFD locks (shared for
// read-only use, exclusive otherwise). Its errors are in the categories
// the control API maps to statuses: an existing file that is not a usable
// backing is ErrUnusableBacking, a request the existing backing
// contradicts ErrConflict, a size memfile refuses ErrBadLayout.
type MemfileBackings struct {
	// Provision writes the requested namespace into a just-created
	// backing; nil means provisionNamespace. Tests replace it.
	Provision func(b *memfile.Backing, namespace, mode string, slot int) error
}

// provisionNamespace gives a just-created backing its namespace through
// package label/backing: v1.2 labels and a namespace over the whole DIMM
// with its info block (mode "" is fsdax) or, without a label area, only
// the info block; the namespace is recorded in the metadata. slot is the
// DIMM slot the labels are written for (memfile.NoSlot: slot 0).
func provisionNamespace(b *memfile.Backing, namespace, mode string, slot int) error {
	_, err := backing.Provision(b, backing.ProvisionSpec{Name: namespace, Mode: mode, Slot: slot})
	return err
}

// Prepare implements Backings.
func (m MemfileBackings) Prepare(ctx context.Context, s BackingSpec) (BackingInfo, error) {
	_, err := os.Stat(s.Path)
	if errors.Is(err, fs.ErrNotExist) {
		if s.Size == 0 {
			return BackingInfo{}, fmt.Errorf("%w: %s does not exist and no size was given to create it", ErrInvalid, s.Path)
		}
		// memfile.Create computes the same layout; refusing it here
		// tells a bad request from a failure to create the file.
		if _, err := memfile.ComputeLayout(s.Size, s.LabelSize, memfile.DefaultAlign); err != nil {
			return BackingInfo{}, tag(ErrBadLayout, err)
		}
		// The path is confined, so its missing parents are inside a
		// backing directory.
		if err := os.MkdirAll(filepath.Dir(s.Path), 0o700); err != nil {
			return BackingInfo{}, err
		}
		b, err := memfile.Create(s.Path, memfile.CreateOptions{Size: s.Size, LabelSize: s.LabelSize, ReadOnly: s.ReadOnly, Context: ctx})
		if err != nil {
			return BackingInfo{}, createErr(err)
		}
		defer b.Close()
		if s.Namespace != "" {
			provision := m.Provision
			if provision == nil {
				provision = provisionNamespace
			}
			if err := provision(b, s.Namespace, s.Mode, s.Slot); err != nil {
				b.Close()
				_ = memfile.Remove(s.Path)
				return BackingInfo{}, provisionErr(fmt.Errorf("provisioning namespace %q: %w", s.Namespace, err))
			}
		}
		info := infoOf(b)
		if s.Namespace != "" && s.Slot >= 0 {
			slot := s.Slot
			info.Slot = &slot
		}
		info.Created = true
		return info, nil
	}
	if err != nil {
		return BackingInfo{}, backingErr(err)
	}
	if s.Namespace != "" {
		return BackingInfo{}, fmt.Errorf("%w: %s exists: a namespace is only provisioned in a backing created now", ErrConflict, s.Path)
	}
	b, err := memfile.Open(s.Path, memfile.OpenOptions{ReadOnly: s.ReadOnly, LabelSize: s.LabelSize})
	if err != nil {
		return BackingInfo{}, backingErr(err)
	}
	defer b.Close()
	info := infoOf(b)
	if s.Size != 0 && s.Size != info.Size {
		return BackingInfo{}, fmt.Errorf("%w: existing backing gives the guest %s, not the requested %s", ErrConflict, memfile.FormatSize(info.Size), memfile.FormatSize(s.Size))
	}
	if s.LabelSize != 0 && s.LabelSize != info.LabelSize {
		return BackingInfo{}, fmt.Errorf("%w: existing backing has a %s label area, not the requested %s", ErrConflict, memfile.FormatSize(info.LabelSize), memfile.FormatSize(s.LabelSize))
	}
	if r := b.Meta().ReadOnlyReason(); r != "" && !s.ReadOnly {
		if b.Meta().Image != "" {
			return BackingInfo{}, tag(ErrConflict, fmt.Errorf("refusing a writable device: %s; a device from the catalog takes --image %s", r, b.Meta().Image))
		}
		return BackingInfo{}, tag(ErrConflict, fmt.Errorf("refusing a writable device: %s: register it with --readonly", r))
	}
	return info, nil
}

func infoOf(b *memfile.Backing) BackingInfo {
	l := b.Layout()
	info := BackingInfo{BackingSize: b.Size(), Size: l.GuestSize, LabelSize: l.LabelSize, Align: l.Align, PMem: b.PMem()}
	if m := b.Meta(); m != nil && m.Slot >= 0 {
		slot := m.Slot
		info.Slot = &slot
	}
	return info
}

// Lock implements Backings.
func (MemfileBackings) Lock(path string, readOnly bool) (io.Closer, error) {
	b, err := memfile.Open(path, memfile.OpenOptions{ReadOnly: readOnly})
	if err != nil {
		return nil, backingErr(err)
	}
	kind := memfile.LockExclusive
	if readOnly {
		kind = memfile.LockShared
	}
	if err := b.Lock(kind, false); err != nil {
		b.Close()
		if errors.Is(err, memfile.ErrLocked) {
			return nil, fmt.Errorf("%w: %w", ErrBackingLocked, err)
		}
		return nil, err
	}
	return b, nil
}

// Remove implements Backings.
func (MemfileBackings) Remove(path string) error { return memfile.Remove(path) }
