package memfile

import (
	"fmt"
	"math/bits"
	"strings"
)

// Sizes and alignments that QEMU and the Linux guest enforce.
const (
	// MinLabelSize is QEMU's smallest non-zero nvdimm label-size.
	MinLabelSize = 128 * KiB
	// PageSize is the host base page size this tool assumes (x86-64, arm64
	// with 4 KiB pages). QEMU rounds a file backend to it.
	PageSize = 4 * KiB
	// DefaultAlign is the backend alignment used when none is given. 2 MiB
	// is the guest's memremap_compat_align on x86-64: a device whose start
	// or end is not a multiple of it is refused by nd_pmem ("misaligned,
	// unable to map", probe error -95).
	DefaultAlign = 2 * MiB
	// GuestMapAlign is the alignment the guest needs for the start and end
	// of a pmem range it maps with struct pages (fsdax, devdax, virtio-pmem).
	GuestMapAlign = 2 * MiB
	// RegionAlign is the default alignment of a libnvdimm region in the
	// guest; namespaces in a region that is not a multiple of it lose the
	// tail or cannot be created with the default alignment.
	RegionAlign = 16 * MiB
)

// Layout is where QEMU puts things in a backing of BackingSize bytes:
// guest-visible pmem in [0, GuestSize), an unused tail in
// [GuestSize, LabelOffset) and the label area in [LabelOffset, BackingSize).
type Layout struct {
	GuestSize   uint64   `json:"guest_size"`
	LabelSize   uint64   `json:"label_size"`
	Align       uint64   `json:"align"`
	BackingSize uint64   `json:"backing_size"`
	LabelOffset uint64   `json:"label_offset"`
	Warnings    []string `json:"warnings,omitempty"`
}

// checkLabelAlign validates the label size and backend alignment the way
// QEMU does, with messages that name the numbers and the fix.
func checkLabelAlign(labelSize, align uint64) error {
	if labelSize != 0 && labelSize < MinLabelSize {
		return fmt.Errorf("label-size %s is below QEMU's minimum of %s: use --label-size 128K (or 0 for no label area)",
			FormatSize(labelSize), FormatSize(MinLabelSize))
	}
	if align == 0 {
		return fmt.Errorf("align 0: the backend alignment must be a power of two of at least %s (default %s)",
			FormatSize(PageSize), FormatSize(DefaultAlign))
	}
	if bits.OnesCount64(align) != 1 {
		return fmt.Errorf("align %s is not a power of two: QEMU refuses it; use 2M (or the hugepage or devdax alignment)",
			FormatSize(align))
	}
	if align < PageSize {
		return fmt.Errorf("align %s is below the page size %s: QEMU requires a multiple of the page size; use 2M",
			FormatSize(align), FormatSize(PageSize))
	}
	return nil
}

// MaxBackingSize is the largest backing Linux can hold in a file
// (MAX_LFS_FILESIZE on 64-bit hosts, 2^63-1 bytes, rounded down to the
// page size). A filesystem may allow less; Create reports its limit.
const MaxBackingSize = (1<<63 - 1) &^ (PageSize - 1)

// maxBackingText names MaxBackingSize in messages.
const maxBackingText = "8 EiB (2^63-1 bytes), the largest file Linux supports"

// ComputeLayout returns the backing for a guest-visible size guestSize
// (QEMU's P) with a label area of labelSize bytes (0 or at least 128 KiB)
// and backend alignment align: BackingSize S is the smallest page-multiple
// with align_down(S - L, A) == P, and the label area starts at S - L.
//
// The checks run in this order, so the first refusal is the one to fix
// first: label size and align, size 0, a size beyond what a file can
// hold, a size below the label size, then the alignment of the size.
func ComputeLayout(guestSize, labelSize, align uint64) (Layout, error) {
	if err := checkLabelAlign(labelSize, align); err != nil {
		return Layout{}, err
	}
	if guestSize == 0 {
		return Layout{}, fmt.Errorf("size 0: the guest-visible size must be at least the align %s", FormatSize(align))
	}
	if labelSize > MaxBackingSize || guestSize > MaxBackingSize-labelSize {
		what := "size " + FormatSize(guestSize)
		if labelSize != 0 {
			what += " plus label-size " + FormatSize(labelSize)
		}
		return Layout{}, fmt.Errorf("%s is beyond %s", what, maxBackingText)
	}
	if guestSize < labelSize {
		return Layout{}, fmt.Errorf("size %s is below the label-size %s: --size is what the guest sees, not counting the label area; use a size of at least %s",
			FormatSize(guestSize), FormatSize(labelSize), FormatSize(alignUp(labelSize, align)))
	}
	if guestSize%align != 0 {
		down := guestSize &^ (align - 1)
		up := down + align
		var fixes []string
		if down != 0 && down >= labelSize {
			fixes = append(fixes, qemuSize(down))
		}
		// up cannot wrap (guestSize < 2^63), but it may not fit in a file.
		if up <= MaxBackingSize-labelSize {
			fixes = append(fixes, qemuSize(up))
		}
		fix := "no size near it fits: use a smaller --size"
		if len(fixes) > 0 {
			fix = "use --size " + strings.Join(fixes, " or ")
		}
		return Layout{}, fmt.Errorf("size %s is not a multiple of the align %s: QEMU would give the guest only %s; %s",
			FormatSize(guestSize), FormatSize(align), FormatSize(down), fix)
	}
	// At most MaxBackingSize, a page multiple, so rounding up stays below it.
	s := alignUp(guestSize+labelSize, PageSize)
	return LayoutFromBacking(s, labelSize, align)
}

