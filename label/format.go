package label

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/nvdimm-backend/nvdimm-backend/internal/fletcher64"
)

// On-media constants (Linux drivers/nvdimm/label.h).
const (
	// IndexHeaderSize is the fixed part of an index block, before the
	// free bitmap.
	IndexHeaderSize = 72
	// indexAlign is the granule of index block sizes.
	indexAlign = 256
	// MinAreaSize is the smallest area that holds two index blocks and
	// two labels (Linux ND_LABEL_MIN_SIZE).
	MinAreaSize = 1024
	// MaxAreaSize bounds what Parse reads into memory. Linux keeps the
	// area size in a u32; QEMU areas are 128 KiB unless asked otherwise.
	MaxAreaSize = 256 << 20

	// LabelSizeV11 and LabelSizeV12 are the label slot sizes of the two
	// versions.
	LabelSizeV11 = 128
	LabelSizeV12 = 256

	// Label flags.
	FlagROLabel  = 0x1
	FlagLocal    = 0x2
	FlagBTT      = 0x4
	FlagUpdating = 0x8

	indexChecksumOff = 64
	labelChecksumOff = 248
)

// IndexSignature is the 16-byte signature of an index block.
var IndexSignature = [16]byte{'N', 'A', 'M', 'E', 'S', 'P', 'A', 'C', 'E', '_', 'I', 'N', 'D', 'E', 'X', 0}

// Version is a label format version: "1.1" (128-byte labels) or "1.2"
// (256-byte labels).
type Version string

// The two versions.
const (
	V11 Version = "1.1"
	V12 Version = "1.2"
)

// ParseVersion accepts "1.1", "v1.1", "1.2", "v1.2".
func ParseVersion(s string) (Version, error) {
	switch s {
	case "1.1", "v1.1":
		return V11, nil
	case "1.2", "v1.2", "":
		return V12, nil
	}
	return "", fmt.Errorf("label version %q: want 1.1 or 1.2", s)
}

// LabelSize is the slot size of the version.
func (v Version) LabelSize() int {
	if v == V11 {
		return LabelSizeV11
	}
	return LabelSizeV12
}

func versionOf(labelSize int) Version {
	if labelSize == LabelSizeV11 {
		return V11
	}
	return V12
}

// Geometry is the layout of a label area for one label size: the index
// block size and the number of slots, computed exactly as Linux
// (sizeof_namespace_index, nvdimm_num_label_slots) and ndctl do.
type Geometry struct {
	AreaSize  int64  `json:"area_size"`
	LabelSize int    `json:"label_size"`
	IndexSize int64  `json:"index_size"`
	NSlot     uint32 `json:"nslot"`
}

func indexSizeFor(nslot int64) int64 {
	n := IndexHeaderSize + (nslot+7)/8
	return (n + indexAlign - 1) / indexAlign * indexAlign
}

// NewGeometry computes the layout of an area of areaSize bytes holding
// labelSize-byte labels (128 or 256).
func NewGeometry(areaSize int64, labelSize int) (Geometry, error) {
	if labelSize != LabelSizeV11 && labelSize != LabelSizeV12 {
		return Geometry{}, fmt.Errorf("label size %d: want 128 or 256", labelSize)
	}
	if areaSize < MinAreaSize || areaSize > MaxAreaSize {
		return Geometry{}, fmt.Errorf("label area size %d: want %d to %d bytes", areaSize, MinAreaSize, MaxAreaSize)
	}
	z := int64(labelSize)
	i0 := indexSizeFor(areaSize / z)
	nslot := (areaSize - 2*i0) / z
	i := indexSizeFor(nslot)
	if nslot < 2 || 2*i > areaSize-nslot*z {
		return Geometry{}, fmt.Errorf("label area size %d is too small for two index blocks and two %d-byte labels", areaSize, labelSize)
	}
	return Geometry{AreaSize: areaSize, LabelSize: labelSize, IndexSize: i, NSlot: uint32(nslot)}, nil
}

// Version is the format version of the geometry's label size.
func (g Geometry) Version() Version { return versionOf(g.LabelSize) }

