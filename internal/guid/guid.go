// Package guid owns the EFI GUID as ACPI tables and namespace labels store
// it: 16 bytes in mixed-endian order (the first three groups little-endian,
// the last two as printed). NFIT range types and label type/abstraction
// GUIDs both use it.
package guid

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
)

// GUID is a GUID in mixed-endian storage order.
type GUID [16]byte

// IsZero reports whether g is all zeros.
func (g GUID) IsZero() bool { return g == GUID{} }

// String returns the canonical lower-case form, e.g.
// 66f0d379-b4f3-4074-ac43-0d3318b78cdb.
func (g GUID) String() string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x",
		binary.LittleEndian.Uint32(g[0:4]),
		binary.LittleEndian.Uint16(g[4:6]),
		binary.LittleEndian.Uint16(g[6:8]),
		g[8:10], g[10:16])
}

// Parse parses the canonical 36-character form (hex digits in either
// case) into mixed-endian storage.
func Parse(s string) (GUID, error) {
	var g GUID
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return g, fmt.Errorf("GUID %q: want the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", s)
	}
	var raw [16]byte
	h := s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:36]
	if _, err := hex.Decode(raw[:], []byte(h)); err != nil {
		return g, fmt.Errorf("GUID %q: %w", s, err)
	}
	binary.LittleEndian.PutUint32(g[0:], binary.BigEndian.Uint32(raw[0:4]))
	binary.LittleEndian.PutUint16(g[4:], binary.BigEndian.Uint16(raw[4:6]))
	binary.LittleEndian.PutUint16(g[6:], binary.BigEndian.Uint16(raw[6:8]))
	copy(g[8:], raw[8:])
	return g, nil
}

// MustParse is Parse for constants; it panics on a malformed literal.
func MustParse(s string) GUID {
	g, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return g
}