// LayoutFromBacking is QEMU's view of an existing backing of backingSize
// bytes with label size labelSize and backend alignment align: the guest
// sees P = align_down(S - L, A), the label area is the last L bytes.
func LayoutFromBacking(backingSize, labelSize, align uint64) (Layout, error) {
	if err := checkLabelAlign(labelSize, align); err != nil {
		return Layout{}, err
	}
	if backingSize == 0 {
		return Layout{}, fmt.Errorf("backing size 0: QEMU cannot map an empty backend")
	}
	if backingSize <= labelSize {
		return Layout{}, fmt.Errorf("backing size %s is not larger than the label-size %s: QEMU refuses it (the label area is the last %s of the backing)",
			FormatSize(backingSize), FormatSize(labelSize), FormatSize(labelSize))
	}
	p := (backingSize - labelSize) &^ (align - 1)
	if p == 0 {
		return Layout{}, fmt.Errorf("backing size %s minus label-size %s is below the align %s: the guest would see 0 bytes; use a backing of at least %s",
			FormatSize(backingSize), FormatSize(labelSize), FormatSize(align), FormatSize(align+labelSize))
	}
	l := Layout{
		GuestSize:   p,
		LabelSize:   labelSize,
		Align:       align,
		BackingSize: backingSize,
		LabelOffset: backingSize - labelSize,
	}
	l.Warnings = guestWarnings(l)
	return l, nil
}

// guestWarnings lists what the Linux guest would complain about.
func guestWarnings(l Layout) []string {
	var w []string
	if unused := l.LabelOffset - l.GuestSize; unused != 0 {
		w = append(w, fmt.Sprintf("%s of the backing between the guest range and the label area is unused (align %s)",
			FormatSize(unused), FormatSize(l.Align)))
	}
	if l.BackingSize%PageSize != 0 {
		w = append(w, fmt.Sprintf("backing size %s is not a multiple of the page size %s: QEMU rounds the backend up and refuses a file that is shorter",
			FormatSize(l.BackingSize), FormatSize(PageSize)))
	}
	if l.GuestSize%RegionAlign != 0 {
		w = append(w, fmt.Sprintf("guest size %s is not a multiple of 16 MiB: the guest's region alignment is 16 MiB, so namespaces lose up to the tail or need --align on ndctl create-namespace",
			FormatSize(l.GuestSize)))
	}
	if l.GuestSize%GuestMapAlign != 0 {
		w = append(w, fmt.Sprintf("guest size %s is not a multiple of 2 MiB: the guest refuses to map it (\"misaligned, unable to map\", probe error -95)",
			FormatSize(l.GuestSize)))
	}
	if l.Align < GuestMapAlign {
		w = append(w, fmt.Sprintf("align %s is below 2 MiB: QEMU may place this device at an address the guest cannot map (\"misaligned, unable to map\", probe error -95); use --align 2M",
			FormatSize(l.Align)))
	}
	return w
}

// CheckGuestMappable refuses a layout the guest would refuse to map:
// a guest range or an alignment that is not a multiple of 2 MiB.
func CheckGuestMappable(l Layout) error {
	if l.GuestSize%GuestMapAlign != 0 {
		return fmt.Errorf("guest size %s is not a multiple of 2 MiB: the guest would log \"misaligned, unable to map\" and fail the probe with -95; resize to %s",
			FormatSize(l.GuestSize), FormatSize((l.GuestSize+GuestMapAlign-1)&^(GuestMapAlign-1)))
	}
	if l.Align < GuestMapAlign {
		return fmt.Errorf("align %s is below 2 MiB: QEMU may place the device at an address that is not 2 MiB aligned and the guest would log \"misaligned, unable to map\" (probe error -95); recreate with --align 2M",
			FormatSize(l.Align))
	}
	return nil
}

// CheckSHMEMRegionSize refuses a vhost-user shared-memory region size that
// QEMU cannot expose: regions share one PCI BAR, so the size must be a
// non-zero power of two (QEMU 11.1 aborts on anything else) and a multiple
// of the page size.
func CheckSHMEMRegionSize(size uint64) error {
	if size == 0 {
		return fmt.Errorf("shared-memory region size 0: a virtio-pmem region needs at least %s", FormatSize(GuestMapAlign))
	}
	if size%PageSize != 0 {
		return fmt.Errorf("shared-memory region size %s is not a multiple of the page size %s", FormatSize(size), FormatSize(PageSize))
	}
	if bits.OnesCount64(size) != 1 {
		lo := uint64(1) << (63 - bits.LeadingZeros64(size))
		return fmt.Errorf("shared-memory region size %s is not a power of two: QEMU aborts on it because the regions share one PCI BAR; use %s or %s",
			FormatSize(size), FormatSize(lo), FormatSize(lo<<1))
	}
	return nil
}
