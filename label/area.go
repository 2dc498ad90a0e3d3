package label

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/nvdimm-backend/nvdimm-backend/internal/fletcher64"
)

// Block is one decoded index block and why it is not valid (Err nil
// means it passed every check Linux applies).
type Block struct {
	Offset int64
	Index  *Index
	Err    error
}

// Area is a parsed label area: a snapshot of its bytes and what Linux
// would make of them.
type Area struct {
	// Size is the area size in bytes.
	Size int64
	// Labelled reports whether at least one index block is valid.
	Labelled bool
	// Geometry is the layout under the label size that validated (or,
	// for an unlabelled area, the v1.2 layout Linux would initialise).
	Geometry Geometry
	// Blocks are both index blocks decoded under Geometry.
	Blocks [2]Block
	// Current is the current index block (0 or 1), -1 if unlabelled.
	Current int
	// Probe explains, for an unlabelled area, why each block failed
	// under each label size.
	Probe []error

	raw    []byte      // the image, or a prefix of it (see Parse)
	live   []SlotLabel // LiveSlots, decoded once
	ns     []Namespace
	nsDone bool
}

// ReadArea reads a whole area of size bytes from r.
func ReadArea(r io.ReaderAt, size int64) ([]byte, error) {
	if size < MinAreaSize || size > MaxAreaSize {
		return nil, fmt.Errorf("label area size %d: want %d to %d bytes", size, MinAreaSize, MaxAreaSize)
	}
	buf := make([]byte, size)
	n, err := r.ReadAt(buf, 0)
	if n == len(buf) {
		return buf, nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return nil, fmt.Errorf("reading label area (%d of %d bytes): %w", n, size, err)
}

// Parse reads and decodes the area of size bytes behind r. Only I/O
// errors and impossible sizes are errors; anything wrong with the
// content is recorded in the result (see Check). The result keeps a copy
// of the index blocks and of the slots up to the last live one; use
// ParseBytes to keep the whole image (dump).
func Parse(r io.ReaderAt, size int64) (*Area, error) {
	if size < MinAreaSize || size > MaxAreaSize {
		return nil, fmt.Errorf("label area size %d: want %d to %d bytes", size, MinAreaSize, MaxAreaSize)
	}
	bp, _ := bufPool.Get().(*[]byte)
	if bp == nil || int64(cap(*bp)) < size {
		b := make([]byte, size)
		bp = &b
	}
	buf := (*bp)[:size]
	defer bufPool.Put(bp)
	n, err := r.ReadAt(buf, 0)
	if n != len(buf) {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("reading label area (%d of %d bytes): %w", n, size, err)
	}
	a, err := ParseBytes(buf)
	if err != nil {
		return nil, err
	}
	// Keep only what the Area needs after buf goes back to the pool.
	keep := 2 * a.Geometry.IndexSize
	if a.Labelled && len(a.live) > 0 {
		keep = a.Geometry.SlotOffset(a.live[len(a.live)-1].Slot + 1)
	}
	if !a.Labelled {
		keep = size // diagnostics of unlabelled areas look at every byte
	}
	a.raw = append([]byte(nil), buf[:keep]...)
	return a, nil
}

var bufPool sync.Pool

// ParseBytes decodes an area image held in memory. The Area keeps buf.
func ParseBytes(buf []byte) (*Area, error) {
	size := int64(len(buf))
	if size < MinAreaSize || size > MaxAreaSize {
		return nil, fmt.Errorf("label area size %d: want %d to %d bytes", size, MinAreaSize, MaxAreaSize)
	}
	a := &Area{Size: size, Current: -1, raw: buf}
	// Linux probes 128-byte labels first, then 256 (nd_label_validate).
	for _, z := range []int{LabelSizeV11, LabelSizeV12} {
		g, err := NewGeometry(size, z)
		if err != nil {
			a.Probe = append(a.Probe, fmt.Errorf("%d-byte labels: %w", z, err))
			continue
		}
		blocks := decodeBlocks(buf, g)
		cur := pickCurrent(blocks)
		if cur >= 0 {
			a.Labelled, a.Geometry, a.Blocks, a.Current, a.Probe = true, g, blocks, cur, nil
			a.live = a.decodeLive()
			return a, nil
		}
		for i, b := range blocks {
			a.Probe = append(a.Probe, fmt.Errorf("v%s index block %d (offset %d): %w", g.Version(), i, b.Offset, b.Err))
		}
		// Unlabelled: report the v1.2 view, which Linux keeps for init.
		a.Geometry, a.Blocks = g, blocks
	}
	return a, nil
}

func decodeBlocks(buf []byte, g Geometry) [2]Block {
	var blocks [2]Block
	for i := range blocks {
		off := g.IndexOffset(i)
		raw := buf[off : off+g.IndexSize]
		x := new(Index)
		blocks[i] = Block{Offset: off, Index: x}
		if err := x.UnmarshalBinary(raw); err != nil {
			blocks[i].Err = err
			continue
		}
		blocks[i].Err = validateIndex(raw, x, g, i)
	}
	return blocks
}

func pickCurrent(b [2]Block) int {
	switch {
	case b[0].Err == nil && b[1].Err == nil:
		s1 := b[1].Index.Seq & 3
		if bestSeq(b[0].Index.Seq, b[1].Index.Seq) == s1 {
			return 1
		}
		return 0
	case b[0].Err == nil:
		return 0
	case b[1].Err == nil:
		return 1
	}
	return -1
}

// Version is "1.1" or "1.2" for a labelled area, "" otherwise.
func (a *Area) Version() Version {
	if !a.Labelled {
		return ""
	}
	return a.Geometry.Version()
}

// Raw returns the area image the Area was parsed from.
func (a *Area) Raw() []byte { return a.raw }

// CurrentIndex is the current index block, nil if unlabelled.
func (a *Area) CurrentIndex() *Index {
	if a.Current < 0 {
		return nil
	}
	return a.Blocks[a.Current].Index
}

// Blank reports whether every byte of the area is zero.
func (a *Area) Blank() bool {
	for _, c := range a.raw {
		if c != 0 {
			return false
		}
	}
	return true
}

// SlotBytes returns the raw bytes of slot k (nil if out of range).
func (a *Area) SlotBytes(k uint32) []byte {
	if a.Geometry.LabelSize == 0 || k >= a.Geometry.NSlot {
		return nil
	}
	off := a.Geometry.SlotOffset(k)
	if off+int64(a.Geometry.LabelSize) > int64(len(a.raw)) {
		return make([]byte, a.Geometry.LabelSize) // beyond the kept prefix: a free, unread slot
	}
	return a.raw[off : off+int64(a.Geometry.LabelSize)]
}

// SlotLabel is a label found in a slot, with its problem if Linux would
// not accept it (Err nil: valid).
type SlotLabel struct {
	Slot   uint32
	Offset int64
	Live   bool
	Label  Label
	Err    error
}

// DecodeSlot decodes slot k and checks it as Linux's slot_valid does.
func (a *Area) DecodeSlot(k uint32) SlotLabel {
	s := SlotLabel{Slot: k, Offset: a.Geometry.SlotOffset(k)}
	raw := a.SlotBytes(k)
	if raw == nil {
		s.Err = fmt.Errorf("slot %d: out of range", k)
		return s
	}
	if x := a.CurrentIndex(); x != nil {
		s.Live = !x.IsFree(k)
	}
	if err := s.Label.UnmarshalBinary(raw); err != nil {
		s.Err = err
		return s
	}
	s.Err = slotValid(&s.Label, raw, k)
	return s
}

func slotValid(l *Label, raw []byte, k uint32) error {
	if l.Slot != k {
		return fmt.Errorf("slot field %d, want %d", l.Slot, k)
	}
	if (l.DPA|l.RawSize)%4096 != 0 {
		return fmt.Errorf("dpa %#x / rawsize %#x not 4 KiB aligned", l.DPA, l.RawSize)
	}
	if l.Size == LabelSizeV12 {
		if sum, _ := fletcher64.SumSkipping(raw, labelChecksumOff); sum != l.Checksum {
			return fmt.Errorf("checksum 0x%016x, computed 0x%016x", l.Checksum, sum)
		}
	}
	return nil
}

// LiveSlots returns every slot the current index marks in use, in slot
// order, valid or not. The slice is shared; do not modify it.
func (a *Area) LiveSlots() []SlotLabel { return a.live }

func (a *Area) decodeLive() []SlotLabel {
	x := a.CurrentIndex()
	if x == nil {
		return nil
	}
	n := min(a.Geometry.NSlot, x.NSlot)
	var live []uint32
	for k := uint32(0); k < n; k++ {
		if x.Free[k/8] == 0xff {
			k |= 7
			continue
		}
		if !x.IsFree(k) {
			live = append(live, k)
		}
	}
	out := make([]SlotLabel, len(live))
	for i, k := range live {
		out[i] = a.DecodeSlot(k)
	}
	return out
}

// Namespace is a pmem namespace: the valid live labels sharing a UUID.
type Namespace struct {
	UUID   UUID
	Name   string
	Mode   string // from the labels; see Label.Mode
	Size   uint64 // sum of rawsize
	Labels []SlotLabel
}

// DPA is the start DPA of the first label (single-DIMM namespaces have
// one).
func (n *Namespace) DPA() uint64 {
	if len(n.Labels) == 0 {
		return 0
	}
	return n.Labels[0].Label.DPA
}

// Namespaces groups the valid live labels by UUID, in order of their
// first slot. The slice is computed once and shared; do not modify it.
func (a *Area) Namespaces() []Namespace {
	if a.nsDone {
		return a.ns
	}
	a.ns, a.nsDone = a.groupNamespaces(), true
	return a.ns
}

func (a *Area) groupNamespaces() []Namespace {
	var out []Namespace
	idx := map[UUID]int{}
	for _, s := range a.LiveSlots() {
		if s.Err != nil {
			continue
		}
		i, ok := idx[s.Label.UUID]
		if !ok {
			i = len(out)
			idx[s.Label.UUID] = i
			out = append(out, Namespace{UUID: s.Label.UUID, Name: s.Label.NameString(), Mode: s.Label.Mode()})
		}
		out[i].Labels = append(out[i].Labels, s)
		out[i].Size += s.Label.RawSize
	}
	for i := range out {
		sort.SliceStable(out[i].Labels, func(p, q int) bool {
			return out[i].Labels[p].Label.Position < out[i].Labels[q].Label.Position
		})
	}
	return out
}

// FindNamespace finds a namespace by UUID or, if uuid is zero, by name.
func (a *Area) FindNamespace(uuid UUID, name string) (*Namespace, error) {
	var found []Namespace
	for _, ns := range a.Namespaces() {
		if (!uuid.IsZero() && ns.UUID == uuid) || (uuid.IsZero() && ns.Name == name) {
			found = append(found, ns)
		}
	}
	switch len(found) {
	case 0:
		if uuid.IsZero() {
			return nil, fmt.Errorf("no namespace named %q: %w", name, ErrNotFound)
		}
		return nil, fmt.Errorf("no namespace with uuid %s: %w", uuid, ErrNotFound)
	case 1:
		return &found[0], nil
	}
	return nil, fmt.Errorf("%d namespaces are named %q; choose one by --uuid", len(found), name)
}

// ErrNotFound means no namespace matched.
var ErrNotFound = errors.New("namespace not found")

// ErrUnlabelled means the area has no valid index block.
var ErrUnlabelled = errors.New("label area has no valid index block (run label init)")
