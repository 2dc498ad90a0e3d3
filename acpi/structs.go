package acpi

import (
	"encoding/binary"
	"fmt"
)

// NFIT sub-structure types.
const (
	TypeSPA          = 0
	TypeMemDev       = 1
	TypeInterleave   = 2
	TypeSMBIOS       = 3
	TypeControl      = 4
	TypeBlockWindow  = 5
	TypeFlushHint    = 6
	TypeCapabilities = 7
)

// SPA range flags.
const (
	SPAFlagControlRegionForHotplug = 1 << 0 // control region only for hot add / online
	SPAFlagProximityValid          = 1 << 1
	SPAFlagLocationCookieValid     = 1 << 2 // ACPI 6.4: 64-byte form
)

// EFI memory attributes of SPA ranges.
const (
	MemAttrUC           = 0x1
	MemAttrWC           = 0x2
	MemAttrWT           = 0x4
	MemAttrWB           = 0x8
	MemAttrUCE          = 0x10
	MemAttrWP           = 0x1000
	MemAttrRP           = 0x2000
	MemAttrXP           = 0x4000
	MemAttrNV           = 0x8000
	MemAttrMoreReliable = 0x10000
	MemAttrRO           = 0x20000
	MemAttrSP           = 0x40000
)

// Memory-device map state flags.
const (
	MemDevSaveFailed     = 1 << 0
	MemDevRestoreFailed  = 1 << 1
	MemDevFlushFailed    = 1 << 2
	MemDevNotArmed       = 1 << 3
	MemDevHealthObserved = 1 << 4
	MemDevHealthEnabled  = 1 << 5
	MemDevMapFailed      = 1 << 6
)

// Platform capability bits.
const (
	CapCPUCacheFlush = 1 << 0
	CapMemCtrlFlush  = 1 << 1
	CapMirroring     = 1 << 2
)

// Fixed sizes of sub-structures.
const (
	sizeSPA        = 56
	sizeSPACookie  = 64
	sizeMemDev     = 48
	sizeDCR        = 80
	sizeDCRShort   = 32
	sizeBDW        = 40
	sizeCaps       = 16
	sizeIDTFixed   = 16
	sizeFlushFixed = 16
	sizeSMBIOSHdr  = 8
	maxStructLen   = 0xffff
)

// Structure is one NFIT sub-structure. MarshalBinary returns the whole
// structure, its 4-byte type/length header included.
type Structure interface {
	// Type is the NFIT structure type (0-7, or any value for RawStructure).
	Type() uint16
	// Kind is a short stable name: spa, memdev, interleave, smbios, dcr,
	// bdw, flush, capabilities, or unknown.
	Kind() string
	MarshalBinary() ([]byte, error)
	// Fields lists every field for dumps and comparisons.
	Fields() []Field
}

// Field describes one decoded field. Value is a uint64, a string or a
// []uint64; Names lists the set flag bits of a flags field.
type Field struct {
	Key   string // JSON key, e.g. "proximity_domain"
	Name  string // human name, e.g. "Proximity Domain"
	Off   int    // byte offset within the structure
	Size  int    // byte size (0 for variable-length)
	Value any
	Names []string
}

var le = binary.LittleEndian

// checkHeader verifies the type and length words of a structure's bytes.
func checkHeader(b []byte, typ uint16, what string) error {
	if len(b) < 4 {
		return fmt.Errorf("%s: %d bytes, shorter than the 4-byte structure header", what, len(b))
	}
	if t := le.Uint16(b[0:]); t != typ {
		return fmt.Errorf("%s: type field is %d, want %d", what, t, typ)
	}
	if l := int(le.Uint16(b[2:])); l != len(b) {
		return fmt.Errorf("%s: length field is %d but %d bytes were given", what, l, len(b))
	}
	return nil
}

func putHeader(b []byte, typ uint16) {
	le.PutUint16(b[0:], typ)
	le.PutUint16(b[2:], uint16(len(b)))
}

func flagNames(v uint64, names map[uint64]string) []string {
	var out []string
	for bit := uint64(1); bit != 0 && bit <= v; bit <<= 1 {
		if v&bit == 0 {
			continue
		}
		if n, ok := names[bit]; ok {
			out = append(out, n)
		} else {
			out = append(out, fmt.Sprintf("bit%d", bitIndex(bit)))
		}
	}
	return out
}

func bitIndex(bit uint64) int {
	n := 0
	for bit > 1 {
		bit >>= 1
		n++
	}
	return n
}

