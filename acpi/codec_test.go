package acpi

import (
	"bytes"
	"os"
	"reflect"
	"strings"
	"testing"
)

// everyStructure returns one of each decodable structure, with
// non-zero values in every field so that misplaced offsets show.
func everyStructure() []Structure {
	return []Structure{
		&SPARange{Index: 7, Flags: 3, Reserved: 0x11, ProximityDomain: 2, RangeType: GUIDVolatile, Base: 0x1_0000_0000, Length: 0x4000_0000, Attributes: MemAttrWB},
		&SPARange{Index: 8, Flags: SPAFlagLocationCookieValid, RangeType: GUIDPersistent, Base: 1, Length: 2, Attributes: 3, LocationCookie: 0xdeadbeefcafe},
		&MemDevMap{Handle: 0x1234, PhysicalID: 1, RegionID: 2, SPAIndex: 7, DCRIndex: 9, RegionSize: 5, RegionOffset: 6, DPA: 7, InterleaveIndex: 3, InterleaveWays: 2, Flags: MemDevNotArmed | MemDevMapFailed, Reserved: 1},
		&Interleave{Index: 3, Reserved: 1, LineSize: 256, LineOffsets: []uint32{0, 1, 2}},
		&SMBIOS{Reserved: 4, Data: []byte{17, 40, 1, 2, 3}},
		&ControlRegion{Index: 9, VendorID: 0x8086, DeviceID: 2, RevisionID: 3, SubsystemVendorID: 4, SubsystemDeviceID: 5, SubsystemRevisionID: 6, ValidFields: 1, MfgLocation: 0xa, MfgDate: 0x1720, Reserved: 1, Serial: 0xabcdef01, FormatCode: 0x201, Windows: 8, WindowSize: 1, CommandOffset: 2, CommandSize: 3, StatusOffset: 4, StatusSize: 5, Flags: 1, Reserved2: [6]byte{1, 2, 3, 4, 5, 6}},
		&ControlRegion{Index: 10, VendorID: 1, Serial: 2, FormatCode: 0x301, Short: true},
		&BlockDataWindow{DCRIndex: 9, Windows: 8, Offset: 1, Size: 2, Capacity: 3, StartAddress: 4},
		&FlushHint{Handle: 0x1234, Reserved: [6]byte{9}, Addresses: []uint64{0xfee00000, 0xfee01000}},
		&PlatformCapabilities{HighestValid: 2, Reserved: [3]byte{1}, Capabilities: 5, Reserved2: 7},
		&RawStructure{StructType: 42, Bytes: []byte{42, 0, 6, 0, 0xaa, 0xbb}},
	}
}

func TestStructureRoundTrip(t *testing.T) {
	sizes := []int{56, 64, 48, 28, 13, 80, 32, 40, 32, 16, 6}
	for i, s := range everyStructure() {
		b, err := s.MarshalBinary()
		if err != nil {
			t.Fatalf("%s: %v", s.Kind(), err)
		}
		if len(b) != sizes[i] {
			t.Errorf("%s: %d bytes, want %d", s.Kind(), len(b), sizes[i])
		}
		if int(le.Uint16(b[2:])) != len(b) || le.Uint16(b) != s.Type() {
			t.Errorf("%s: header type/length %x", s.Kind(), b[:4])
		}
		got, err := decodeStructure(b)
		if err != nil {
			t.Fatalf("%s: decode: %v", s.Kind(), err)
		}
		if !reflect.DeepEqual(got, s) {
			t.Errorf("%s: round trip\n got %+v\nwant %+v", s.Kind(), got, s)
		}
	}
}

