package acpi

import (
	"errors"
	"fmt"
)

// HeaderSize is the size of the NFIT header: the 36-byte ACPI table
// header plus 4 reserved bytes.
const HeaderSize = 40

// MaxTableSize bounds the tables ParseNFIT accepts (16 MiB; QEMU's FIT
// buffer holds at most a few KiB per DIMM).
const MaxTableSize = 16 << 20

// Header is the ACPI system description table header followed by the
// NFIT's 4 reserved bytes.
type Header struct {
	Signature       [4]byte
	Length          uint32
	Revision        uint8
	Checksum        uint8
	OEMID           [6]byte
	OEMTableID      [8]byte
	OEMRevision     uint32
	CreatorID       [4]byte
	CreatorRevision uint32
	Reserved        uint32
}

// Fields lists the header fields for dumps and comparisons.
func (h *Header) Fields() []Field {
	return []Field{
		{Key: "signature", Name: "Signature", Off: 0, Size: 4, Value: string(h.Signature[:])},
		{Key: "length", Name: "Table Length", Off: 4, Size: 4, Value: uint64(h.Length)},
		{Key: "revision", Name: "Revision", Off: 8, Size: 1, Value: uint64(h.Revision)},
		{Key: "checksum", Name: "Checksum", Off: 9, Size: 1, Value: uint64(h.Checksum)},
		{Key: "oem_id", Name: "OEM ID", Off: 10, Size: 6, Value: string(h.OEMID[:])},
		{Key: "oem_table_id", Name: "OEM Table ID", Off: 16, Size: 8, Value: string(h.OEMTableID[:])},
		{Key: "oem_revision", Name: "OEM Revision", Off: 24, Size: 4, Value: uint64(h.OEMRevision)},
		{Key: "creator_id", Name: "Creator ID", Off: 28, Size: 4, Value: string(h.CreatorID[:])},
		{Key: "creator_revision", Name: "Creator Revision", Off: 32, Size: 4, Value: uint64(h.CreatorRevision)},
		{Key: "reserved", Name: "Reserved", Off: 36, Size: 4, Value: uint64(h.Reserved)},
	}
}

// NFIT is a decoded NVDIMM Firmware Interface Table.
type NFIT struct {
	Header     Header
	Structures []Structure

	// Set by ParseNFIT: whether the checksum byte of the parsed bytes was
	// right, and where each structure began (table offsets).
	ChecksumOK bool
	Offsets    []int
}

// Checksum returns the byte that makes b sum to zero, computed as if b[9]
// (the checksum field) were zero.
func Checksum(b []byte) uint8 {
	var sum uint8
	for i, c := range b {
		if i != 9 {
			sum += c
		}
	}
	return -sum
}