var spaFlagNames = map[uint64]string{
	SPAFlagControlRegionForHotplug: "control-region-hotplug-only",
	SPAFlagProximityValid:          "proximity-valid",
	SPAFlagLocationCookieValid:     "location-cookie-valid",
}

var memAttrNames = map[uint64]string{
	MemAttrUC: "UC", MemAttrWC: "WC", MemAttrWT: "WT", MemAttrWB: "WB", MemAttrUCE: "UCE",
	MemAttrWP: "WP", MemAttrRP: "RP", MemAttrXP: "XP", MemAttrNV: "NV",
	MemAttrMoreReliable: "MORE_RELIABLE", MemAttrRO: "RO", MemAttrSP: "SP",
}

var memDevFlagNames = map[uint64]string{
	MemDevSaveFailed:     "save-failed",
	MemDevRestoreFailed:  "restore-failed",
	MemDevFlushFailed:    "flush-failed",
	MemDevNotArmed:       "not-armed",
	MemDevHealthObserved: "health-events-observed",
	MemDevHealthEnabled:  "health-notifications-enabled",
	MemDevMapFailed:      "map-failed",
}

var capNames = map[uint64]string{
	CapCPUCacheFlush: "cpu-cache-flush-on-power-loss",
	CapMemCtrlFlush:  "memory-controller-flush-on-power-loss",
	CapMirroring:     "hardware-mirroring",
}

// ---------------------------------------------------------------------
// Type 0: System Physical Address (SPA) Range.

// SPARange is an NFIT type-0 structure: 56 bytes, or 64 when Flags has
// SPAFlagLocationCookieValid (then LocationCookie is encoded).
type SPARange struct {
	Index           uint16
	Flags           uint16
	Reserved        uint32
	ProximityDomain uint32
	RangeType       GUID
	Base            uint64
	Length          uint64
	Attributes      uint64
	LocationCookie  uint64
}

func (*SPARange) Type() uint16 { return TypeSPA }
func (*SPARange) Kind() string { return "spa" }

func (s *SPARange) size() int {
	if s.Flags&SPAFlagLocationCookieValid != 0 {
		return sizeSPACookie
	}
	return sizeSPA
}

func (s *SPARange) MarshalBinary() ([]byte, error) {
	b := make([]byte, s.size())
	putHeader(b, TypeSPA)
	le.PutUint16(b[4:], s.Index)
	le.PutUint16(b[6:], s.Flags)
	le.PutUint32(b[8:], s.Reserved)
	le.PutUint32(b[12:], s.ProximityDomain)
	copy(b[16:32], s.RangeType[:])
	le.PutUint64(b[32:], s.Base)
	le.PutUint64(b[40:], s.Length)
	le.PutUint64(b[48:], s.Attributes)
	if len(b) == sizeSPACookie {
		le.PutUint64(b[56:], s.LocationCookie)
	}
	return b, nil
}

func (s *SPARange) UnmarshalBinary(b []byte) error {
	if err := checkHeader(b, TypeSPA, "SPA range"); err != nil {
		return err
	}
	if len(b) < sizeSPA {
		return fmt.Errorf("SPA range: length %d, want exactly 56 (64 with the location-cookie flag)", len(b))
	}
	flags := le.Uint16(b[6:])
	want := sizeSPA
	if flags&SPAFlagLocationCookieValid != 0 {
		want = sizeSPACookie
	}
	if len(b) != want {
		return fmt.Errorf("SPA range: length %d with flags %#x, want exactly %d", len(b), flags, want)
	}
	*s = SPARange{
		Index:           le.Uint16(b[4:]),
		Flags:           flags,
		Reserved:        le.Uint32(b[8:]),
		ProximityDomain: le.Uint32(b[12:]),
		Base:            le.Uint64(b[32:]),
		Length:          le.Uint64(b[40:]),
		Attributes:      le.Uint64(b[48:]),
	}
	copy(s.RangeType[:], b[16:32])
	if want == sizeSPACookie {
		s.LocationCookie = le.Uint64(b[56:])
	}
	return nil
}