func TestKnownFieldOffsets(t *testing.T) {
	// Hand-placed bytes, checked against the ACPI layout.
	b := make([]byte, 80)
	putHeader(b, TypeControl)
	le.PutUint32(b[24:], 0x123456)
	le.PutUint16(b[28:], 0x0301)
	b[19] = 0x42
	var d ControlRegion
	if err := d.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if d.Serial != 0x123456 || d.FormatCode != 0x301 || d.MfgLocation != 0x42 {
		t.Errorf("DCR fields misplaced: %+v", d)
	}
	m := make([]byte, 48)
	putHeader(m, TypeMemDev)
	le.PutUint16(m[44:], MemDevNotArmed)
	le.PutUint64(m[24:], 0x1000)
	var md MemDevMap
	if err := md.UnmarshalBinary(m); err != nil {
		t.Fatal(err)
	}
	if md.Flags != MemDevNotArmed || md.RegionOffset != 0x1000 {
		t.Errorf("memdev fields misplaced: %+v", md)
	}
}

func TestGUIDs(t *testing.T) {
	want := []byte{0x79, 0xd3, 0xf0, 0x66, 0xf3, 0xb4, 0x74, 0x40, 0xac, 0x43, 0x0d, 0x33, 0x18, 0xb7, 0x8c, 0xdb}
	if !bytes.Equal(GUIDPersistent[:], want) {
		t.Errorf("PM GUID bytes % x", GUIDPersistent[:])
	}
	if s := GUIDPersistent.String(); s != "66f0d379-b4f3-4074-ac43-0d3318b78cdb" {
		t.Errorf("String() = %s", s)
	}
	if RangeTypeName(GUIDControlRegion) != "dimm-control-region" || RangeTypeName(GUID{1}) != "unknown" {
		t.Error("range type names")
	}
	for _, bad := range []string{"", "66f0d379-b4f3-4074-ac43", "66f0d379-b4f3-4074-ac43-0d3318b78cdX", "66f0d379b-4f3-4074-ac43-0d3318b78cdb"} {
		if _, err := ParseGUID(bad); err == nil {
			t.Errorf("ParseGUID(%q): want error", bad)
		}
	}
}

func TestStructureLengthChecks(t *testing.T) {
	cases := []struct {
		name string
		b    []byte
	}{
		{"spa 60", spaBytes(60, 0)},
		{"spa 64 without cookie flag", spaBytes(64, 0)},
		{"spa 56 with cookie flag", spaBytes(56, SPAFlagLocationCookieValid)},
		{"memdev 50", structBytes(TypeMemDev, 50)},
		{"dcr 40", structBytes(TypeControl, 40)},
		{"bdw 48", structBytes(TypeBlockWindow, 48)},
		{"caps 20", structBytes(TypeCapabilities, 20)},
		{"interleave lines mismatch", structBytes(TypeInterleave, 24)}, // 0 lines declared, 24 bytes
		{"flush count mismatch", structBytes(TypeFlushHint, 20)},
		{"smbios 6", structBytes(TypeSMBIOS, 6)},
	}
	for _, c := range cases {
		if s, err := decodeStructure(c.b); err == nil {
			t.Errorf("%s: decoded as %+v, want an error", c.name, s)
		}
	}
	// A declared length disagreeing with the bytes given is refused.
	b := structBytes(TypeMemDev, 48)
	le.PutUint16(b[2:], 47)
	if err := new(MemDevMap).UnmarshalBinary(b); err == nil || !strings.Contains(err.Error(), "length field") {
		t.Errorf("length field mismatch: %v", err)
	}
}

func structBytes(typ uint16, n int) []byte {
	b := make([]byte, n)
	le.PutUint16(b[0:], typ)
	le.PutUint16(b[2:], uint16(n))
	return b
}

func spaBytes(n int, flags uint16) []byte {
	b := structBytes(TypeSPA, n)
	le.PutUint16(b[6:], flags)
	return b
}

// table assembles an NFIT from raw structure bytes with a right checksum.
func table(structs ...[]byte) []byte {
	n := &NFIT{Header: QEMUHeader()}
	for _, s := range structs {
		n.Structures = append(n.Structures, &RawStructure{StructType: le.Uint16(s), Bytes: s})
	}
	b, err := n.MarshalBinary()
	if err != nil {
		panic(err)
	}
	return b
}

