package acpi

import (
	"fmt"
	"io"
	"strings"
)

// Dump is the stable JSON form of a decoded table printed by
// `nvdimm-backend nfit dump --json`:
//
//	{"header": {"signature": "NFIT", "length": N, ..., "checksum_ok": true},
//	 "structures": [{"type": "spa", "type_id": 0, "offset": N, "length": N,
//	                 "index": 2, "guid": "66f0d379-...", "range_type": "pmem",
//	                 "base": N, "length": N, ...}, ...],
//	 "cookies": [{"spa_index": 2, "v1_1": "0x...", "v1_2": "0x...", "alt": "0x..."}],
//	 "problems": [{"severity": "error", "structure": 3, "offset": N, "field": "...", "message": "..."}]}
//
// Structure members are the Field keys of each type; a flags field also
// gets "<key>_names", the names of its set bits. Note that an SPA
// structure's "length" is its range length; the structure's own byte
// length is "struct_length".
type Dump struct {
	Header      map[string]any   `json:"header"`
	Structures  []map[string]any `json:"structures"`
	Cookies     []DumpCookie     `json:"cookies"`
	CookieError string           `json:"cookie_error,omitempty"`
	Problems    []Problem        `json:"problems"`
}

// DumpCookie is one SPA range's cookies as hex strings.
type DumpCookie struct {
	SPAIndex uint16 `json:"spa_index"`
	V11      string `json:"v1_1"`
	V12      string `json:"v1_2"`
	Alt      string `json:"alt"`
}

func fieldMap(m map[string]any, fs []Field) {
	for _, f := range fs {
		m[f.Key] = f.Value
		if f.Names != nil {
			m[f.Key+"_names"] = f.Names
		}
	}
}

// MakeDump returns the JSON form of n (see Dump).
func MakeDump(n *NFIT) Dump {
	d := Dump{Header: map[string]any{}, Structures: []map[string]any{}, Cookies: []DumpCookie{}, Problems: n.Validate()}
	fieldMap(d.Header, n.Header.Fields())
	d.Header["checksum_ok"] = n.ChecksumOK
	for i, s := range n.Structures {
		m := map[string]any{}
		fieldMap(m, s.Fields())
		m["type"] = s.Kind()
		m["type_id"] = s.Type()
		m["offset"] = n.offset(i)
		if b, err := s.MarshalBinary(); err == nil {
			m["struct_length"] = len(b)
		}
		d.Structures = append(d.Structures, m)
	}
	cs, err := Cookies(n)
	if err != nil {
		d.CookieError = err.Error()
	}
	for _, c := range cs {
		d.Cookies = append(d.Cookies, DumpCookie{SPAIndex: c.SPAIndex, V11: hex64(c.V11), V12: hex64(c.V12), Alt: hex64(c.Alt)})
	}
	if d.Problems == nil {
		d.Problems = []Problem{}
	}
	return d
}

func hex64(v uint64) string { return fmt.Sprintf("%#016x", v) }

var kindTitles = map[string]string{
	"spa":          "System Physical Address Range",
	"memdev":       "NVDIMM Region Mapping (memory device to SPA range)",
	"interleave":   "Interleave",
	"smbios":       "SMBIOS Management Information",
	"dcr":          "NVDIMM Control Region",
	"bdw":          "NVDIMM Block Data Window Region",
	"flush":        "Flush Hint Address",
	"capabilities": "Platform Capabilities",
	"unknown":      "Unknown (reserved type)",
	"invalid":      "Undecodable",
}

// WriteText prints n for people: every field by name with its value,
// decoded flags, what QEMU's numbering means, cookies and problems.
func WriteText(w io.Writer, n *NFIT) error {
	var b strings.Builder
	h := &n.Header
	fmt.Fprintf(&b, "NFIT: %d bytes, revision %d, checksum %#02x (%s)\n", h.Length, h.Revision, h.Checksum, map[bool]string{true: "ok", false: "WRONG"}[n.ChecksumOK || len(n.Offsets) == 0])
	writeFields(&b, "  ", h.Fields())
	for i, s := range n.Structures {
		off := n.offset(i)
		sb, _ := s.MarshalBinary()
		fmt.Fprintf(&b, "\n[%#05x] type %d: %s, %d bytes\n", off, s.Type(), kindTitles[s.Kind()], len(sb))
		writeFields(&b, "  ", s.Fields())
		switch v := s.(type) {
		case *MemDevMap:
			if v.Handle > 0 {
				fmt.Fprintf(&b, "  (QEMU: handle %d is memory slot %d, _ADR of \\_SB.NVDR.NV%02X)\n", v.Handle, v.Handle-1, v.Handle-1)
			}
		case *ControlRegion:
			fmt.Fprintf(&b, "  (format interface code %#04x: %s)\n", v.FormatCode, ficName(v.FormatCode))
		}
	}
	cs, err := Cookies(n)
	b.WriteString("\nInterleave-set cookies:\n")
	if err != nil {
		fmt.Fprintf(&b, "  cannot compute: %v\n", err)
	}
	if len(cs) == 0 && err == nil {
		b.WriteString("  none (no persistent-memory range with memory devices)\n")
	}
	for _, c := range cs {
		fmt.Fprintf(&b, "  SPA %d: v1.1 %#016x  v1.2 %#016x  alt %#016x\n", c.SPAIndex, c.V11, c.V12, c.Alt)
	}
	ps := n.Validate()
	b.WriteString("\nLinux acceptance:\n")
	if len(ps) == 0 {
		b.WriteString("  no problems\n")
	}
	for _, p := range ps {
		fmt.Fprintf(&b, "  %s\n", p)
	}
	_, err = io.WriteString(w, b.String())
	return err
}

func writeFields(b *strings.Builder, indent string, fs []Field) {
	for _, f := range fs {
		v := formatValue(f)
		if f.Names != nil {
			v += " [" + strings.Join(f.Names, ", ") + "]"
		}
		fmt.Fprintf(b, "%s%-28s %s\n", indent, f.Name+":", v)
	}
}

func ficName(c uint16) string {
	switch c {
	case 0x0101:
		return "byte-addressable, energy backed"
	case 0x0201:
		return "block, no energy backing"
	case 0x0301:
		return "byte-addressable, no energy backing (QEMU)"
	}
	return "unknown"
}