func (s *SPARange) Fields() []Field {
	f := []Field{
		{Key: "index", Name: "Range Index", Off: 4, Size: 2, Value: uint64(s.Index)},
		{Key: "flags", Name: "Flags", Off: 6, Size: 2, Value: uint64(s.Flags), Names: flagNames(uint64(s.Flags), spaFlagNames)},
		{Key: "reserved", Name: "Reserved", Off: 8, Size: 4, Value: uint64(s.Reserved)},
		{Key: "proximity_domain", Name: "Proximity Domain", Off: 12, Size: 4, Value: uint64(s.ProximityDomain)},
		{Key: "guid", Name: "Range Type GUID", Off: 16, Size: 16, Value: s.RangeType.String()},
		{Key: "range_type", Name: "Range Type", Off: 16, Size: 16, Value: RangeTypeName(s.RangeType)},
		{Key: "base", Name: "Range Base", Off: 32, Size: 8, Value: s.Base},
		{Key: "length", Name: "Range Length", Off: 40, Size: 8, Value: s.Length},
		{Key: "attributes", Name: "Memory Mapping Attributes", Off: 48, Size: 8, Value: s.Attributes, Names: flagNames(s.Attributes, memAttrNames)},
	}
	if s.Flags&SPAFlagLocationCookieValid != 0 {
		f = append(f, Field{Key: "location_cookie", Name: "Location Cookie", Off: 56, Size: 8, Value: s.LocationCookie})
	}
	return f
}

// ---------------------------------------------------------------------
// Type 1: NVDIMM Region Mapping (memory device to SPA range map).

// MemDevMap is an NFIT type-1 structure (48 bytes).
type MemDevMap struct {
	Handle          uint32
	PhysicalID      uint16
	RegionID        uint16
	SPAIndex        uint16
	DCRIndex        uint16
	RegionSize      uint64
	RegionOffset    uint64
	DPA             uint64
	InterleaveIndex uint16
	InterleaveWays  uint16
	Flags           uint16
	Reserved        uint16
}

func (*MemDevMap) Type() uint16 { return TypeMemDev }
func (*MemDevMap) Kind() string { return "memdev" }

func (m *MemDevMap) MarshalBinary() ([]byte, error) {
	b := make([]byte, sizeMemDev)
	putHeader(b, TypeMemDev)
	le.PutUint32(b[4:], m.Handle)
	le.PutUint16(b[8:], m.PhysicalID)
	le.PutUint16(b[10:], m.RegionID)
	le.PutUint16(b[12:], m.SPAIndex)
	le.PutUint16(b[14:], m.DCRIndex)
	le.PutUint64(b[16:], m.RegionSize)
	le.PutUint64(b[24:], m.RegionOffset)
	le.PutUint64(b[32:], m.DPA)
	le.PutUint16(b[40:], m.InterleaveIndex)
	le.PutUint16(b[42:], m.InterleaveWays)
	le.PutUint16(b[44:], m.Flags)
	le.PutUint16(b[46:], m.Reserved)
	return b, nil
}

func (m *MemDevMap) UnmarshalBinary(b []byte) error {
	if err := checkHeader(b, TypeMemDev, "memory device map"); err != nil {
		return err
	}
	if len(b) != sizeMemDev {
		return fmt.Errorf("memory device map: length %d, want exactly 48", len(b))
	}
	*m = MemDevMap{
		Handle:          le.Uint32(b[4:]),
		PhysicalID:      le.Uint16(b[8:]),
		RegionID:        le.Uint16(b[10:]),
		SPAIndex:        le.Uint16(b[12:]),
		DCRIndex:        le.Uint16(b[14:]),
		RegionSize:      le.Uint64(b[16:]),
		RegionOffset:    le.Uint64(b[24:]),
		DPA:             le.Uint64(b[32:]),
		InterleaveIndex: le.Uint16(b[40:]),
		InterleaveWays:  le.Uint16(b[42:]),
		Flags:           le.Uint16(b[44:]),
		Reserved:        le.Uint16(b[46:]),
	}
	return nil
}

func (m *MemDevMap) Fields() []Field {
	return []Field{
		{Key: "handle", Name: "Device Handle", Off: 4, Size: 4, Value: uint64(m.Handle)},
		{Key: "physical_id", Name: "Physical ID", Off: 8, Size: 2, Value: uint64(m.PhysicalID)},
		{Key: "region_id", Name: "Region ID", Off: 10, Size: 2, Value: uint64(m.RegionID)},
		{Key: "spa_index", Name: "SPA Range Index", Off: 12, Size: 2, Value: uint64(m.SPAIndex)},
		{Key: "dcr_index", Name: "Control Region Index", Off: 14, Size: 2, Value: uint64(m.DCRIndex)},
		{Key: "region_size", Name: "Region Size", Off: 16, Size: 8, Value: m.RegionSize},
		{Key: "region_offset", Name: "Region Offset", Off: 24, Size: 8, Value: m.RegionOffset},
		{Key: "dpa", Name: "Device Physical Address", Off: 32, Size: 8, Value: m.DPA},
		{Key: "interleave_index", Name: "Interleave Index", Off: 40, Size: 2, Value: uint64(m.InterleaveIndex)},
		{Key: "interleave_ways", Name: "Interleave Ways", Off: 42, Size: 2, Value: uint64(m.InterleaveWays)},
		{Key: "flags", Name: "State Flags", Off: 44, Size: 2, Value: uint64(m.Flags), Names: flagNames(uint64(m.Flags), memDevFlagNames)},
		{Key: "reserved", Name: "Reserved", Off: 46, Size: 2, Value: uint64(m.Reserved)},
	}
}