// IndexOffset is the area offset of index block i (0 or 1).
func (g Geometry) IndexOffset(i int) int64 { return int64(i) * g.IndexSize }

// SlotOffset is the area offset of label slot k.
func (g Geometry) SlotOffset(k uint32) int64 {
	return 2*g.IndexSize + int64(k)*int64(g.LabelSize)
}

// Index is one index block: the 72-byte header and the free bitmap that
// pads it to the index size.
type Index struct {
	Signature      [16]byte
	Flags          [3]byte
	LabelSizeShift uint8 // label size = 128 << shift; read only for version >= 1.2
	Seq            uint32
	MyOff          uint64
	MySize         uint64
	OtherOff       uint64
	LabelOff       uint64
	NSlot          uint32
	Major          uint16
	Minor          uint16
	Checksum       uint64
	// Free is the bitmap: bit k (byte k/8, bit k%8) set means slot k is
	// free. It holds every byte after the header.
	Free []byte
}

// MarshalBinary encodes x as 72 + len(x.Free) bytes.
func (x *Index) MarshalBinary() ([]byte, error) {
	b := make([]byte, IndexHeaderSize+len(x.Free))
	x.put(b)
	return b, nil
}

func (x *Index) put(b []byte) {
	le := binary.LittleEndian
	copy(b[0:16], x.Signature[:])
	copy(b[16:19], x.Flags[:])
	b[19] = x.LabelSizeShift
	le.PutUint32(b[20:], x.Seq)
	le.PutUint64(b[24:], x.MyOff)
	le.PutUint64(b[32:], x.MySize)
	le.PutUint64(b[40:], x.OtherOff)
	le.PutUint64(b[48:], x.LabelOff)
	le.PutUint32(b[56:], x.NSlot)
	le.PutUint16(b[60:], x.Major)
	le.PutUint16(b[62:], x.Minor)
	le.PutUint64(b[64:], x.Checksum)
	copy(b[IndexHeaderSize:], x.Free)
}

// UnmarshalBinary decodes a whole index block: at least the header, and a
// length that is a multiple of 8 (the index size).
func (x *Index) UnmarshalBinary(b []byte) error {
	if len(b) < IndexHeaderSize || len(b)%8 != 0 {
		return fmt.Errorf("index block: %d bytes, want at least %d and a multiple of 8", len(b), IndexHeaderSize)
	}
	le := binary.LittleEndian
	copy(x.Signature[:], b[0:16])
	copy(x.Flags[:], b[16:19])
	x.LabelSizeShift = b[19]
	x.Seq = le.Uint32(b[20:])
	x.MyOff = le.Uint64(b[24:])
	x.MySize = le.Uint64(b[32:])
	x.OtherOff = le.Uint64(b[40:])
	x.LabelOff = le.Uint64(b[48:])
	x.NSlot = le.Uint32(b[56:])
	x.Major = le.Uint16(b[60:])
	x.Minor = le.Uint16(b[62:])
	x.Checksum = le.Uint64(b[64:])
	x.Free = append(x.Free[:0], b[IndexHeaderSize:]...)
	return nil
}

// ComputeChecksum returns the Fletcher-64 of the encoded block with the
// checksum field taken as zero.
func (x *Index) ComputeChecksum() uint64 {
	b, _ := x.MarshalBinary()
	s, _ := fletcher64.SumSkipping(b, indexChecksumOff)
	return s
}

// Seal stores the computed checksum.
func (x *Index) Seal() { x.Checksum = x.ComputeChecksum() }

// VersionNumber is major*100+minor, as Linux compares it.
func (x *Index) VersionNumber() int { return int(x.Major)*100 + int(x.Minor) }

// LabelSize is the label size the block declares (Linux: the shift is
// read only for version >= 1.2; older blocks mean 128).
func (x *Index) LabelSize() int {
	if x.VersionNumber() >= 102 {
		if x.LabelSizeShift > 16 {
			return 0
		}
		return 128 << x.LabelSizeShift
	}
	return 128
}

// IsFree reports whether slot k is marked free (out-of-range slots are
// free).
func (x *Index) IsFree(k uint32) bool {
	if int64(k/8) >= int64(len(x.Free)) {
		return true
	}
	return x.Free[k/8]&(1<<(k%8)) != 0
}

