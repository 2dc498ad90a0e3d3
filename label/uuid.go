package label

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/nvdimm-backend/nvdimm-backend/internal/guid"
)

// UUID is a namespace or info-block UUID stored in RFC 4122 byte order
// (the order it is printed in).
type UUID [16]byte

// GUID is an EFI GUID stored in mixed-endian form: the first three groups
// little-endian, the rest as printed. Label type and abstraction GUIDs use
// it.
type GUID = guid.GUID

// IsZero reports whether u is all zeros.
func (u UUID) IsZero() bool { return u == UUID{} }

// String formats u as xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx.
func (u UUID) String() string { return formatUUID(u) }

// MarshalText implements encoding.TextMarshaler.
func (u UUID) MarshalText() ([]byte, error) { return []byte(u.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (u *UUID) UnmarshalText(b []byte) error {
	v, err := ParseUUID(string(b))
	if err != nil {
		return err
	}
	*u = v
	return nil
}

func formatUUID(b [16]byte) string {
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:36], b[10:16])
	return string(s[:])
}

// ParseUUID parses the canonical 36-character form (hex digits in either
// case).
func ParseUUID(s string) (UUID, error) {
	var u UUID
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, fmt.Errorf("uuid %q: want the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", s)
	}
	h := strings.ReplaceAll(s, "-", "")
	if _, err := hex.Decode(u[:], []byte(h)); err != nil {
		return UUID{}, fmt.Errorf("uuid %q: %w", s, err)
	}
	return u, nil
}

// NewUUID returns a random (version 4) UUID.
func NewUUID() (UUID, error) {
	var u UUID
	if _, err := rand.Read(u[:]); err != nil {
		return u, fmt.Errorf("random uuid: %w", err)
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u, nil
}

// ParseGUID parses the canonical form into mixed-endian storage.
func ParseGUID(s string) (GUID, error) {
	g, err := guid.Parse(s)
	if err != nil {
		return GUID{}, fmt.Errorf("guid: %w", err)
	}
	return g, nil
}

var mustGUID = guid.MustParse

// Well-known GUIDs of v1.2 labels.
var (
	// PMemTypeGUID is the NFIT SPA range type of persistent memory; v1.2
	// pmem labels carry it as type_guid.
	PMemTypeGUID = mustGUID("66f0d379-b4f3-4074-ac43-0d3318b78cdb")
	// Claim classes (abstraction_guid); zero means raw.
	BTTGUID  = mustGUID("8aed63a2-29a2-4c66-8b12-f05d15d3922a")
	BTT2GUID = mustGUID("18633bfc-1735-4217-8ac9-17239282d3f8")
	PFNGUID  = mustGUID("266400ba-fb9f-4677-bcb0-968f11d0d225")
	DAXGUID  = mustGUID("97a86d9c-3cdd-4eda-986f-5068b4f80088")
)

// Namespace modes as ndctl names them.
const (
	ModeRaw    = "raw"
	ModeFSDAX  = "fsdax"
	ModeDevDAX = "devdax"
	ModeSector = "sector"
)

// ModeGUID returns the abstraction GUID a v1.2 label carries for mode.
func ModeGUID(mode string) (GUID, error) {
	switch mode {
	case ModeRaw:
		return GUID{}, nil
	case ModeFSDAX:
		return PFNGUID, nil
	case ModeDevDAX:
		return DAXGUID, nil
	case ModeSector:
		return BTTGUID, nil
	}
	return GUID{}, fmt.Errorf("mode %q: want raw, fsdax or devdax", mode)
}

// GUIDMode names the claim class of an abstraction GUID ("" if unknown).
func GUIDMode(g GUID) string {
	switch g {
	case GUID{}:
		return ModeRaw
	case PFNGUID:
		return ModeFSDAX
	case DAXGUID:
		return ModeDevDAX
	case BTTGUID, BTT2GUID:
		return ModeSector
	}
	return ""
}
