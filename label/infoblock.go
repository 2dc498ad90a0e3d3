package label

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"

	"github.com/nvdimm-backend/nvdimm-backend/internal/fletcher64"
)

// Info block constants (Linux drivers/nvdimm/pfn.h, pfn_devs.c).
const (
	// InfoBlockSize is the size of struct nd_pfn_sb.
	InfoBlockSize = 4096
	// InfoBlockOffset is where the block sits in the namespace (SZ_4K).
	InfoBlockOffset = 4096
	// infoReserve is the namespace start the kernel keeps before the
	// memmap (SZ_8K: 4 KiB unused, then the info block).
	infoReserve = 8192
	// PFNModeRAM keeps the memmap in RAM; PFNModePMEM in the namespace.
	PFNModeRAM  = 1
	PFNModePMEM = 2
	// MaxStructPageSize is what the kernel reserves per page of memmap
	// (MAX_STRUCT_PAGE_SIZE).
	MaxStructPageSize = 64
	// DefaultInfoAlign is the kernel's default for fsdax/devdax: the PMD
	// size on x86-64.
	DefaultInfoAlign = 2 << 20
	// compatAlign is memremap_compat_align() on x86-64 (SUBSECTION_SIZE).
	compatAlign = 2 << 20
	pageSize    = 4096

	infoChecksumOff = InfoBlockSize - 8
)

// Info block signatures.
var (
	PFNSignature = [16]byte{'N', 'V', 'D', 'I', 'M', 'M', '_', 'P', 'F', 'N', '_', 'I', 'N', 'F', 'O', 0}
	DAXSignature = [16]byte{'N', 'V', 'D', 'I', 'M', 'M', '_', 'D', 'A', 'X', '_', 'I', 'N', 'F', 'O', 0}
)

// ErrNoInfoBlock means no PFN/DAX signature was found at namespace
// offset 4 KiB.
var ErrNoInfoBlock = errors.New("no PFN or DAX info block")

// InfoBlock is struct nd_pfn_sb (version 1.4): the 4 KiB superblock at
// namespace offset 4 KiB that makes a namespace fsdax (PFN) or devdax
// (DAX).
type InfoBlock struct {
	Signature      [16]byte
	UUID           UUID
	ParentUUID     UUID
	Flags          uint32
	VersionMajor   uint16
	VersionMinor   uint16
	DataOff        uint64 // relative to the namespace start (+ start_pad)
	NPFNs          uint64
	Mode           uint32
	StartPad       uint32 // minor >= 1
	EndTrunc       uint32 // minor >= 1
	Align          uint32 // minor >= 2
	PageSize       uint32 // minor >= 4
	PageStructSize uint16 // minor >= 4
	Padding        [3994]byte
	Checksum       uint64
}

// MarshalBinary encodes b as exactly 4096 bytes.
func (b *InfoBlock) MarshalBinary() ([]byte, error) {
	out := make([]byte, InfoBlockSize)
	le := binary.LittleEndian
	copy(out[0:16], b.Signature[:])
	copy(out[16:32], b.UUID[:])
	copy(out[32:48], b.ParentUUID[:])
	le.PutUint32(out[48:], b.Flags)
	le.PutUint16(out[52:], b.VersionMajor)
	le.PutUint16(out[54:], b.VersionMinor)
	le.PutUint64(out[56:], b.DataOff)
	le.PutUint64(out[64:], b.NPFNs)
	le.PutUint32(out[72:], b.Mode)
	le.PutUint32(out[76:], b.StartPad)
	le.PutUint32(out[80:], b.EndTrunc)
	le.PutUint32(out[84:], b.Align)
	le.PutUint32(out[88:], b.PageSize)
	le.PutUint16(out[92:], b.PageStructSize)
	copy(out[94:4088], b.Padding[:])
	le.PutUint64(out[4088:], b.Checksum)
	return out, nil
}

// UnmarshalBinary decodes exactly 4096 bytes.
func (b *InfoBlock) UnmarshalBinary(in []byte) error {
	if len(in) != InfoBlockSize {
		return fmt.Errorf("info block: %d bytes, want %d", len(in), InfoBlockSize)
	}
	le := binary.LittleEndian
	copy(b.Signature[:], in[0:16])
	copy(b.UUID[:], in[16:32])
	copy(b.ParentUUID[:], in[32:48])
	b.Flags = le.Uint32(in[48:])
	b.VersionMajor = le.Uint16(in[52:])
	b.VersionMinor = le.Uint16(in[54:])
	b.DataOff = le.Uint64(in[56:])
	b.NPFNs = le.Uint64(in[64:])
	b.Mode = le.Uint32(in[72:])
	b.StartPad = le.Uint32(in[76:])
	b.EndTrunc = le.Uint32(in[80:])
	b.Align = le.Uint32(in[84:])
	b.PageSize = le.Uint32(in[88:])
	b.PageStructSize = le.Uint16(in[92:])
	copy(b.Padding[:], in[94:4088])
	b.Checksum = le.Uint64(in[4088:])
	return nil
}

