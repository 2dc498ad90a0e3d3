// Package fletcher64 owns the Fletcher-64 checksum used by NVDIMM namespace
// label areas (index blocks, v1.2 labels) and by ACPI NFIT interleave-set
// cookies. Words are little-endian 32-bit; both sums wrap at 2^32.
package fletcher64

import (
	"encoding/binary"
	"fmt"
)

// Sum returns the Fletcher-64 checksum of b, whose length must be a
// multiple of 4.
func Sum(b []byte) (uint64, error) {
	if len(b)%4 != 0 {
		return 0, fmt.Errorf("fletcher64: length %d is not a multiple of 4", len(b))
	}
	var lo, hi uint32
	for i := 0; i < len(b); i += 4 {
		lo += binary.LittleEndian.Uint32(b[i:])
		hi += lo
	}
	return uint64(hi)<<32 | uint64(lo), nil
}

// SumSkipping returns the checksum of b computed as if the 8 bytes at
// off were zero (how index blocks and v1.2 labels checksum themselves).
// len(b) must be a multiple of 4 and off must be 4-aligned and in range.
func SumSkipping(b []byte, off int) (uint64, error) {
	if len(b)%4 != 0 || off%4 != 0 || off < 0 || off+8 > len(b) {
		return 0, fmt.Errorf("fletcher64: bad length %d or checksum offset %d", len(b), off)
	}
	var lo, hi uint32
	for i := 0; i < len(b); i += 4 {
		var w uint32
		if i < off || i >= off+8 {
			w = binary.LittleEndian.Uint32(b[i:])
		}
		lo += w
		hi += lo
	}
	return uint64(hi)<<32 | uint64(lo), nil
}
