package acpi

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/nvdimm-backend/nvdimm-backend/internal/fletcher64"
)

// CookieDIMM is what the interleave-set cookie needs to know about one
// DIMM of a persistent-memory SPA range: the memory-device map's region
// offset and the fields of the DIMM's control region (DCR).
type CookieDIMM struct {
	RegionOffset          uint64
	Serial                uint32
	VendorID              uint16
	ManufacturingDate     uint16
	ManufacturingLocation uint8
}

// SetCookies are the three cookies Linux computes for one interleave set
// (acpi_nfit_init_interleave_set). V11 is used by labels under a v1.1
// index, V12 under a v1.2 index, and Alt is the v1.1 cookie computed with
// the byte-wise sort of old kernels, still accepted for v1.1 labels.
type SetCookies struct {
	V11 uint64
	V12 uint64
	Alt uint64
}

const (
	cookieRecV11 = 16 // u64 region offset, u32 serial, u32 pad
	cookieRecV12 = 48 // u64 offset, u32 serial, u16 vendor, u16 date, u8 location, 31 zero
)

func v11Record(d CookieDIMM) []byte {
	b := make([]byte, cookieRecV11)
	binary.LittleEndian.PutUint64(b[0:], d.RegionOffset)
	binary.LittleEndian.PutUint32(b[8:], d.Serial)
	return b
}

func v12Record(d CookieDIMM) []byte {
	b := make([]byte, cookieRecV12)
	binary.LittleEndian.PutUint64(b[0:], d.RegionOffset)
	binary.LittleEndian.PutUint32(b[8:], d.Serial)
	binary.LittleEndian.PutUint16(b[12:], d.VendorID)
	binary.LittleEndian.PutUint16(b[14:], d.ManufacturingDate)
	b[16] = d.ManufacturingLocation
	return b
}

// ComputeCookies returns the cookies of an interleave set made of dimms,
// in any order. Records are sorted by region offset (numerically for V11
// and V12, by the little-endian bytes compared with memcmp for Alt); ties
// keep the given order. It fails for an empty set.
func ComputeCookies(dimms []CookieDIMM) (SetCookies, error) {
	if len(dimms) == 0 {
		return SetCookies{}, fmt.Errorf("acpi: interleave set has no DIMMs")
	}
	byOffset := slices.Clone(dimms)
	slices.SortStableFunc(byOffset, func(a, b CookieDIMM) int {
		switch {
		case a.RegionOffset < b.RegionOffset:
			return -1
		case a.RegionOffset > b.RegionOffset:
			return 1
		}
		return 0
	})
	var v11, v12 []byte
	for _, d := range byOffset {
		v11 = append(v11, v11Record(d)...)
		v12 = append(v12, v12Record(d)...)
	}
	var c SetCookies
	var err error
	if c.V11, err = fletcher64.Sum(v11); err != nil {
		return SetCookies{}, fmt.Errorf("acpi: v1.1 cookie: %w", err)
	}
	if c.V12, err = fletcher64.Sum(v12); err != nil {
		return SetCookies{}, fmt.Errorf("acpi: v1.2 cookie: %w", err)
	}
	recs := make([][]byte, len(dimms))
	for i, d := range dimms {
		recs[i] = v11Record(d)
	}
	slices.SortStableFunc(recs, func(a, b []byte) int { return bytes.Compare(a[:8], b[:8]) })
	if c.Alt, err = fletcher64.Sum(bytes.Join(recs, nil)); err != nil {
		return SetCookies{}, fmt.Errorf("acpi: alternate cookie: %w", err)
	}
	return c, nil
}

// QEMUSlotCookies returns the v1.1 and v1.2 interleave-set cookies Linux
// computes for a QEMU NVDIMM in the given memory slot: QEMU gives each
// DIMM its own SPA range (region offset 0) and a control region with
// serial 0x123456+slot, vendor 0x8086 and no manufacturing data. For a
// single-DIMM set the alternate cookie equals v11.
func QEMUSlotCookies(slot int) (v11, v12 uint64) {
	c, _ := ComputeCookies([]CookieDIMM{qemuCookieDIMM(slot)})
	return c.V11, c.V12
}

func qemuCookieDIMM(slot int) CookieDIMM {
	return CookieDIMM{
		Serial:   qemuSerial(slot),
		VendorID: qemuVendorID,
	}
}

// SetCookie is the interleave-set cookie of one persistent-memory SPA
// range, as Linux shows it in /sys/bus/nd/devices/regionN/set_cookie
// (V11 for a v1.1 label index or no labels, V12 for a v1.2 index).
type SetCookie struct {
	SPAIndex uint16
	SetCookies
}

// Cookies computes the cookies of every persistent-memory SPA range of n
// (index non-zero, with at least one memory-device map), in table order.
// Each DIMM's control region is found the way Linux finds it: by the
// DCR index of its memory-device maps, the first match, preferring one
// with block windows. A DIMM whose control region is missing is an error
// (Linux refuses the whole NFIT: "SPA n missing DCR m").
func Cookies(n *NFIT) ([]SetCookie, error) {
	var out []SetCookie
	for _, spa := range n.SPAs() {
		if spa.RangeType != GUIDPersistent || spa.Index == 0 {
			continue
		}
		var dimms []CookieDIMM
		for _, m := range n.MemDevs() {
			if m.SPAIndex != spa.Index {
				continue
			}
			d := n.dimmDCR(m.Handle)
			if d == nil {
				return nil, fmt.Errorf("acpi: SPA %d: no control region for DIMM handle %#x (memdev DCR index %d)", spa.Index, m.Handle, m.DCRIndex)
			}
			dimms = append(dimms, CookieDIMM{
				RegionOffset:          m.RegionOffset,
				Serial:                d.Serial,
				VendorID:              d.VendorID,
				ManufacturingDate:     d.MfgDate,
				ManufacturingLocation: d.MfgLocation,
			})
		}
		if len(dimms) == 0 {
			continue
		}
		c, err := ComputeCookies(dimms)
		if err != nil {
			return nil, fmt.Errorf("acpi: SPA %d: %w", spa.Index, err)
		}
		out = append(out, SetCookie{SPAIndex: spa.Index, SetCookies: c})
	}
	return out, nil
}

// dimmDCR returns the control region Linux records for the DIMM with the
// given device handle.
func (n *NFIT) dimmDCR(handle uint32) *ControlRegion {
	var found *ControlRegion
	for _, m := range n.MemDevs() {
		if m.Handle != handle || m.DCRIndex == 0 {
			continue
		}
		d := n.findDCR(m.DCRIndex)
		if d == nil {
			continue
		}
		if found == nil || (found.Windows == 0 && d.Windows != 0) {
			found = d
		}
	}
	return found
}