// ComputeChecksum is the Fletcher-64 of the block with the checksum
// field taken as zero (nd_sb_checksum).
func (b *InfoBlock) ComputeChecksum() uint64 {
	raw, _ := b.MarshalBinary()
	s, _ := fletcher64.SumSkipping(raw, infoChecksumOff)
	return s
}

// Kind is "fsdax" for a PFN block, "devdax" for a DAX block, "" else.
func (b *InfoBlock) Kind() string {
	switch b.Signature {
	case PFNSignature:
		return ModeFSDAX
	case DAXSignature:
		return ModeDevDAX
	}
	return ""
}

// InfoParams are the inputs of NewInfoBlock.
type InfoParams struct {
	Mode       string // fsdax or devdax
	UUID       UUID   // the pfn/dax device's uuid; zero: random
	ParentUUID UUID   // the namespace's uuid; zero for label-less devices
	// Size is the namespace size in bytes.
	Size uint64
	// Align is the mapping alignment (0: 2 MiB). devdax needs 4 KiB,
	// 2 MiB or 1 GiB.
	Align uint64
	// Start is the namespace's guest-physical start modulo Align, when
	// known; QEMU places DIMMs aligned, so 0 is right there.
	Start uint64
}

// NewInfoBlock derives an info block exactly as the kernel's
// nd_pfn_init does for PFN_MODE_PMEM (the memmap kept in the namespace):
// npfns0 = (size - 8K)/4K, dataoff = ALIGN(start + 8K + 64*npfns0,
// align) - start, end_trunc = (start+size) mod align, npfns = (size -
// dataoff - end_trunc)/4K, version 1.4, page size 4 KiB, struct page 64.
func NewInfoBlock(p InfoParams) (*InfoBlock, error) {
	b := &InfoBlock{VersionMajor: 1, VersionMinor: 4, Mode: PFNModePMEM, PageSize: pageSize, PageStructSize: MaxStructPageSize}
	switch p.Mode {
	case ModeFSDAX:
		b.Signature = PFNSignature
	case ModeDevDAX:
		b.Signature = DAXSignature
	default:
		return nil, fmt.Errorf("info block: mode %q, want fsdax or devdax", p.Mode)
	}
	if p.Align == 0 {
		p.Align = DefaultInfoAlign
	}
	if !supportedAlign(p.Align) {
		return nil, fmt.Errorf("info block: align %d, want 4 KiB, 2 MiB or 1 GiB", p.Align)
	}
	if p.Start%compatAlign != 0 {
		return nil, fmt.Errorf("info block: namespace start %#x is not 2 MiB aligned (the kernel refuses it)", p.Start)
	}
	if p.Size <= infoReserve || p.Size%pageSize != 0 {
		return nil, fmt.Errorf("info block: namespace size %d is not a multiple of 4 KiB above 8 KiB", p.Size)
	}
	var err error
	if p.UUID.IsZero() {
		if p.UUID, err = NewUUID(); err != nil {
			return nil, err
		}
	}
	align := max(p.Align, compatAlign)
	start, size := p.Start, p.Size
	npfns := (size - infoReserve) / pageSize
	endTrunc := (start + size) % align
	off := alignUp(start+infoReserve+MaxStructPageSize*npfns, align) - start
	if off >= size-endTrunc {
		return nil, fmt.Errorf("info block: a %d-byte namespace cannot hold its memmap at %d-byte alignment", size, align)
	}
	b.UUID, b.ParentUUID = p.UUID, p.ParentUUID
	b.DataOff = off
	b.NPFNs = (size - off - endTrunc) / pageSize
	b.EndTrunc = uint32(endTrunc)
	b.Align = uint32(p.Align)
	b.Checksum = b.ComputeChecksum()
	return b, nil
}

func alignUp(v, a uint64) uint64 { return (v + a - 1) / a * a }

func supportedAlign(a uint64) bool { return a == 4096 || a == 2<<20 || a == 1<<30 }

