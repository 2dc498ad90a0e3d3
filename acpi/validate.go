package acpi

import "fmt"

// Severity of a Problem.
type Severity string

const (
	// SeverityError: Linux refuses the whole NFIT (no NVDIMMs at all) or
	// reads past a structure.
	SeverityError Severity = "error"
	// SeverityWarning: Linux accepts the table but ignores or mishandles
	// part of it.
	SeverityWarning Severity = "warning"
	// SeverityInfo: worth knowing when debugging (e.g. a read-only region).
	SeverityInfo Severity = "info"
)

// Problem is one finding of Validate.
type Problem struct {
	Severity  Severity `json:"severity"`
	Structure int      `json:"structure"` // index in Structures, -1 for the header
	Offset    int      `json:"offset"`    // table offset, -1 when unknown
	Field     string   `json:"field,omitempty"`
	Message   string   `json:"message"`
}

func (p Problem) String() string {
	where := "header"
	if p.Structure >= 0 {
		where = fmt.Sprintf("structure %d", p.Structure)
		if p.Offset >= 0 {
			where += fmt.Sprintf(" at offset %#x", p.Offset)
		}
	}
	if p.Field != "" {
		where += ", " + p.Field
	}
	return fmt.Sprintf("%s: %s: %s", p.Severity, where, p.Message)
}

// ndMaxMappings is Linux's limit of DIMMs per region (ND_MAX_MAPPINGS).
const ndMaxMappings = 32

// Validate applies the rules of Linux's NFIT driver (drivers/acpi/nfit)
// and reports what it would reject, ignore or mis-read. A table without
// error-severity problems is one Linux accepts.
func (n *NFIT) Validate() []Problem {
	var ps []Problem
	add := func(sev Severity, i int, field, format string, args ...any) {
		off := -1
		if i >= 0 {
			off = n.offset(i)
		}
		ps = append(ps, Problem{Severity: sev, Structure: i, Offset: off, Field: field, Message: fmt.Sprintf(format, args...)})
	}

	if string(n.Header.Signature[:]) != "NFIT" {
		add(SeverityError, -1, "Signature", "signature %q, want \"NFIT\"", n.Header.Signature[:])
	}
	if len(n.Offsets) > 0 && !n.ChecksumOK {
		add(SeverityWarning, -1, "Checksum", "checksum %#02x does not make the table sum to zero (ACPICA warns; Linux still uses the table)", n.Header.Checksum)
	}
	if n.Header.Revision != 1 {
		add(SeverityInfo, -1, "Revision", "revision %d (ACPI 6.x NFIT is revision 1)", n.Header.Revision)
	}

	for i, s := range n.Structures {
		switch v := s.(type) {
		case *RawStructure:
			ps = append(ps, n.rawProblems(i, v)...)
		case *Interleave:
			if len(v.LineOffsets) == 0 {
				add(SeverityError, i, "Number of Lines", "interleave %d has 0 lines: Linux computes a huge size, fails to allocate it and drops the whole NFIT", v.Index)
			}
		case *FlushHint:
			if len(v.Addresses) == 0 {
				add(SeverityError, i, "Hint Count", "flush hint for handle %#x has no addresses (16 bytes): Linux requires at least 24 bytes and drops the whole NFIT", v.Handle)
			}
		case *ControlRegion:
			if v.Short && v.Windows != 0 {
				add(SeverityError, i, "Block Control Windows", "32-byte control region %d declares %d block windows: Linux reads 80 bytes, past the structure", v.Index, v.Windows)
			}
		case *PlatformCapabilities:
			if v.HighestValid > 30 {
				add(SeverityWarning, i, "Highest Valid Capability", "highest valid capability %d: Linux computes 1 << %d, undefined for a 32-bit mask", v.HighestValid, v.HighestValid+1)
			}
		case *SMBIOS:
			// Linux ignores SMBIOS structures.
		case *SPARange:
			if v.Index == 0 && !isVirtualRange(v.RangeType) {
				add(SeverityWarning, i, "Range Index", "SPA range index 0 is invalid: Linux ignores this range")
			}
			if RangeTypeName(v.RangeType) == "unknown" {
				add(SeverityWarning, i, "Range Type GUID", "unknown range type %s: Linux does not register this range", v.RangeType)
			}
			if v.Length == 0 {
				add(SeverityWarning, i, "Range Length", "SPA range %d has length 0", v.Index)
			}
			if v.Base+v.Length < v.Base {
				add(SeverityWarning, i, "Range Length", "SPA range %d: base %#x + length %#x wraps past the 64-bit address space", v.Index, v.Base, v.Length)
			}
		}
	}

	// Index uniqueness: Linux looks structures up by index and uses the
	// first match, so later duplicates are silently ignored.
	seenSPA := map[uint16]int{}
	seenDCR := map[uint16]int{}
	for i, s := range n.Structures {
		switch v := s.(type) {
		case *SPARange:
			if j, ok := seenSPA[v.Index]; ok && v.Index != 0 {
				add(SeverityWarning, i, "Range Index", "SPA range index %d already used by structure %d", v.Index, j)
			} else {
				seenSPA[v.Index] = i
			}
		case *ControlRegion:
			if j, ok := seenDCR[v.Index]; ok {
				add(SeverityWarning, i, "Control Region Index", "control region index %d already used by structure %d: Linux uses the first", v.Index, j)
			} else {
				seenDCR[v.Index] = i
			}
		}
	}

	// Memory-device maps: their DCR must exist (else "SPA n missing DCR
	// m" and the NFIT is refused), their SPA should exist.
	perSPA := map[uint16]int{}
	for i, s := range n.Structures {
		m, ok := s.(*MemDevMap)
		if !ok {
			continue
		}
		spa := n.findSPA(m.SPAIndex)
		counted := m.SPAIndex == 0
		if spa != nil {
			switch spa.RangeType {
			case GUIDPersistent, GUIDControlRegion:
				counted = true
			}
		}
		if m.SPAIndex != 0 && spa == nil {
			add(SeverityWarning, i, "SPA Range Index", "memory device (handle %#x) maps SPA range %d, which does not exist", m.Handle, m.SPAIndex)
		}
		if counted && m.DCRIndex != 0 && n.findDCR(m.DCRIndex) == nil {
			add(SeverityError, i, "Control Region Index", "SPA %d missing DCR %d: Linux fails to initialise the NFIT (handle %#x)", m.SPAIndex, m.DCRIndex, m.Handle)
		}
		if spa != nil && spa.RangeType == GUIDPersistent {
			perSPA[m.SPAIndex]++
			if perSPA[m.SPAIndex] == ndMaxMappings+1 {
				add(SeverityError, i, "SPA Range Index", "SPA range %d has more than %d memory devices: Linux fails to register the region", m.SPAIndex, ndMaxMappings)
			}
			if m.RegionOffset > spa.Length || m.RegionSize > spa.Length {
				add(SeverityWarning, i, "Region Size", "region offset %#x / size %#x does not fit SPA range %d of length %#x", m.RegionOffset, m.RegionSize, spa.Index, spa.Length)
			}
		}
		if m.Flags&MemDevNotArmed != 0 {
			add(SeverityInfo, i, "State Flags", "handle %#x is not armed: Linux makes its regions read-only", m.Handle)
		}
		if m.Flags&(MemDevSaveFailed|MemDevRestoreFailed|MemDevFlushFailed|MemDevMapFailed) != 0 {
			add(SeverityInfo, i, "State Flags", "handle %#x reports failures: %v", m.Handle, flagNames(uint64(m.Flags), memDevFlagNames))
		}
	}
	for _, spa := range n.SPAs() {
		if spa.RangeType == GUIDPersistent && spa.Index != 0 && perSPA[spa.Index] == 0 {
			idx := -1
			for i, s := range n.Structures {
				if s == Structure(spa) {
					idx = i
				}
			}
			add(SeverityInfo, idx, "Range Index", "persistent-memory SPA range %d has no memory devices: its region has no DIMMs and no labels", spa.Index)
		}
	}
	return ps
}

