package qemu

import (
	"encoding/binary"
	"fmt"

	"github.com/nvdimm-backend/nvdimm-backend/internal/fletcher64"
)

// The harness's own NFIT reader (independent of the acpi package); no
// build tag, so that its tests and fuzz seeds run in `make unit`.

// nfitSPA is what the harness reads from a table itself (independently of
// the acpi package): SPA ranges in table order and memdev flags.
type nfitSPA struct {
	index      uint16
	proximity  uint32
	base, size uint64
	handle     uint32
	flags      uint16
}

func parseNFITSPAs(tbl []byte) ([]nfitSPA, error) {
	if len(tbl) < 40 || string(tbl[:4]) != "NFIT" {
		return nil, fmt.Errorf("not an NFIT table (%d bytes)", len(tbl))
	}
	if l := binary.LittleEndian.Uint32(tbl[4:]); int(l) != len(tbl) {
		return nil, fmt.Errorf("NFIT length field %d, file %d bytes", l, len(tbl))
	}
	var sum byte
	for _, b := range tbl {
		sum += b
	}
	if sum != 0 {
		return nil, fmt.Errorf("NFIT checksum: bytes sum to %#x", sum)
	}
	var spas []nfitSPA
	byIndex := map[uint16]int{}
	for off := 40; off < len(tbl); {
		if off+4 > len(tbl) {
			return nil, fmt.Errorf("NFIT: truncated structure header at offset %d", off)
		}
		typ := binary.LittleEndian.Uint16(tbl[off:])
		l := int(binary.LittleEndian.Uint16(tbl[off+2:]))
		if l < 4 || off+l > len(tbl) {
			return nil, fmt.Errorf("NFIT: structure type %d at offset %d has length %d", typ, off, l)
		}
		s := tbl[off : off+l]
		switch {
		case typ == 0 && l >= 56:
			byIndex[binary.LittleEndian.Uint16(s[4:])] = len(spas)
			spas = append(spas, nfitSPA{index: binary.LittleEndian.Uint16(s[4:]), proximity: binary.LittleEndian.Uint32(s[12:]),
				base: binary.LittleEndian.Uint64(s[32:]), size: binary.LittleEndian.Uint64(s[40:])})
		case typ == 1 && l >= 48:
			i, ok := byIndex[binary.LittleEndian.Uint16(s[12:])]
			if !ok {
				return nil, fmt.Errorf("NFIT: memdev at offset %d names SPA index %d not seen before", off, binary.LittleEndian.Uint16(s[12:]))
			}
			spas[i].handle = binary.LittleEndian.Uint32(s[4:])
			spas[i].flags = binary.LittleEndian.Uint16(s[44:])
		}
		off += l
	}
	return spas, nil
}

// qemuCookies computes the interleave-set cookies Linux derives for a
// single-DIMM QEMU region (region offset 0, serial 0x123456+slot, vendor
// 0x8086): cookie1 for a v1.1 index or no label area, cookie2 for v1.2.
func qemuCookies(slot int) (c1, c2 uint64) {
	r1 := make([]byte, 16)
	binary.LittleEndian.PutUint32(r1[8:], 0x123456+uint32(slot))
	r2 := make([]byte, 48)
	binary.LittleEndian.PutUint32(r2[8:], 0x123456+uint32(slot))
	binary.LittleEndian.PutUint16(r2[12:], 0x8086)
	c1, _ = fletcher64.Sum(r1)
	c2, _ = fletcher64.Sum(r2)
	return c1, c2
}