// Validate applies the kernel's nd_pfn_validate checks for a namespace
// of nsSize bytes whose uuid is parent (zero for label-less devices) and
// whose physical start modulo 2 MiB is 0.
func (b *InfoBlock) Validate(nsSize uint64, parent UUID) error {
	if b.Kind() == "" {
		return fmt.Errorf("info block: signature %q: %w", bytes.TrimRight(b.Signature[:], "\x00"), ErrNoInfoBlock)
	}
	if sum := b.ComputeChecksum(); sum != b.Checksum {
		return fmt.Errorf("info block: checksum 0x%016x, computed 0x%016x", b.Checksum, sum)
	}
	if b.ParentUUID != parent {
		return fmt.Errorf("info block: parent_uuid %s is not the namespace's %s", b.ParentUUID, parent)
	}
	align, startPad, endTrunc := uint64(b.Align), uint64(b.StartPad), uint64(b.EndTrunc)
	if b.VersionMinor < 1 {
		startPad, endTrunc = 0, 0
	}
	if b.VersionMinor < 2 {
		align = 0
	}
	pgSize, structSize := uint64(b.PageSize), b.PageStructSize
	if b.VersionMinor < 4 {
		pgSize, structSize = pageSize, 64
	}
	if b.Mode != PFNModeRAM && b.Mode != PFNModePMEM {
		return fmt.Errorf("info block: mode %d, want 1 (ram) or 2 (pmem)", b.Mode)
	}
	if align == 0 && b.DataOff != 0 {
		align = 1 << (bits.Len64(b.DataOff) - 1)
	}
	if b.Mode == PFNModePMEM && pgSize > pageSize {
		return fmt.Errorf("info block: page size %d exceeds 4 KiB", pgSize)
	}
	if b.Mode == PFNModePMEM && structSize < MaxStructPageSize {
		return fmt.Errorf("info block: struct page size %d below %d", structSize, MaxStructPageSize)
	}
	if b.Signature == DAXSignature && !supportedAlign(align) {
		return fmt.Errorf("info block: devdax align %d unsupported", align)
	}
	if align > nsSize {
		return fmt.Errorf("info block: align %d exceeds the %d-byte namespace", align, nsSize)
	}
	if b.DataOff >= nsSize {
		return fmt.Errorf("info block: dataoff %d beyond the %d-byte namespace", b.DataOff, nsSize)
	}
	if (align != 0 && (b.DataOff+startPad)%align != 0) || b.DataOff%pageSize != 0 {
		return fmt.Errorf("info block: dataoff %#x misaligned to %#x", b.DataOff, align)
	}
	if startPad%compatAlign != 0 {
		return fmt.Errorf("info block: start_pad %#x misaligned", startPad)
	}
	if endTrunc > nsSize || (nsSize-endTrunc)%compatAlign != 0 {
		return fmt.Errorf("info block: end_trunc %#x leaves an end misaligned to 2 MiB", endTrunc)
	}
	if startPad+endTrunc >= nsSize || b.DataOff >= nsSize-startPad-endTrunc {
		return fmt.Errorf("info block: dataoff %#x leaves no data in the %d-byte namespace", b.DataOff, nsSize)
	}
	return nil
}

// ReadInfoBlock reads the block at namespace offset 4 KiB of the
// namespace starting at nsStart in r. It returns ErrNoInfoBlock (wrapped)
// when neither signature is there.
func ReadInfoBlock(r io.ReaderAt, nsStart int64) (*InfoBlock, error) {
	buf := make([]byte, InfoBlockSize)
	if _, err := r.ReadAt(buf, nsStart+InfoBlockOffset); err != nil {
		return nil, fmt.Errorf("reading info block at offset %d: %w", nsStart+InfoBlockOffset, err)
	}
	b := new(InfoBlock)
	if err := b.UnmarshalBinary(buf); err != nil {
		return nil, err
	}
	if b.Kind() == "" {
		return nil, fmt.Errorf("offset %d: %w", nsStart+InfoBlockOffset, ErrNoInfoBlock)
	}
	return b, nil
}

// WriteInfoBlock writes b at namespace offset 4 KiB of the namespace
// starting at nsStart.
func WriteInfoBlock(w io.WriterAt, nsStart int64, b *InfoBlock) error {
	raw, err := b.MarshalBinary()
	if err != nil {
		return err
	}
	if _, err := w.WriteAt(raw, nsStart+InfoBlockOffset); err != nil {
		return fmt.Errorf("writing info block at offset %d: %w", nsStart+InfoBlockOffset, err)
	}
	return nil
}

// ClearInfoBlock zeroes the 4 KiB at namespace offset 4 KiB, so a raw
// namespace does not inherit a stale PFN/DAX block.
func ClearInfoBlock(w io.WriterAt, nsStart int64) error {
	if _, err := w.WriteAt(make([]byte, InfoBlockSize), nsStart+InfoBlockOffset); err != nil {
		return fmt.Errorf("clearing info block at offset %d: %w", nsStart+InfoBlockOffset, err)
	}
	return nil
}