// ParseNFIT decodes a whole NFIT (header included). Sub-structures of
// known types whose bytes do not decode are kept as *RawStructure with
// the reason, so that Validate can report them the way Linux would treat
// them; an error is returned only when the table cannot be walked at all
// (short or oversized buffer, wrong signature, Length disagreeing with
// the buffer, a structure shorter than its header or running past the
// end).
func ParseNFIT(b []byte) (*NFIT, error) {
	if len(b) < HeaderSize {
		return nil, fmt.Errorf("acpi: NFIT is %d bytes, shorter than its %d-byte header", len(b), HeaderSize)
	}
	if len(b) > MaxTableSize {
		return nil, fmt.Errorf("acpi: NFIT is %d bytes, more than the %d this tool accepts", len(b), MaxTableSize)
	}
	n := &NFIT{}
	h := &n.Header
	copy(h.Signature[:], b[0:4])
	h.Length = le.Uint32(b[4:])
	h.Revision = b[8]
	h.Checksum = b[9]
	copy(h.OEMID[:], b[10:16])
	copy(h.OEMTableID[:], b[16:24])
	h.OEMRevision = le.Uint32(b[24:])
	copy(h.CreatorID[:], b[28:32])
	h.CreatorRevision = le.Uint32(b[32:])
	h.Reserved = le.Uint32(b[36:])
	if string(h.Signature[:]) != "NFIT" {
		return nil, fmt.Errorf("acpi: signature %q at offset 0, want \"NFIT\"", h.Signature[:])
	}
	if uint64(h.Length) != uint64(len(b)) {
		return nil, fmt.Errorf("acpi: NFIT header length field (offset 4) is %d but the table has %d bytes", h.Length, len(b))
	}
	n.ChecksumOK = Checksum(b) == h.Checksum
	for off := HeaderSize; off < len(b); {
		if len(b)-off < 4 {
			return nil, fmt.Errorf("acpi: %d trailing bytes at offset %#x, too short for a structure header", len(b)-off, off)
		}
		typ := le.Uint16(b[off:])
		l := int(le.Uint16(b[off+2:]))
		if l < 4 {
			return nil, fmt.Errorf("acpi: structure type %d at offset %#x has length %d (Linux stops parsing at a zero length)", typ, off, l)
		}
		if off+l > len(b) {
			return nil, fmt.Errorf("acpi: structure type %d at offset %#x has length %d, running %d bytes past the table end", typ, off, l, off+l-len(b))
		}
		s, err := decodeStructure(b[off : off+l])
		if err != nil {
			s = &RawStructure{StructType: typ, Bytes: append([]byte(nil), b[off:off+l]...), Problem: err.Error()}
		}
		n.Structures = append(n.Structures, s)
		n.Offsets = append(n.Offsets, off)
		off += l
	}
	return n, nil
}

// MarshalBinary encodes the table, recomputing Length and Checksum. Other
// header fields are written as they are.
func (n *NFIT) MarshalBinary() ([]byte, error) {
	b := make([]byte, HeaderSize, 256)
	var errs []error
	for i, s := range n.Structures {
		sb, err := s.MarshalBinary()
		if err != nil {
			errs = append(errs, fmt.Errorf("structure %d (%s): %w", i, s.Kind(), err))
			continue
		}
		b = append(b, sb...)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("acpi: encode NFIT: %w", err)
	}
	if len(b) > MaxTableSize {
		return nil, fmt.Errorf("acpi: encode NFIT: %d bytes exceeds %d", len(b), MaxTableSize)
	}
	h := n.Header
	copy(b[0:4], h.Signature[:])
	le.PutUint32(b[4:], uint32(len(b)))
	b[8] = h.Revision
	copy(b[10:16], h.OEMID[:])
	copy(b[16:24], h.OEMTableID[:])
	le.PutUint32(b[24:], h.OEMRevision)
	copy(b[28:32], h.CreatorID[:])
	le.PutUint32(b[32:], h.CreatorRevision)
	le.PutUint32(b[36:], h.Reserved)
	b[9] = Checksum(b)
	return b, nil
}

// offset returns the table offset of structure i, or -1 when unknown
// (a table built in memory).
func (n *NFIT) offset(i int) int {
	if i < len(n.Offsets) {
		return n.Offsets[i]
	}
	return -1
}

// SPAs, MemDevs and ControlRegions return the decoded structures of one
// type, in table order.
func (n *NFIT) SPAs() []*SPARange { return structsOf[*SPARange](n) }

// MemDevs returns the memory-device maps in table order.
func (n *NFIT) MemDevs() []*MemDevMap { return structsOf[*MemDevMap](n) }

// ControlRegions returns the control regions in table order.
func (n *NFIT) ControlRegions() []*ControlRegion { return structsOf[*ControlRegion](n) }

func structsOf[T Structure](n *NFIT) []T {
	var out []T
	for _, s := range n.Structures {
		if t, ok := s.(T); ok {
			out = append(out, t)
		}
	}
	return out
}

// findDCR returns the first control region with the given index, the one
// Linux uses.
func (n *NFIT) findDCR(index uint16) *ControlRegion {
	for _, d := range n.ControlRegions() {
		if d.Index == index {
			return d
		}
	}
	return nil
}

func (n *NFIT) findSPA(index uint16) *SPARange {
	for _, s := range n.SPAs() {
		if s.Index == index {
			return s
		}
	}
	return nil
}
