package acpi

// Constants of QEMU's NFIT (hw/acpi/nvdimm.c).
const (
	qemuVendorID     = 0x8086
	qemuDeviceID     = 0x0001
	qemuRevisionID   = 0x0001
	qemuSerialBase   = 0x123456
	qemuFIC          = 0x0301 // byte-addressable, no energy backing
	qemuSPAFlags     = 0x0003 // control region for hot-add only, proximity valid
	qemuSPAAttribute = 0x8008 // EFI_MEMORY_WB | EFI_MEMORY_NV
)

// qemuSerial is the DCR serial number QEMU gives the DIMM in slot.
func qemuSerial(slot int) uint32 { return uint32(qemuSerialBase + slot) }

// qemuHandle is the NFIT device handle (and the DIMM's ACPI _ADR).
func qemuHandle(slot int) uint32 { return uint32(slot + 1) }

// qemuSPAIndex is the SPA range structure index QEMU gives slot's range.
func qemuSPAIndex(slot int) uint16 { return uint16((slot + 1) * 2) }

// qemuDCRIndex is the control region index QEMU gives slot's DIMM.
func qemuDCRIndex(slot int) uint16 { return qemuSPAIndex(slot) + 1 }
