// Package acpi owns the ACPI NVDIMM Firmware Interface Table (NFIT): the
// table header and checksum, an exact-length codec for NFIT sub-structures
// 0-7 (unknown types kept as raw bytes), validation against the rules the
// Linux NFIT driver applies when it accepts or drops a table, a builder
// that emits the same bytes as QEMU's hw/acpi/nvdimm.c for a given
// topology, and the interleave-set cookies Linux derives from an NFIT and
// that namespace labels must carry.
//
// All multi-byte fields are little-endian. Every parser treats its input
// as hostile: malformed bytes produce an error naming the structure, field
// and offset, never a panic.
package acpi