// SetFree marks slot k free or in use.
func (x *Index) SetFree(k uint32, free bool) {
	if int64(k/8) >= int64(len(x.Free)) {
		return
	}
	if free {
		x.Free[k/8] |= 1 << (k % 8)
	} else {
		x.Free[k/8] &^= 1 << (k % 8)
	}
}

// clone returns a deep copy.
func (x *Index) clone() *Index {
	c := *x
	c.Free = append([]byte(nil), x.Free...)
	return &c
}

// validate applies Linux's __nd_label_validate rules to block i under
// geometry g; raw is the block's bytes.
func validateIndex(raw []byte, x *Index, g Geometry, i int) error {
	if !bytes.Equal(x.Signature[:], IndexSignature[:]) {
		return fmt.Errorf("signature %q is not NAMESPACE_INDEX", bytes.TrimRight(x.Signature[:], "\x00"))
	}
	if ls := x.LabelSize(); ls != g.LabelSize {
		return fmt.Errorf("version %d.%d with labelsize field %d means %d-byte labels, not %d", x.Major, x.Minor, x.LabelSizeShift, ls, g.LabelSize)
	}
	sum, err := fletcher64.SumSkipping(raw, indexChecksumOff)
	if err != nil {
		return err
	}
	if sum != x.Checksum {
		return fmt.Errorf("checksum 0x%016x, computed 0x%016x", x.Checksum, sum)
	}
	if x.Seq&3 == 0 {
		return fmt.Errorf("sequence number %#x is invalid (low two bits 0)", x.Seq)
	}
	if x.MyOff != uint64(g.IndexOffset(i)) {
		return fmt.Errorf("myoff %#x, want %#x", x.MyOff, g.IndexOffset(i))
	}
	if x.OtherOff != uint64(g.IndexOffset(1-i)) {
		return fmt.Errorf("otheroff %#x, want %#x", x.OtherOff, g.IndexOffset(1-i))
	}
	if x.LabelOff != uint64(2*g.IndexSize) {
		return fmt.Errorf("labeloff %#x, want %#x", x.LabelOff, 2*g.IndexSize)
	}
	if x.MySize > uint64(g.IndexSize) || x.MySize < IndexHeaderSize {
		return fmt.Errorf("mysize %#x, want %d to %d", x.MySize, IndexHeaderSize, g.IndexSize)
	}
	if uint64(x.NSlot)*uint64(g.LabelSize)+2*uint64(g.IndexSize) > uint64(g.AreaSize) {
		return fmt.Errorf("nslot %d does not fit a %d-byte area", x.NSlot, g.AreaSize)
	}
	return nil
}

// nextSeq is the sequence successor 1 -> 2 -> 3 -> 1.
func nextSeq(s uint32) uint32 {
	s &= 3
	if s == 0 {
		return 1
	}
	return s%3 + 1
}

// prevSeq is the inverse of nextSeq.
func prevSeq(s uint32) uint32 {
	switch s & 3 {
	case 1:
		return 3
	case 2:
		return 1
	}
	return 2
}

// bestSeq is Linux's best_seq.
func bestSeq(a, b uint32) uint32 {
	a &= 3
	b &= 3
	switch {
	case a == 0 || a == b:
		return b
	case b == 0:
		return a
	case nextSeq(a) == b:
		return b
	}
	return a
}

// Label is one namespace label. Size is 128 (v1.1: the fields after Align
// are not stored) or 256 (v1.2).
type Label struct {
	Size            int
	UUID            UUID
	Name            [64]byte
	Flags           uint32
	NLabel          uint16
	Position        uint16
	ISetCookie      uint64
	LBASize         uint64
	DPA             uint64
	RawSize         uint64
	Slot            uint32
	Align           uint8
	Reserved        [3]byte
	TypeGUID        GUID
	AbstractionGUID GUID
	Reserved2       [88]byte
	Checksum        uint64
}