func mustMarshal(s Structure) []byte {
	b, err := s.MarshalBinary()
	if err != nil {
		panic(err)
	}
	return b
}

func TestParseNFITErrors(t *testing.T) {
	good := table(mustMarshal(&PlatformCapabilities{HighestValid: 1, Capabilities: 3}))
	cases := map[string]func([]byte) []byte{
		"short":          func(b []byte) []byte { return b[:39] },
		"signature":      func(b []byte) []byte { copy(b, "SSDT"); return b },
		"length too big": func(b []byte) []byte { le.PutUint32(b[4:], uint32(len(b)+1)); return b },
		"length small":   func(b []byte) []byte { le.PutUint32(b[4:], uint32(len(b)-1)); return b },
		"zero length":    func(b []byte) []byte { le.PutUint16(b[42:], 0); return b },
		"past end":       func(b []byte) []byte { le.PutUint16(b[42:], 17); return b },
		"trailing 3":     func(b []byte) []byte { b = append(b, 1, 2, 3); le.PutUint32(b[4:], uint32(len(b))); return b },
	}
	for name, mut := range cases {
		b := mut(append([]byte(nil), good...))
		if _, err := ParseNFIT(b); err == nil {
			t.Errorf("%s: want error", name)
		} else if !strings.Contains(err.Error(), "acpi:") {
			t.Errorf("%s: error %q does not say where it comes from", name, err)
		}
	}
	n, err := ParseNFIT(good)
	if err != nil || !n.ChecksumOK || len(n.Structures) != 1 || n.Offsets[0] != 40 {
		t.Fatalf("good table: %v %+v", err, n)
	}
	bad := append([]byte(nil), good...)
	bad[9]++
	n, err = ParseNFIT(bad)
	if err != nil || n.ChecksumOK {
		t.Fatalf("bad checksum: err %v, ok %v", err, n.ChecksumOK)
	}
	if !hasProblem(n.Validate(), SeverityWarning, "checksum") {
		t.Errorf("bad checksum not reported: %v", n.Validate())
	}
}

func hasProblem(ps []Problem, sev Severity, substr string) bool {
	for _, p := range ps {
		if p.Severity == sev && strings.Contains(strings.ToLower(p.Message), strings.ToLower(substr)) {
			return true
		}
	}
	return false
}