// ---------------------------------------------------------------------
// Type 2: Interleave.

// Interleave is an NFIT type-2 structure (16 + 4N bytes, N lines).
type Interleave struct {
	Index       uint16
	Reserved    uint16
	LineSize    uint32
	LineOffsets []uint32
}

func (*Interleave) Type() uint16 { return TypeInterleave }
func (*Interleave) Kind() string { return "interleave" }

func (x *Interleave) MarshalBinary() ([]byte, error) {
	n := sizeIDTFixed + 4*len(x.LineOffsets)
	if n > maxStructLen {
		return nil, fmt.Errorf("interleave %d: %d lines do not fit a structure", x.Index, len(x.LineOffsets))
	}
	b := make([]byte, n)
	putHeader(b, TypeInterleave)
	le.PutUint16(b[4:], x.Index)
	le.PutUint16(b[6:], x.Reserved)
	le.PutUint32(b[8:], uint32(len(x.LineOffsets)))
	le.PutUint32(b[12:], x.LineSize)
	for i, o := range x.LineOffsets {
		le.PutUint32(b[16+4*i:], o)
	}
	return b, nil
}

func (x *Interleave) UnmarshalBinary(b []byte) error {
	if err := checkHeader(b, TypeInterleave, "interleave"); err != nil {
		return err
	}
	if len(b) < sizeIDTFixed {
		return fmt.Errorf("interleave: length %d, shorter than 16", len(b))
	}
	lines := le.Uint32(b[8:])
	if uint64(len(b)) != sizeIDTFixed+4*uint64(lines) {
		return fmt.Errorf("interleave: length %d does not match %d lines (want %d)", len(b), lines, sizeIDTFixed+4*uint64(lines))
	}
	*x = Interleave{
		Index:       le.Uint16(b[4:]),
		Reserved:    le.Uint16(b[6:]),
		LineSize:    le.Uint32(b[12:]),
		LineOffsets: make([]uint32, lines),
	}
	for i := range x.LineOffsets {
		x.LineOffsets[i] = le.Uint32(b[16+4*i:])
	}
	return nil
}

func (x *Interleave) Fields() []Field {
	offs := make([]uint64, len(x.LineOffsets))
	for i, o := range x.LineOffsets {
		offs[i] = uint64(o)
	}
	return []Field{
		{Key: "index", Name: "Interleave Index", Off: 4, Size: 2, Value: uint64(x.Index)},
		{Key: "reserved", Name: "Reserved", Off: 6, Size: 2, Value: uint64(x.Reserved)},
		{Key: "lines", Name: "Number of Lines", Off: 8, Size: 4, Value: uint64(len(x.LineOffsets))},
		{Key: "line_size", Name: "Line Size", Off: 12, Size: 4, Value: uint64(x.LineSize)},
		{Key: "line_offsets", Name: "Line Offsets", Off: 16, Value: offs},
	}
}

// ---------------------------------------------------------------------
// Type 3: SMBIOS management information.

// SMBIOS is an NFIT type-3 structure (8 + n bytes). Linux ignores it.
type SMBIOS struct {
	Reserved uint32
	Data     []byte
}

func (*SMBIOS) Type() uint16 { return TypeSMBIOS }
func (*SMBIOS) Kind() string { return "smbios" }

func (s *SMBIOS) MarshalBinary() ([]byte, error) {
	n := sizeSMBIOSHdr + len(s.Data)
	if n > maxStructLen {
		return nil, fmt.Errorf("SMBIOS: %d data bytes do not fit a structure", len(s.Data))
	}
	b := make([]byte, n)
	putHeader(b, TypeSMBIOS)
	le.PutUint32(b[4:], s.Reserved)
	copy(b[8:], s.Data)
	return b, nil
}