// MarshalBinary encodes l as l.Size bytes.
func (l *Label) MarshalBinary() ([]byte, error) {
	if l.Size != LabelSizeV11 && l.Size != LabelSizeV12 {
		return nil, fmt.Errorf("label: size %d, want 128 or 256", l.Size)
	}
	b := make([]byte, l.Size)
	le := binary.LittleEndian
	copy(b[0:16], l.UUID[:])
	copy(b[16:80], l.Name[:])
	le.PutUint32(b[80:], l.Flags)
	le.PutUint16(b[84:], l.NLabel)
	le.PutUint16(b[86:], l.Position)
	le.PutUint64(b[88:], l.ISetCookie)
	le.PutUint64(b[96:], l.LBASize)
	le.PutUint64(b[104:], l.DPA)
	le.PutUint64(b[112:], l.RawSize)
	le.PutUint32(b[120:], l.Slot)
	b[124] = l.Align
	copy(b[125:128], l.Reserved[:])
	if l.Size == LabelSizeV12 {
		copy(b[128:144], l.TypeGUID[:])
		copy(b[144:160], l.AbstractionGUID[:])
		copy(b[160:248], l.Reserved2[:])
		le.PutUint64(b[248:], l.Checksum)
	}
	return b, nil
}

// UnmarshalBinary decodes a 128- or 256-byte label.
func (l *Label) UnmarshalBinary(b []byte) error {
	if len(b) != LabelSizeV11 && len(b) != LabelSizeV12 {
		return fmt.Errorf("label: %d bytes, want 128 or 256", len(b))
	}
	le := binary.LittleEndian
	*l = Label{Size: len(b)}
	copy(l.UUID[:], b[0:16])
	copy(l.Name[:], b[16:80])
	l.Flags = le.Uint32(b[80:])
	l.NLabel = le.Uint16(b[84:])
	l.Position = le.Uint16(b[86:])
	l.ISetCookie = le.Uint64(b[88:])
	l.LBASize = le.Uint64(b[96:])
	l.DPA = le.Uint64(b[104:])
	l.RawSize = le.Uint64(b[112:])
	l.Slot = le.Uint32(b[120:])
	l.Align = b[124]
	copy(l.Reserved[:], b[125:128])
	if len(b) == LabelSizeV12 {
		copy(l.TypeGUID[:], b[128:144])
		copy(l.AbstractionGUID[:], b[144:160])
		copy(l.Reserved2[:], b[160:248])
		l.Checksum = le.Uint64(b[248:])
	}
	return nil
}

// ComputeChecksum returns the v1.2 checksum of l (0 for v1.1 labels,
// which have none).
func (l *Label) ComputeChecksum() uint64 {
	if l.Size != LabelSizeV12 {
		return 0
	}
	b, _ := l.MarshalBinary()
	s, _ := fletcher64.SumSkipping(b, labelChecksumOff)
	return s
}

// Seal stores the computed checksum (v1.2).
func (l *Label) Seal() { l.Checksum = l.ComputeChecksum() }

// NameString is the name up to its first NUL.
func (l *Label) NameString() string {
	n := bytes.IndexByte(l.Name[:], 0)
	if n < 0 {
		n = len(l.Name)
	}
	return string(l.Name[:n])
}

// SetName stores name; it must fit 63 bytes plus the NUL.
func (l *Label) SetName(name string) error {
	if len(name) > 63 {
		return fmt.Errorf("name %q: %d bytes, at most 63", name, len(name))
	}
	if bytes.IndexByte([]byte(name), 0) >= 0 {
		return fmt.Errorf("name %q contains a NUL byte", name)
	}
	l.Name = [64]byte{}
	copy(l.Name[:], name)
	return nil
}

// Mode is the namespace mode the label records: v1.2 from the
// abstraction GUID, v1.1 "sector" with the BTT flag and otherwise "raw"
// (v1.1 does not record fsdax/devdax; read the info block for that). An
// unknown abstraction GUID gives "".
func (l *Label) Mode() string {
	if l.Size == LabelSizeV12 {
		return GUIDMode(l.AbstractionGUID)
	}
	if l.Flags&FlagBTT != 0 {
		return ModeSector
	}
	return ModeRaw
}
