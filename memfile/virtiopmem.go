package memfile

import "fmt"

// CheckVirtioPMEM refuses a backing that cannot be a virtio-pmem device,
// whatever the transport (virtio-pmem-pci on a memory backend, or a
// vhost-user shared-memory region); the error names path and the reason:
//
//   - readOnly: virtio-pmem has no read-only mode (the guest maps the
//     device writable and flushes it);
//   - a label area: the backing was made for an nvdimm; virtio-pmem has
//     no labels, so the guest would take a namespace's raw bytes for its
//     device (and virtio-pmem-pci, which maps the whole file, could
//     overwrite the labels);
//   - CheckGuestMappable on what the guest maps: l.BackingSize bytes (the
//     whole memory backend) placed at an l.Align boundary. A caller whose
//     device exposes less, or is placed otherwise, describes that in l
//     (a vhost-user region is l.GuestSize bytes in a PCI BAR aligned to
//     its own power-of-two size).
func CheckVirtioPMEM(path string, l Layout, readOnly bool) error {
	if readOnly {
		return fmt.Errorf("backing %s: virtio-pmem has no read-only mode (the guest maps it writable and flushes it); attach it as a read-only nvdimm instead", path)
	}
	if l.LabelSize != 0 {
		return fmt.Errorf("backing %s has a %s label area: it was made for an nvdimm, and virtio-pmem has no labels, so the guest would take any namespace's raw bytes (info block, offsets) for its device, and virtio-pmem-pci, which maps the whole file, could overwrite the labels; attach it as an nvdimm or create a backing without --label-size",
			path, FormatSize(l.LabelSize))
	}
	if err := CheckGuestMappable(Layout{GuestSize: l.BackingSize, Align: l.Align}); err != nil {
		return fmt.Errorf("backing %s for virtio-pmem: %w", path, err)
	}
	return nil
}