func (s *SMBIOS) UnmarshalBinary(b []byte) error {
	if err := checkHeader(b, TypeSMBIOS, "SMBIOS"); err != nil {
		return err
	}
	if len(b) < sizeSMBIOSHdr {
		return fmt.Errorf("SMBIOS: length %d, shorter than 8", len(b))
	}
	*s = SMBIOS{Reserved: le.Uint32(b[4:]), Data: append([]byte(nil), b[8:]...)}
	return nil
}

func (s *SMBIOS) Fields() []Field {
	return []Field{
		{Key: "reserved", Name: "Reserved", Off: 4, Size: 4, Value: uint64(s.Reserved)},
		{Key: "data", Name: "SMBIOS Data", Off: 8, Value: fmt.Sprintf("%x", s.Data)},
	}
}

// ---------------------------------------------------------------------
// Type 4: NVDIMM Control Region.

// ControlRegion is an NFIT type-4 structure: 80 bytes, or the 32-byte
// short form (Short) that ends before the block-window fields.
type ControlRegion struct {
	Index               uint16
	VendorID            uint16
	DeviceID            uint16
	RevisionID          uint16
	SubsystemVendorID   uint16
	SubsystemDeviceID   uint16
	SubsystemRevisionID uint16
	ValidFields         uint8
	MfgLocation         uint8
	MfgDate             uint16
	Reserved            uint16
	Serial              uint32
	FormatCode          uint16
	Windows             uint16
	WindowSize          uint64
	CommandOffset       uint64
	CommandSize         uint64
	StatusOffset        uint64
	StatusSize          uint64
	Flags               uint16
	Reserved2           [6]byte
	Short               bool
}

func (*ControlRegion) Type() uint16 { return TypeControl }
func (*ControlRegion) Kind() string { return "dcr" }

func (d *ControlRegion) MarshalBinary() ([]byte, error) {
	n := sizeDCR
	if d.Short {
		n = sizeDCRShort
	}
	b := make([]byte, n)
	putHeader(b, TypeControl)
	le.PutUint16(b[4:], d.Index)
	le.PutUint16(b[6:], d.VendorID)
	le.PutUint16(b[8:], d.DeviceID)
	le.PutUint16(b[10:], d.RevisionID)
	le.PutUint16(b[12:], d.SubsystemVendorID)
	le.PutUint16(b[14:], d.SubsystemDeviceID)
	le.PutUint16(b[16:], d.SubsystemRevisionID)
	b[18] = d.ValidFields
	b[19] = d.MfgLocation
	le.PutUint16(b[20:], d.MfgDate)
	le.PutUint16(b[22:], d.Reserved)
	le.PutUint32(b[24:], d.Serial)
	le.PutUint16(b[28:], d.FormatCode)
	le.PutUint16(b[30:], d.Windows)
	if !d.Short {
		le.PutUint64(b[32:], d.WindowSize)
		le.PutUint64(b[40:], d.CommandOffset)
		le.PutUint64(b[48:], d.CommandSize)
		le.PutUint64(b[56:], d.StatusOffset)
		le.PutUint64(b[64:], d.StatusSize)
		le.PutUint16(b[72:], d.Flags)
		copy(b[74:80], d.Reserved2[:])
	}
	return b, nil
}

func (d *ControlRegion) UnmarshalBinary(b []byte) error {
	if err := checkHeader(b, TypeControl, "control region"); err != nil {
		return err
	}
	if len(b) != sizeDCR && len(b) != sizeDCRShort {
		return fmt.Errorf("control region: length %d, want 80 (or 32 for the short form)", len(b))
	}
	*d = ControlRegion{
		Index:               le.Uint16(b[4:]),
		VendorID:            le.Uint16(b[6:]),
		DeviceID:            le.Uint16(b[8:]),
		RevisionID:          le.Uint16(b[10:]),
		SubsystemVendorID:   le.Uint16(b[12:]),
		SubsystemDeviceID:   le.Uint16(b[14:]),
		SubsystemRevisionID: le.Uint16(b[16:]),
		ValidFields:         b[18],
		MfgLocation:         b[19],
		MfgDate:             le.Uint16(b[20:]),
		Reserved:            le.Uint16(b[22:]),
		Serial:              le.Uint32(b[24:]),
		FormatCode:          le.Uint16(b[28:]),
		Windows:             le.Uint16(b[30:]),
		Short:               len(b) == sizeDCRShort,
	}
	if !d.Short {
		d.WindowSize = le.Uint64(b[32:])
		d.CommandOffset = le.Uint64(b[40:])
		d.CommandSize = le.Uint64(b[48:])
		d.StatusOffset = le.Uint64(b[56:])
		d.StatusSize = le.Uint64(b[64:])
		d.Flags = le.Uint16(b[72:])
		copy(d.Reserved2[:], b[74:80])
	}
	return nil
}