func TestValidateLinuxRules(t *testing.T) {
	qemu := func() []Structure {
		n, err := QEMUNFIT(QEMUTopology{DIMMs: []QEMUDIMM{{Slot: 0, Addr: 1 << 32, Size: 1 << 28}}})
		if err != nil {
			t.Fatal(err)
		}
		return n.Structures
	}
	build := func(extra ...[]byte) *NFIT {
		var parts [][]byte
		for _, s := range qemu() {
			parts = append(parts, mustMarshal(s))
		}
		n, err := ParseNFIT(table(append(parts, extra...)...))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if ps := build().Validate(); len(ps) != 0 {
		t.Errorf("QEMU table: unexpected problems %v", ps)
	}
	cases := []struct {
		name  string
		extra []byte
		sev   Severity
		text  string
	}{
		{"spa 60 bytes", spaBytes(60, 0), SeverityError, "exactly 56"},
		{"memdev 52", structBytes(TypeMemDev, 52), SeverityError, "exactly 48"},
		{"bdw 44", structBytes(TypeBlockWindow, 44), SeverityError, "exactly 40"},
		{"dcr 24", structBytes(TypeControl, 24), SeverityError, "at least 32"},
		{"interleave 0 lines", structBytes(TypeInterleave, 16), SeverityError, "0 lines"},
		{"flush 0 hints", structBytes(TypeFlushHint, 16), SeverityError, "at least 24"},
		{"caps 8", structBytes(TypeCapabilities, 8), SeverityError, "past the structure"},
		{"unknown type", structBytes(9, 8), SeverityWarning, "unknown structure type 9"},
		{"missing dcr", mustMarshal(&MemDevMap{Handle: 5, SPAIndex: 2, DCRIndex: 77}), SeverityError, "missing DCR 77"},
		{"unmapped memdev missing dcr", mustMarshal(&MemDevMap{Handle: 5, DCRIndex: 77}), SeverityError, "missing DCR 77"},
		{"memdev to absent spa", mustMarshal(&MemDevMap{Handle: 5, SPAIndex: 99, DCRIndex: 3}), SeverityWarning, "does not exist"},
		{"spa index 0", mustMarshal(&SPARange{RangeType: GUIDPersistent, Length: 1}), SeverityWarning, "index 0"},
		{"duplicate spa index", mustMarshal(&SPARange{Index: 2, RangeType: GUIDPersistent, Length: 1}), SeverityWarning, "already used"},
		{"duplicate dcr", mustMarshal(&ControlRegion{Index: 3}), SeverityWarning, "already used"},
		{"short dcr with windows", mustMarshal(&ControlRegion{Index: 11, Windows: 1, Short: true}), SeverityError, "reads 80 bytes"},
		{"unknown guid", mustMarshal(&SPARange{Index: 12, RangeType: GUID{1}, Length: 1}), SeverityWarning, "unknown range type"},
		{"not armed", mustMarshal(&MemDevMap{Handle: 1, SPAIndex: 2, DCRIndex: 3, RegionSize: 1, Flags: MemDevNotArmed}), SeverityInfo, "read-only"},
	}
	for _, c := range cases {
		ps := build(c.extra).Validate()
		if !hasProblem(ps, c.sev, c.text) {
			t.Errorf("%s: want %s containing %q, got %v", c.name, c.sev, c.text, ps)
		}
	}
	// More than 32 DIMMs in one persistent-memory range.
	var many [][]byte
	for i := 0; i < 33; i++ {
		many = append(many, mustMarshal(&MemDevMap{Handle: uint32(100 + i), SPAIndex: 2, DCRIndex: 3, RegionSize: 1, RegionOffset: uint64(i)}))
	}
	if ps := build(many...).Validate(); !hasProblem(ps, SeverityError, "more than 32") {
		t.Errorf("33 mappings: %v", ps)
	}
}

func TestCookiesNeedDCR(t *testing.T) {
	n, err := ParseNFIT(table(
		mustMarshal(&SPARange{Index: 2, RangeType: GUIDPersistent, Length: 1 << 20}),
		mustMarshal(&MemDevMap{Handle: 1, SPAIndex: 2, DCRIndex: 3}),
	))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Cookies(n); err == nil {
		t.Error("cookies without a control region: want error")
	}
}

func TestCookiesInterleaved(t *testing.T) {
	// A 2-way interleave set: two DIMMs in one SPA range, listed with the
	// larger region offset first; the cookie must not depend on order and
	// must use each DIMM's own DCR (serial, vendor, manufacturing fields).
	mk := func(first, second int) *NFIT {
		mds := []*MemDevMap{
			{Handle: 0x10, SPAIndex: 1, DCRIndex: 5, RegionOffset: 0x100, RegionSize: 1 << 20},
			{Handle: 0x11, SPAIndex: 1, DCRIndex: 6, RegionOffset: 0x0, RegionSize: 1 << 20},
		}
		n := &NFIT{Header: QEMUHeader(), Structures: []Structure{
			&SPARange{Index: 1, RangeType: GUIDPersistent, Length: 2 << 20},
			mds[first], mds[second],
			&ControlRegion{Index: 5, VendorID: 0x8089, Serial: 0xaaaa, MfgDate: 0x1234, MfgLocation: 7},
			&ControlRegion{Index: 6, VendorID: 0x8089, Serial: 0xbbbb},
		}}
		return n
	}
	a, err := Cookies(mk(0, 1))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Cookies(mk(1, 0))
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != 1 || !reflect.DeepEqual(a, b) {
		t.Fatalf("cookies %+v vs %+v", a, b)
	}
	want, _ := ComputeCookies([]CookieDIMM{
		{RegionOffset: 0, Serial: 0xbbbb, VendorID: 0x8089},
		{RegionOffset: 0x100, Serial: 0xaaaa, VendorID: 0x8089, ManufacturingDate: 0x1234, ManufacturingLocation: 7},
	})
	if a[0].SetCookies != want {
		t.Errorf("got %+v, want %+v", a[0].SetCookies, want)
	}
}

func TestBuildQEMUExtras(t *testing.T) {
	top := QEMUTopology{Persistence: "mem-ctrl", DIMMs: []QEMUDIMM{
		{Slot: 3, Addr: 1 << 32, Size: 1 << 28, Node: 1, Unarmed: true, FlushHints: []uint64{0xfee00000}},
		{Slot: 1, Addr: 1<<32 + 1<<28, Size: 1 << 28},
	}}
	b, err := BuildQEMU(top)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 40+2*184+24+16 {
		t.Errorf("length %d", len(b))
	}
	n, err := ParseNFIT(b)
	if err != nil {
		t.Fatal(err)
	}
	if ps := n.Validate(); hasProblem(ps, SeverityError, "") || hasProblem(ps, SeverityWarning, "") {
		t.Errorf("problems: %v", ps)
	}
	got, err := TopologyFromNFIT(n)
	if err != nil || !reflect.DeepEqual(got, top) {
		t.Errorf("TopologyFromNFIT = %+v, %v; want %+v", got, err, top)
	}
	spa := n.SPAs()[0]
	if spa.Index != 8 || spa.ProximityDomain != 1 || n.MemDevs()[0].Handle != 4 || n.ControlRegions()[0].Serial != 0x123459 || n.ControlRegions()[0].Index != 9 {
		t.Errorf("QEMU numbering for slot 3 wrong: spa %+v memdev %+v dcr %+v", spa, n.MemDevs()[0], n.ControlRegions()[0])
	}
	caps := n.Structures[len(n.Structures)-1].(*PlatformCapabilities)
	if caps.Capabilities != 2 || caps.HighestValid != 1 || caps.PersistenceDomain() != "memory_controller" {
		t.Errorf("caps %+v", caps)
	}
	// Order matters for the bytes but CompareQEMU takes the table's order.
	swapped := QEMUTopology{Persistence: top.Persistence, DIMMs: []QEMUDIMM{top.DIMMs[1], top.DIMMs[0]}}
	if b2, _ := BuildQEMU(swapped); bytes.Equal(b, b2) {
		t.Error("DIMM order did not change the bytes")
	}
	if diffs, err := CompareQEMU(n, swapped); err != nil || len(diffs) != 0 {
		t.Errorf("CompareQEMU with another order: %v %v", err, diffs)
	}
	other := swapped
	other.DIMMs = append([]QEMUDIMM(nil), swapped.DIMMs...)
	other.DIMMs[1].Node = 0
	// The node shows as the SPA's proximity domain (and the checksum).
	if diffs, _ := CompareQEMU(n, other); len(diffs) != 2 || diffs[0].Field != "Checksum" || diffs[1].Field != "Proximity Domain" || diffs[1].Want != "0" || diffs[1].Got != "1" {
		t.Errorf("node change: diffs %v", diffs)
	}
}

func TestTopologyChecks(t *testing.T) {
	d := QEMUDIMM{Slot: 0, Addr: 1 << 32, Size: 1 << 20}
	bad := map[string]QEMUTopology{
		"no dimms":     {},
		"persistence":  {Persistence: "battery", DIMMs: []QEMUDIMM{d}},
		"slot -1":      {DIMMs: []QEMUDIMM{{Slot: -1, Addr: 0, Size: 1}}},
		"slot huge":    {DIMMs: []QEMUDIMM{{Slot: 40000, Addr: 0, Size: 1}}},
		"dup slot":     {DIMMs: []QEMUDIMM{d, {Slot: 0, Addr: 1 << 40, Size: 1}}},
		"size 0":       {DIMMs: []QEMUDIMM{{Slot: 0, Addr: 0}}},
		"wrap":         {DIMMs: []QEMUDIMM{{Slot: 0, Addr: ^uint64(0), Size: 2}}},
		"overlap":      {DIMMs: []QEMUDIMM{d, {Slot: 1, Addr: 1<<32 + 4096, Size: 1}}},
		"flush hints ": {DIMMs: []QEMUDIMM{{Slot: 0, Addr: 0, Size: 1, FlushHints: make([]uint64, 9000)}}},
	}
	for name, top := range bad {
		if _, err := BuildQEMU(top); err == nil {
			t.Errorf("%s: want error", name)
		}
	}
	for _, js := range []string{
		`{"persistence":"","dimms":[{"slot":0,"addr":1,"size":1,"node":0,"unarmd":true}]}`,
		`{"persistence":"","dimms":[{"slot":0,"addr":1,"size":1}]} {}`,
		`{"dimms":[{"slot":"0"}]}`,
	} {
		if _, err := ParseQEMUTopology([]byte(js)); err == nil {
			t.Errorf("ParseQEMUTopology(%s): want error", js)
		}
	}
	if _, err := ParseQEMUTopology([]byte(`{"qemu":"10.0.2","machine":"q35","persistence":"cpu","dimms":[{"id":"nv0","label_size":0,"slot":0,"addr":1,"size":1,"node":0,"unarmed":false}],"regions":[]}`)); err != nil {
		t.Errorf("harness format: %v", err)
	}
}

func TestDumpAndText(t *testing.T) {
	raw, err := os.ReadFile("testdata/qemu-unarmed.bin")
	if err != nil {
		t.Fatal(err)
	}
	n, err := ParseNFIT(raw)
	if err != nil {
		t.Fatal(err)
	}
	d := MakeDump(n)
	if d.Header["checksum_ok"] != true || d.Header["signature"] != "NFIT" || len(d.Structures) != 3 {
		t.Fatalf("dump %+v", d)
	}
	spa := d.Structures[0]
	if spa["type"] != "spa" || spa["index"] != uint64(2) || spa["guid"] != "66f0d379-b4f3-4074-ac43-0d3318b78cdb" || spa["base"] != uint64(1<<32) || spa["offset"] != 40 {
		t.Errorf("spa %+v", spa)
	}
	md := d.Structures[1]
	if md["type"] != "memdev" || !reflect.DeepEqual(md["flags_names"], []string{"not-armed"}) {
		t.Errorf("memdev %+v", md)
	}
	if len(d.Cookies) != 1 || d.Cookies[0].V11 != "0x002468ac00123456" || d.Cookies[0].V12 != "0x00ba90120012b4dc" {
		t.Errorf("cookies %+v", d.Cookies)
	}
	var sb strings.Builder
	if err := WriteText(&sb, n); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Serial Number:", "0x123456", "[not-armed]", "[WB, NV]", "v1.2 0x00ba90120012b4dc", "not armed: Linux makes its regions read-only", "slot 0"} {
		if !strings.Contains(sb.String(), want) {
			t.Errorf("text dump lacks %q:\n%s", want, sb.String())
		}
	}
}

