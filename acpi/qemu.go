package acpi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"

	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

// QEMUDIMM is one NVDIMM as QEMU's query-memory-devices reports it. Size
// is the guest-visible (aligned) size, not the backing size.
type QEMUDIMM struct {
	Slot    int    `json:"slot"`
	Addr    uint64 `json:"addr"`
	Size    uint64 `json:"size"`
	Node    uint32 `json:"node"`
	Unarmed bool   `json:"unarmed"`
	// FlushHints are flush hint (doorbell) addresses for a type-6
	// structure after the DIMM's control region. QEMU never emits them;
	// other VMMs may.
	FlushHints []uint64 `json:"flush_hints,omitempty"`
}

// QEMUTopology is what determines QEMU's NFIT: the NVDIMMs in the order
// QEMU lists them (its object-tree order, not slot order) and the
// machine's nvdimm-persistence ("", "cpu" or "mem-ctrl").
type QEMUTopology struct {
	Persistence string     `json:"persistence"`
	DIMMs       []QEMUDIMM `json:"dimms"`
}

// Largest slot whose SPA index, (slot+1)*2+1, fits 16 bits.
const maxQEMUSlot = (math.MaxUint16-1)/2 - 1

// ParseQEMUTopology decodes a topology JSON document strictly: unknown
// fields and trailing data are errors, except the descriptive keys the
// integration suite writes beside captured tables ("qemu", "machine",
// "regions"; per DIMM "id" and "label_size"), which are ignored.
func ParseQEMUTopology(b []byte) (QEMUTopology, error) {
	var doc struct {
		QEMUTopology
		DIMMs []struct {
			QEMUDIMM
			ID        json.RawMessage `json:"id"`
			LabelSize json.RawMessage `json:"label_size"`
		} `json:"dimms"`
		QEMU    json.RawMessage `json:"qemu"`
		Machine json.RawMessage `json:"machine"`
		Regions json.RawMessage `json:"regions"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return QEMUTopology{}, fmt.Errorf("acpi: topology JSON: %w", err)
	}
	if dec.More() {
		return QEMUTopology{}, fmt.Errorf("acpi: topology JSON: trailing data after the object")
	}
	t := QEMUTopology{Persistence: doc.Persistence}
	for _, d := range doc.DIMMs {
		t.DIMMs = append(t.DIMMs, d.QEMUDIMM)
	}
	return t, t.Check()
}

// Check reports a topology QEMU could not have: no DIMMs, a slot out of
// range or used twice, an empty or wrapping range, overlapping ranges,
// or an unknown persistence.
func (t QEMUTopology) Check() error {
	switch t.Persistence {
	case "", "cpu", "mem-ctrl":
	default:
		return fmt.Errorf("acpi: topology: persistence %q, want \"\", \"cpu\" or \"mem-ctrl\"", t.Persistence)
	}
	if len(t.DIMMs) == 0 {
		return fmt.Errorf("acpi: topology: no DIMMs (QEMU emits no NFIT without an NVDIMM)")
	}
	slots := map[int]bool{}
	for i, d := range t.DIMMs {
		if d.Slot < 0 || d.Slot > maxQEMUSlot {
			return fmt.Errorf("acpi: topology: dimms[%d]: slot %d out of range 0..%d", i, d.Slot, maxQEMUSlot)
		}
		if slots[d.Slot] {
			return fmt.Errorf("acpi: topology: dimms[%d]: slot %d used twice", i, d.Slot)
		}
		slots[d.Slot] = true
		if d.Size == 0 {
			return fmt.Errorf("acpi: topology: dimms[%d] (slot %d): size 0", i, d.Slot)
		}
		if d.Addr+d.Size < d.Addr {
			return fmt.Errorf("acpi: topology: dimms[%d] (slot %d): addr %#x + size %#x wraps", i, d.Slot, d.Addr, d.Size)
		}
		for j, e := range t.DIMMs[:i] {
			if d.Addr < e.Addr+e.Size && e.Addr < d.Addr+d.Size {
				return fmt.Errorf("acpi: topology: dimms[%d] (slot %d) overlaps dimms[%d] (slot %d)", i, d.Slot, j, e.Slot)
			}
		}
		if 16+8*len(d.FlushHints) > maxStructLen {
			return fmt.Errorf("acpi: topology: dimms[%d] (slot %d): %d flush hints do not fit a structure", i, d.Slot, len(d.FlushHints))
		}
	}
	return nil
}

// Limits QEMU puts on where and how big an NVDIMM can be, and the
// alignment Linux's tools want.
const (
	// qemuMaxRAMSlots is ACPI_MAX_RAM_SLOTS: machines refuse more
	// memory slots, so slot numbers run 0..255.
	qemuMaxRAMSlots = 256
	// qemuMinAlign is the smallest backend alignment (a 4 KiB page):
	// QEMU's NFIT sizes are align_down(S-L, A) and the DIMM sits at an
	// A-aligned address, so neither can be a finer multiple.
	qemuMinAlign = 4 * memfile.KiB
	// linuxNamespaceAlign: Linux allocates namespaces in 16 MiB units
	// and ndctl refuses a region or device address that is not 16 MiB
	// aligned ("misaligned to 16M").
	linuxNamespaceAlign = 16 * memfile.MiB
)

// CheckQEMU is Check plus the rules of QEMU's memory-device code: a slot
// number below 256 (ACPI_MAX_RAM_SLOTS) and an address and size that are
// multiples of the backend alignment, at least a 4 KiB page. A topology
// failing it is one QEMU can never present, and the error names the DIMM
// and the field. The warnings are for topologies QEMU can present but
// that Linux uses badly: an address or size that is not a multiple of
// 16 MiB (ndctl refuses such a region, namespaces lose the remainder).
func (t QEMUTopology) CheckQEMU() (warnings []string, err error) {
	if err := t.Check(); err != nil {
		return nil, err
	}
	for i, d := range t.DIMMs {
		where := fmt.Sprintf("acpi: topology: dimms[%d] (slot %d)", i, d.Slot)
		if d.Slot >= qemuMaxRAMSlots {
			return nil, fmt.Errorf("%s: slot: %d is beyond QEMU's %d memory slots (0..%d)", where, d.Slot, qemuMaxRAMSlots, qemuMaxRAMSlots-1)
		}
		if d.Addr%qemuMinAlign != 0 {
			return nil, fmt.Errorf("%s: addr: %#x is not a multiple of 4 KiB (QEMU places a DIMM at a multiple of its backend's alignment, at least one page)", where, d.Addr)
		}
		if d.Size%qemuMinAlign != 0 {
			return nil, fmt.Errorf("%s: size: %d is not a multiple of 4 KiB (QEMU's NFIT size is the backing minus the label area rounded down to the backend's alignment, at least one page)", where, d.Size)
		}
		if d.Addr%linuxNamespaceAlign != 0 {
			warnings = append(warnings, fmt.Sprintf("dimms[%d] (slot %d): addr %#x is not a multiple of 16 MiB: ndctl refuses the region (\"misaligned to 16M\")", i, d.Slot, d.Addr))
		}
		if d.Size%linuxNamespaceAlign != 0 {
			warnings = append(warnings, fmt.Sprintf("dimms[%d] (slot %d): size %s is not a multiple of 16 MiB: Linux namespaces cover only %s of it", i, d.Slot, memfile.FormatSize(d.Size), memfile.FormatSize(d.Size/linuxNamespaceAlign*linuxNamespaceAlign)))
		}
	}
	return warnings, nil
}

// QEMUHeader is the header QEMU gives its NFIT (before Length/Checksum).
func QEMUHeader() Header {
	var h Header
	copy(h.Signature[:], "NFIT")
	h.Revision = 1
	copy(h.OEMID[:], "BOCHS ")
	copy(h.OEMTableID[:], "BXPC    ")
	h.OEMRevision = 1
	copy(h.CreatorID[:], "BXPC")
	h.CreatorRevision = 1
	return h
}

// QEMUNFIT returns the table QEMU builds for t (hw/acpi/nvdimm.c): per
// DIMM in the given order an SPA range, a memory-device map and an
// 80-byte control region (then a flush hint structure if the DIMM has
// FlushHints), and at the end a platform-capabilities structure when
// Persistence is set. Callers may add structures before encoding. It
// refuses a topology CheckQEMU rejects; its warnings are the caller's to
// show.
func QEMUNFIT(t QEMUTopology) (*NFIT, error) {
	if _, err := t.CheckQEMU(); err != nil {
		return nil, err
	}
	return qemuNFIT(t), nil
}

// qemuNFIT builds the table for a topology that passed Check (not
// necessarily CheckQEMU: CompareQEMU describes any table).
func qemuNFIT(t QEMUTopology) *NFIT {
	n := &NFIT{Header: QEMUHeader()}
	for _, d := range t.DIMMs {
		var flags uint16
		if d.Unarmed {
			flags = MemDevNotArmed
		}
		n.Structures = append(n.Structures,
			&SPARange{
				Index:           qemuSPAIndex(d.Slot),
				Flags:           qemuSPAFlags,
				ProximityDomain: d.Node,
				RangeType:       GUIDPersistent,
				Base:            d.Addr,
				Length:          d.Size,
				Attributes:      qemuSPAAttribute,
			},
			&MemDevMap{
				Handle:         qemuHandle(d.Slot),
				SPAIndex:       qemuSPAIndex(d.Slot),
				DCRIndex:       qemuDCRIndex(d.Slot),
				RegionSize:     d.Size,
				InterleaveWays: 1,
				Flags:          flags,
			},
			&ControlRegion{
				Index:      qemuDCRIndex(d.Slot),
				VendorID:   qemuVendorID,
				DeviceID:   qemuDeviceID,
				RevisionID: qemuRevisionID,
				Serial:     qemuSerial(d.Slot),
				FormatCode: qemuFIC,
			},
		)
		if len(d.FlushHints) > 0 {
			n.Structures = append(n.Structures, &FlushHint{Handle: qemuHandle(d.Slot), Addresses: append([]uint64(nil), d.FlushHints...)})
		}
	}
	switch t.Persistence {
	case "cpu":
		n.Structures = append(n.Structures, &PlatformCapabilities{HighestValid: 1, Capabilities: CapCPUCacheFlush | CapMemCtrlFlush})
	case "mem-ctrl":
		n.Structures = append(n.Structures, &PlatformCapabilities{HighestValid: 1, Capabilities: CapMemCtrlFlush})
	}
	return n
}

// BuildQEMU returns the bytes of the NFIT QEMU presents to a guest with
// topology t, checksum included. Like QEMUNFIT it refuses a topology
// QEMU could never have (CheckQEMU).
func BuildQEMU(t QEMUTopology) ([]byte, error) {
	n, err := QEMUNFIT(t)
	if err != nil {
		return nil, err
	}
	return n.MarshalBinary()
}

// TopologyFromNFIT reads a QEMU-style topology back from a table: each
// persistent-memory SPA range, in table order, with its memory-device
// map, gives one DIMM (slot = device handle - 1, node = proximity
// domain, unarmed = the not-armed flag); a platform-capabilities
// structure gives the persistence. It fails when the table does not have
// the one-DIMM-per-range shape QEMU produces; whether the numbering also
// follows QEMU's rules is for CompareQEMU to say.
func TopologyFromNFIT(n *NFIT) (QEMUTopology, error) {
	var t QEMUTopology
	for _, spa := range n.SPAs() {
		if spa.RangeType != GUIDPersistent {
			continue
		}
		var mds []*MemDevMap
		for _, m := range n.MemDevs() {
			if m.SPAIndex == spa.Index {
				mds = append(mds, m)
			}
		}
		if len(mds) != 1 {
			return QEMUTopology{}, fmt.Errorf("acpi: SPA range %d has %d memory-device maps, QEMU gives each range exactly one", spa.Index, len(mds))
		}
		m := mds[0]
		if m.Handle == 0 || m.Handle-1 > maxQEMUSlot {
			return QEMUTopology{}, fmt.Errorf("acpi: SPA range %d: device handle %#x is not a QEMU slot handle (slot+1)", spa.Index, m.Handle)
		}
		d := QEMUDIMM{
			Slot:    int(m.Handle - 1),
			Addr:    spa.Base,
			Size:    spa.Length,
			Node:    spa.ProximityDomain,
			Unarmed: m.Flags&MemDevNotArmed != 0,
		}
		for _, s := range n.Structures {
			if fh, ok := s.(*FlushHint); ok && fh.Handle == m.Handle {
				d.FlushHints = append([]uint64(nil), fh.Addresses...)
			}
		}
		t.DIMMs = append(t.DIMMs, d)
	}
	for _, s := range n.Structures {
		pc, ok := s.(*PlatformCapabilities)
		if !ok {
			continue
		}
		switch c := pc.Effective(); {
		case c&CapCPUCacheFlush != 0:
			t.Persistence = "cpu"
		case c&CapMemCtrlFlush != 0:
			t.Persistence = "mem-ctrl"
		}
	}
	if len(t.DIMMs) == 0 {
		return QEMUTopology{}, fmt.Errorf("acpi: NFIT has no persistent-memory SPA range")
	}
	return t, nil
}

// Difference is one field where a table differs from what was expected.
type Difference struct {
	Where string `json:"where"` // e.g. "header", "structure 4 (memdev, offset 0x98)"
	Field string `json:"field"`
	Want  string `json:"want"`
	Got   string `json:"got"`
}

func (d Difference) String() string {
	return fmt.Sprintf("%s: %s: want %s, got %s", d.Where, d.Field, d.Want, d.Got)
}

// CompareQEMU compares got with the table QEMU would build for want,
// field by field. want need only pass Check, not CheckQEMU, so tables
// of other VMMs can be described too. Because QEMU's DIMM order follows its object tree, the
// expected DIMMs are first put in the order got lists their slots (slots
// got lacks keep their place at the end); a different order is therefore
// not reported, a different set of slots is.
func CompareQEMU(got *NFIT, want QEMUTopology) ([]Difference, error) {
	if err := want.Check(); err != nil {
		return nil, err
	}
	ordered := QEMUTopology{Persistence: want.Persistence}
	bySlot := map[int]QEMUDIMM{}
	for _, d := range want.DIMMs {
		bySlot[d.Slot] = d
	}
	for _, m := range got.MemDevs() {
		if m.Handle == 0 {
			continue
		}
		if d, ok := bySlot[int(m.Handle)-1]; ok {
			ordered.DIMMs = append(ordered.DIMMs, d)
			delete(bySlot, d.Slot)
		}
	}
	for _, d := range want.DIMMs {
		if _, ok := bySlot[d.Slot]; ok {
			ordered.DIMMs = append(ordered.DIMMs, d)
		}
	}
	exp := qemuNFIT(ordered)
	b, err := exp.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if exp, err = ParseNFIT(b); err != nil {
		return nil, fmt.Errorf("acpi: re-reading the expected table: %w", err)
	}
	return Compare(exp, got), nil
}

// Compare lists field-by-field differences between two tables: header
// fields (Length and Checksum included), then structures pairwise in
// table order (a different kind is one difference), then extra or
// missing structures.
func Compare(want, got *NFIT) []Difference {
	var diffs []Difference
	diffs = append(diffs, diffFields("header", want.Header.Fields(), got.Header.Fields())...)
	if !got.ChecksumOK && len(got.Offsets) > 0 {
		diffs = append(diffs, Difference{Where: "header", Field: "checksum valid", Want: "true", Got: "false"})
	}
	for i := 0; i < len(want.Structures) || i < len(got.Structures); i++ {
		where := fmt.Sprintf("structure %d", i)
		if off := got.offset(i); off >= 0 && i < len(got.Structures) {
			where = fmt.Sprintf("structure %d (offset %#x)", i, off)
		}
		switch {
		case i >= len(got.Structures):
			w := want.Structures[i]
			diffs = append(diffs, Difference{Where: where, Field: "presence", Want: describe(w), Got: "missing"})
		case i >= len(want.Structures):
			g := got.Structures[i]
			diffs = append(diffs, Difference{Where: where, Field: "presence", Want: "none", Got: describe(g)})
		default:
			w, g := want.Structures[i], got.Structures[i]
			if w.Type() != g.Type() || w.Kind() != g.Kind() {
				diffs = append(diffs, Difference{Where: where, Field: "type", Want: describe(w), Got: describe(g)})
				continue
			}
			diffs = append(diffs, diffFields(where+" "+w.Kind(), w.Fields(), g.Fields())...)
		}
	}
	return diffs
}

func describe(s Structure) string {
	return fmt.Sprintf("%s (type %d)", s.Kind(), s.Type())
}

func diffFields(where string, want, got []Field) []Difference {
	var diffs []Difference
	gm := map[string]Field{}
	for _, f := range got {
		gm[f.Key] = f
	}
	seen := map[string]bool{}
	for _, w := range want {
		seen[w.Key] = true
		g, ok := gm[w.Key]
		switch {
		case !ok:
			diffs = append(diffs, Difference{Where: where, Field: w.Name, Want: formatValue(w), Got: "absent"})
		case formatValue(w) != formatValue(g):
			diffs = append(diffs, Difference{Where: where, Field: w.Name, Want: formatValue(w), Got: formatValue(g)})
		}
	}
	for _, g := range got {
		if !seen[g.Key] {
			diffs = append(diffs, Difference{Where: where, Field: g.Name, Want: "absent", Got: formatValue(g)})
		}
	}
	return diffs
}

// formatValue renders a field value for humans: numbers in hex (and
// decimal when large), strings quoted, lists bracketed.
func formatValue(f Field) string {
	switch v := f.Value.(type) {
	case uint64:
		if v >= 10 {
			return fmt.Sprintf("%#x (%d)", v, v)
		}
		return fmt.Sprintf("%d", v)
	case string:
		return fmt.Sprintf("%q", v)
	case []uint64:
		s := "["
		for i, x := range v {
			if i > 0 {
				s += " "
			}
			s += fmt.Sprintf("%#x", x)
		}
		return s + "]"
	}
	return fmt.Sprint(f.Value)
}