func (d *ControlRegion) Fields() []Field {
	f := []Field{
		{Key: "index", Name: "Control Region Index", Off: 4, Size: 2, Value: uint64(d.Index)},
		{Key: "vendor_id", Name: "Vendor ID", Off: 6, Size: 2, Value: uint64(d.VendorID)},
		{Key: "device_id", Name: "Device ID", Off: 8, Size: 2, Value: uint64(d.DeviceID)},
		{Key: "revision_id", Name: "Revision ID", Off: 10, Size: 2, Value: uint64(d.RevisionID)},
		{Key: "subsystem_vendor_id", Name: "Subsystem Vendor ID", Off: 12, Size: 2, Value: uint64(d.SubsystemVendorID)},
		{Key: "subsystem_device_id", Name: "Subsystem Device ID", Off: 14, Size: 2, Value: uint64(d.SubsystemDeviceID)},
		{Key: "subsystem_revision_id", Name: "Subsystem Revision ID", Off: 16, Size: 2, Value: uint64(d.SubsystemRevisionID)},
		{Key: "valid_fields", Name: "Valid Fields", Off: 18, Size: 1, Value: uint64(d.ValidFields), Names: flagNames(uint64(d.ValidFields), map[uint64]string{1: "manufacturing-valid"})},
		{Key: "manufacturing_location", Name: "Manufacturing Location", Off: 19, Size: 1, Value: uint64(d.MfgLocation)},
		{Key: "manufacturing_date", Name: "Manufacturing Date", Off: 20, Size: 2, Value: uint64(d.MfgDate)},
		{Key: "reserved", Name: "Reserved", Off: 22, Size: 2, Value: uint64(d.Reserved)},
		{Key: "serial", Name: "Serial Number", Off: 24, Size: 4, Value: uint64(d.Serial)},
		{Key: "format_code", Name: "Format Interface Code", Off: 28, Size: 2, Value: uint64(d.FormatCode)},
		{Key: "windows", Name: "Block Control Windows", Off: 30, Size: 2, Value: uint64(d.Windows)},
	}
	if d.Short {
		return f
	}
	return append(f,
		Field{Key: "window_size", Name: "Block Control Window Size", Off: 32, Size: 8, Value: d.WindowSize},
		Field{Key: "command_offset", Name: "Command Register Offset", Off: 40, Size: 8, Value: d.CommandOffset},
		Field{Key: "command_size", Name: "Command Register Size", Off: 48, Size: 8, Value: d.CommandSize},
		Field{Key: "status_offset", Name: "Status Register Offset", Off: 56, Size: 8, Value: d.StatusOffset},
		Field{Key: "status_size", Name: "Status Register Size", Off: 64, Size: 8, Value: d.StatusSize},
		Field{Key: "flags", Name: "Flags", Off: 72, Size: 2, Value: uint64(d.Flags), Names: flagNames(uint64(d.Flags), map[uint64]string{1: "block-data-windows-buffered"})},
		Field{Key: "reserved2", Name: "Reserved", Off: 74, Size: 6, Value: fmt.Sprintf("%x", d.Reserved2[:])},
	)
}

// ---------------------------------------------------------------------
// Type 5: Block Data Window Region.

// BlockDataWindow is an NFIT type-5 structure (40 bytes).
type BlockDataWindow struct {
	DCRIndex     uint16
	Windows      uint16
	Offset       uint64
	Size         uint64
	Capacity     uint64
	StartAddress uint64
}

func (*BlockDataWindow) Type() uint16 { return TypeBlockWindow }
func (*BlockDataWindow) Kind() string { return "bdw" }

func (w *BlockDataWindow) MarshalBinary() ([]byte, error) {
	b := make([]byte, sizeBDW)
	putHeader(b, TypeBlockWindow)
	le.PutUint16(b[4:], w.DCRIndex)
	le.PutUint16(b[6:], w.Windows)
	le.PutUint64(b[8:], w.Offset)
	le.PutUint64(b[16:], w.Size)
	le.PutUint64(b[24:], w.Capacity)
	le.PutUint64(b[32:], w.StartAddress)
	return b, nil
}