// rawProblems explains a structure kept raw.
func (n *NFIT) rawProblems(i int, r *RawStructure) []Problem {
	off := n.offset(i)
	p := func(sev Severity, field, format string, args ...any) []Problem {
		return []Problem{{Severity: sev, Structure: i, Offset: off, Field: field, Message: fmt.Sprintf(format, args...)}}
	}
	l := len(r.Bytes)
	switch r.StructType {
	case TypeSPA:
		return p(SeverityError, "Length", "SPA range length %d: Linux requires exactly 56 (64 with the location-cookie flag) and drops the whole NFIT (%s)", l, r.Problem)
	case TypeMemDev:
		return p(SeverityError, "Length", "memory device map length %d: Linux requires exactly 48 and drops the whole NFIT", l)
	case TypeBlockWindow:
		return p(SeverityError, "Length", "block data window length %d: Linux requires exactly 40 and drops the whole NFIT", l)
	case TypeControl:
		if l < sizeDCRShort {
			return p(SeverityError, "Length", "control region length %d: Linux requires at least 32 and drops the whole NFIT", l)
		}
		if le.Uint16(r.Bytes[30:]) != 0 && l < sizeDCR {
			return p(SeverityError, "Length", "control region length %d with block windows: Linux reads 80 bytes, past the structure", l)
		}
		return p(SeverityWarning, "Length", "control region length %d: Linux uses the first %d bytes and ignores the rest", l, map[bool]int{true: 80, false: 32}[le.Uint16(r.Bytes[30:]) != 0])
	case TypeInterleave:
		if l < 20 {
			return p(SeverityError, "Length", "interleave length %d: Linux requires at least 20 and drops the whole NFIT", l)
		}
		lines := le.Uint32(r.Bytes[8:])
		if lines == 0 {
			return p(SeverityError, "Number of Lines", "interleave with 0 lines: Linux fails to allocate and drops the whole NFIT")
		}
		return p(SeverityError, "Length", "interleave length %d does not match %d lines: Linux copies %d bytes (%s)", l, lines, 16+4*uint64(lines), r.Problem)
	case TypeFlushHint:
		if l < 24 {
			return p(SeverityError, "Length", "flush hint length %d: Linux requires at least 24 and drops the whole NFIT", l)
		}
		return p(SeverityError, "Length", "flush hint length %d does not match its hint count: Linux copies 16 + 8 x count bytes (%s)", l, r.Problem)
	case TypeCapabilities:
		if l < sizeCaps {
			return p(SeverityError, "Length", "platform capabilities length %d: Linux reads 16 bytes, past the structure", l)
		}
		return p(SeverityWarning, "Length", "platform capabilities length %d, want 16: Linux ignores the rest", l)
	case TypeSMBIOS:
		return p(SeverityWarning, "Length", "SMBIOS structure length %d, shorter than 8 (Linux ignores SMBIOS structures)", l)
	}
	return p(SeverityWarning, "Type", "unknown structure type %d (%d bytes): Linux logs \"unknown table\" and skips it", r.StructType, l)
}