// TestCheckQEMURules: the builder refuses topologies QEMU can never
// present, naming the DIMM and field, and warns on what Linux uses badly;
// CompareQEMU still describes such tables.
func TestCheckQEMURules(t *testing.T) {
	ok := QEMUDIMM{Slot: 0, Addr: 1 << 32, Size: 128 << 20}
	refused := []struct {
		name string
		top  QEMUTopology
		want string
	}{
		{"auditor's example", QEMUTopology{DIMMs: []QEMUDIMM{{Slot: 0, Addr: 1, Size: 3}}}, "dimms[0] (slot 0): addr: 0x1 is not a multiple of 4 KiB"},
		{"size not a page", QEMUTopology{DIMMs: []QEMUDIMM{ok, {Slot: 1, Addr: 1<<32 + 128<<20, Size: 1<<20 + 512}}}, "dimms[1] (slot 1): size: 1049088 is not a multiple of 4 KiB"},
		{"slot 256", QEMUTopology{DIMMs: []QEMUDIMM{{Slot: 256, Addr: 1 << 32, Size: 1 << 30}}}, "dimms[0] (slot 256): slot: 256 is beyond QEMU's 256 memory slots"},
		{"duplicate slot", QEMUTopology{DIMMs: []QEMUDIMM{ok, {Slot: 0, Addr: 1 << 40, Size: 1 << 30}}}, "dimms[1]: slot 0 used twice"},
		{"overlap", QEMUTopology{DIMMs: []QEMUDIMM{ok, {Slot: 1, Addr: 1<<32 + 64<<20, Size: 1 << 30}}}, "dimms[1] (slot 1) overlaps dimms[0] (slot 0)"},
	}
	for _, c := range refused {
		if _, err := c.top.CheckQEMU(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: CheckQEMU = %v, want an error containing %q", c.name, err, c.want)
		}
		if _, err := BuildQEMU(c.top); err == nil {
			t.Errorf("%s: BuildQEMU accepted it", c.name)
		}
		if _, err := QEMUNFIT(c.top); err == nil {
			t.Errorf("%s: QEMUNFIT accepted it", c.name)
		}
	}

	// Page-aligned but not 16 MiB aligned: built, with warnings.
	odd := QEMUTopology{DIMMs: []QEMUDIMM{{Slot: 255, Addr: 1<<32 + 4096, Size: 20 << 20}}}
	ws, err := odd.CheckQEMU()
	if err != nil || len(ws) != 2 || !strings.Contains(ws[0], "addr 0x100001000 is not a multiple of 16 MiB") || !strings.Contains(ws[1], "size 20 MiB") || !strings.Contains(ws[1], "only 16 MiB") {
		t.Errorf("CheckQEMU(%+v) = %q, %v", odd, ws, err)
	}
	if _, err := BuildQEMU(odd); err != nil {
		t.Errorf("BuildQEMU with warnings only: %v", err)
	}
	if ws, err := (QEMUTopology{DIMMs: []QEMUDIMM{ok}}).CheckQEMU(); err != nil || len(ws) != 0 {
		t.Errorf("aligned DIMM: %q, %v", ws, err)
	}

	// Another VMM's unaligned table can still be compared with its
	// description: CompareQEMU needs only Check.
	weird := &NFIT{Header: QEMUHeader(), Structures: []Structure{
		&SPARange{Index: 2, Flags: qemuSPAFlags, RangeType: GUIDPersistent, Base: 1, Length: 3, Attributes: qemuSPAAttribute},
		&MemDevMap{Handle: 1, SPAIndex: 2, DCRIndex: 3, RegionSize: 3, InterleaveWays: 1},
		&ControlRegion{Index: 3, VendorID: qemuVendorID, DeviceID: qemuDeviceID, RevisionID: qemuRevisionID, Serial: qemuSerial(0), FormatCode: qemuFIC},
	}}
	b, err := weird.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	n, err := ParseNFIT(b)
	if err != nil {
		t.Fatal(err)
	}
	top, err := TopologyFromNFIT(n)
	if err != nil {
		t.Fatalf("TopologyFromNFIT on an unaligned table: %v", err)
	}
	if diffs, err := CompareQEMU(n, top); err != nil || len(diffs) != 0 {
		t.Errorf("CompareQEMU on an unaligned table: %v %v", diffs, err)
	}
}