func (w *BlockDataWindow) UnmarshalBinary(b []byte) error {
	if err := checkHeader(b, TypeBlockWindow, "block data window"); err != nil {
		return err
	}
	if len(b) != sizeBDW {
		return fmt.Errorf("block data window: length %d, want exactly 40", len(b))
	}
	*w = BlockDataWindow{
		DCRIndex:     le.Uint16(b[4:]),
		Windows:      le.Uint16(b[6:]),
		Offset:       le.Uint64(b[8:]),
		Size:         le.Uint64(b[16:]),
		Capacity:     le.Uint64(b[24:]),
		StartAddress: le.Uint64(b[32:]),
	}
	return nil
}

func (w *BlockDataWindow) Fields() []Field {
	return []Field{
		{Key: "dcr_index", Name: "Control Region Index", Off: 4, Size: 2, Value: uint64(w.DCRIndex)},
		{Key: "windows", Name: "Number of Windows", Off: 6, Size: 2, Value: uint64(w.Windows)},
		{Key: "offset", Name: "Window Start Offset", Off: 8, Size: 8, Value: w.Offset},
		{Key: "size", Name: "Window Size", Off: 16, Size: 8, Value: w.Size},
		{Key: "capacity", Name: "Block Accessible Capacity", Off: 24, Size: 8, Value: w.Capacity},
		{Key: "start_address", Name: "First Block Address", Off: 32, Size: 8, Value: w.StartAddress},
	}
}

// ---------------------------------------------------------------------
// Type 6: Flush Hint Address.

// FlushHint is an NFIT type-6 structure (16 + 8N bytes).
type FlushHint struct {
	Handle    uint32
	Reserved  [6]byte
	Addresses []uint64
}

func (*FlushHint) Type() uint16 { return TypeFlushHint }
func (*FlushHint) Kind() string { return "flush" }

func (h *FlushHint) MarshalBinary() ([]byte, error) {
	n := sizeFlushFixed + 8*len(h.Addresses)
	if n > maxStructLen {
		return nil, fmt.Errorf("flush hint for handle %#x: %d addresses do not fit a structure", h.Handle, len(h.Addresses))
	}
	b := make([]byte, n)
	putHeader(b, TypeFlushHint)
	le.PutUint32(b[4:], h.Handle)
	le.PutUint16(b[8:], uint16(len(h.Addresses)))
	copy(b[10:16], h.Reserved[:])
	for i, a := range h.Addresses {
		le.PutUint64(b[16+8*i:], a)
	}
	return b, nil
}

func (h *FlushHint) UnmarshalBinary(b []byte) error {
	if err := checkHeader(b, TypeFlushHint, "flush hint"); err != nil {
		return err
	}
	if len(b) < sizeFlushFixed {
		return fmt.Errorf("flush hint: length %d, shorter than 16", len(b))
	}
	count := int(le.Uint16(b[8:]))
	if len(b) != sizeFlushFixed+8*count {
		return fmt.Errorf("flush hint: length %d does not match %d hint addresses (want %d)", len(b), count, sizeFlushFixed+8*count)
	}
	*h = FlushHint{Handle: le.Uint32(b[4:]), Addresses: make([]uint64, count)}
	copy(h.Reserved[:], b[10:16])
	for i := range h.Addresses {
		h.Addresses[i] = le.Uint64(b[16+8*i:])
	}
	return nil
}

func (h *FlushHint) Fields() []Field {
	return []Field{
		{Key: "handle", Name: "Device Handle", Off: 4, Size: 4, Value: uint64(h.Handle)},
		{Key: "hint_count", Name: "Hint Count", Off: 8, Size: 2, Value: uint64(len(h.Addresses))},
		{Key: "reserved", Name: "Reserved", Off: 10, Size: 6, Value: fmt.Sprintf("%x", h.Reserved[:])},
		{Key: "addresses", Name: "Hint Addresses", Off: 16, Value: append([]uint64{}, h.Addresses...)},
	}
}

// ---------------------------------------------------------------------
// Type 7: Platform Capabilities.

// PlatformCapabilities is an NFIT type-7 structure (16 bytes). Linux
// masks Capabilities with bits 0..HighestValid.
type PlatformCapabilities struct {
	HighestValid uint8
	Reserved     [3]byte
	Capabilities uint32
	Reserved2    uint32
}

func (*PlatformCapabilities) Type() uint16 { return TypeCapabilities }
func (*PlatformCapabilities) Kind() string { return "capabilities" }

// Effective returns the capability bits Linux honours.
func (p *PlatformCapabilities) Effective() uint32 {
	if p.HighestValid >= 31 {
		return p.Capabilities
	}
	return p.Capabilities & (1<<(uint32(p.HighestValid)+1) - 1)
}

// PersistenceDomain is what Linux reports in the region's
// persistence_domain: "cpu_cache", "memory_controller" or "".
func (p *PlatformCapabilities) PersistenceDomain() string {
	c := p.Effective()
	switch {
	case c&CapCPUCacheFlush != 0:
		return "cpu_cache"
	case c&CapMemCtrlFlush != 0:
		return "memory_controller"
	}
	return ""
}

func (p *PlatformCapabilities) MarshalBinary() ([]byte, error) {
	b := make([]byte, sizeCaps)
	putHeader(b, TypeCapabilities)
	b[4] = p.HighestValid
	copy(b[5:8], p.Reserved[:])
	le.PutUint32(b[8:], p.Capabilities)
	le.PutUint32(b[12:], p.Reserved2)
	return b, nil
}

func (p *PlatformCapabilities) UnmarshalBinary(b []byte) error {
	if err := checkHeader(b, TypeCapabilities, "platform capabilities"); err != nil {
		return err
	}
	if len(b) != sizeCaps {
		return fmt.Errorf("platform capabilities: length %d, want exactly 16", len(b))
	}
	*p = PlatformCapabilities{HighestValid: b[4], Capabilities: le.Uint32(b[8:]), Reserved2: le.Uint32(b[12:])}
	copy(p.Reserved[:], b[5:8])
	return nil
}

func (p *PlatformCapabilities) Fields() []Field {
	return []Field{
		{Key: "highest_valid", Name: "Highest Valid Capability", Off: 4, Size: 1, Value: uint64(p.HighestValid)},
		{Key: "reserved", Name: "Reserved", Off: 5, Size: 3, Value: fmt.Sprintf("%x", p.Reserved[:])},
		{Key: "capabilities", Name: "Capabilities", Off: 8, Size: 4, Value: uint64(p.Capabilities), Names: flagNames(uint64(p.Capabilities), capNames)},
		{Key: "persistence_domain", Name: "Persistence Domain (Linux)", Off: 8, Size: 4, Value: p.PersistenceDomain()},
		{Key: "reserved2", Name: "Reserved", Off: 12, Size: 4, Value: uint64(p.Reserved2)},
	}
}

// ---------------------------------------------------------------------
// Anything else.

// RawStructure keeps a sub-structure verbatim: one of an unknown type, or
// one of a known type whose bytes do not decode (Problem says why).
type RawStructure struct {
	StructType uint16
	Bytes      []byte // the whole structure, header included
	Problem    string // why a known type did not decode; "" for unknown types
}

func (r *RawStructure) Type() uint16 { return r.StructType }
func (r *RawStructure) Kind() string {
	if r.Problem != "" {
		return "invalid"
	}
	return "unknown"
}

func (r *RawStructure) MarshalBinary() ([]byte, error) {
	if len(r.Bytes) < 4 || len(r.Bytes) > maxStructLen {
		return nil, fmt.Errorf("raw structure type %d: %d bytes, want 4..65535", r.StructType, len(r.Bytes))
	}
	b := append([]byte(nil), r.Bytes...)
	putHeader(b, r.StructType)
	return b, nil
}

func (r *RawStructure) Fields() []Field {
	f := []Field{{Key: "bytes", Name: "Raw Bytes", Off: 0, Value: fmt.Sprintf("%x", r.Bytes)}}
	if r.Problem != "" {
		f = append(f, Field{Key: "problem", Name: "Decode Problem", Value: r.Problem})
	}
	return f
}

// decodeStructure decodes one sub-structure; b is exactly its bytes.
func decodeStructure(b []byte) (Structure, error) {
	typ := le.Uint16(b[0:])
	var s interface {
		Structure
		UnmarshalBinary([]byte) error
	}
	switch typ {
	case TypeSPA:
		s = &SPARange{}
	case TypeMemDev:
		s = &MemDevMap{}
	case TypeInterleave:
		s = &Interleave{}
	case TypeSMBIOS:
		s = &SMBIOS{}
	case TypeControl:
		s = &ControlRegion{}
	case TypeBlockWindow:
		s = &BlockDataWindow{}
	case TypeFlushHint:
		s = &FlushHint{}
	case TypeCapabilities:
		s = &PlatformCapabilities{}
	default:
		return &RawStructure{StructType: typ, Bytes: append([]byte(nil), b...)}, nil
	}
	if err := s.UnmarshalBinary(b); err != nil {
		return nil, err
	}
	return s, nil
}
