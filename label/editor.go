package label

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
)

// Device is the storage an Editor works on: the label tail of a backing,
// a bare area file, or a buffer. If it also has a Sync() error method,
// the editor calls it after every write, so the kernel's write order is
// also the order in which writes become durable.
type Device interface {
	io.ReaderAt
	io.WriterAt
}

type syncer interface{ Sync() error }

// Cookies are the interleave-set cookies of the DIMM's region: V11 goes
// into labels under a v1.1 index, V12 under a v1.2 index.
type Cookies struct {
	V11 uint64 `json:"v1_1"`
	V12 uint64 `json:"v1_2"`
}

// For returns the cookie labels carry under an index of version v.
func (c Cookies) For(v Version) uint64 {
	if v == V11 {
		return c.V11
	}
	return c.V12
}

// Editor changes a label area with the kernel's crash-safe update
// procedure. It is not safe for concurrent use.
type Editor struct {
	dev  Device
	size int64
	raw  []byte // mirror of the device after our writes
	area *Area
	// Log, if set, receives a debug record per write.
	Log *slog.Logger
}

// NewEditor reads and parses the area of size bytes behind dev.
func NewEditor(dev Device, size int64) (*Editor, error) {
	e := &Editor{dev: dev, size: size}
	if err := e.reload(); err != nil {
		return nil, err
	}
	return e, nil
}

func (e *Editor) reload() error {
	raw, err := ReadArea(e.dev, e.size)
	if err != nil {
		return err
	}
	a, err := ParseBytes(raw)
	if err != nil {
		return err
	}
	e.raw, e.area = raw, a
	return nil
}

// Area is the parsed current state.
func (e *Editor) Area() *Area { return e.area }

func (e *Editor) write(off int64, b []byte, what string) error {
	if off < 0 || off+int64(len(b)) > e.size {
		return fmt.Errorf("writing %s: %d bytes at offset %d beyond the %d-byte area", what, len(b), off, e.size)
	}
	if e.Log != nil {
		e.Log.Debug("label write", "what", what, "offset", off, "len", len(b))
	}
	if _, err := e.dev.WriteAt(b, off); err != nil {
		_ = e.reload()
		return fmt.Errorf("writing %s at label-area offset %d: %w", what, off, err)
	}
	if s, ok := e.dev.(syncer); ok {
		if err := s.Sync(); err != nil {
			_ = e.reload()
			return fmt.Errorf("syncing %s at label-area offset %d: %w", what, off, err)
		}
	}
	copy(e.raw[off:], b)
	return nil
}

func (e *Editor) reparse() error {
	a, err := ParseBytes(e.raw)
	if err != nil {
		return err
	}
	e.area = a
	return nil
}

// freshIndex builds index block i of a newly initialised area.
// ndctlStyle leaves the bitmap padding bits set (ndctl init-labels);
// otherwise they are cleared (the kernel).
func freshIndex(g Geometry, i int, seq uint32, ndctlStyle bool) *Index {
	x := &Index{
		Signature: IndexSignature,
		Seq:       seq,
		MyOff:     uint64(g.IndexOffset(i)),
		MySize:    uint64(g.IndexSize),
		OtherOff:  uint64(g.IndexOffset(1 - i)),
		LabelOff:  uint64(2 * g.IndexSize),
		NSlot:     g.NSlot,
		Major:     1,
		Minor:     1,
		Free:      make([]byte, g.IndexSize-IndexHeaderSize),
	}
	if g.LabelSize == LabelSizeV12 {
		x.LabelSizeShift, x.Minor = 1, 2
	}
	nfree := (g.NSlot + 63) / 64 * 64
	for b := uint32(0); b < nfree/8; b++ {
		x.Free[b] = 0xff
	}
	if !ndctlStyle {
		for k := g.NSlot; k < nfree; k++ {
			x.SetFree(k, false)
		}
	}
	x.Seal()
	return x
}

// InitOptions control Init.
type InitOptions struct {
	// Version is V12 (the kernel's default) or V11 (ndctl's default).
	Version Version
	// Force re-initialises an area that already has valid index blocks,
	// dropping every namespace label.
	Force bool
}

// Init writes two empty index blocks. On an unlabelled area it writes
// block 0 (seq 3) and then block 1 (seq 2), like the kernel and ndctl;
// v1.1 areas get ndctl's bitmap (padding bits set), v1.2 the kernel's.
//
// Re-initialising a labelled area of the same version (Force) writes the
// staging block first with the next sequence number, so a crash leaves
// the old or the new state. Changing the version of a labelled area is
// crash-safe too (see changeVersion): at every write the area parses to
// the old namespaces or to the new empty index.
func (e *Editor) Init(o InitOptions) error {
	v := o.Version
	if v == "" {
		v = V12
	}
	g, err := NewGeometry(e.size, v.LabelSize())
	if err != nil {
		return err
	}
	ndctl := v == V11
	a := e.area
	if a.Labelled {
		if !o.Force {
			return fmt.Errorf("label area already has a valid v%s index with %d namespace(s): %w", a.Version(), len(a.Namespaces()), ErrLabelled)
		}
		if a.Geometry == g {
			c := a.Current
			n := 1 - c
			sc := a.Blocks[c].Index.Seq
			if err := e.writeIndex(freshIndex(g, n, nextSeq(sc), ndctl), g, n); err != nil {
				return err
			}
			if err := e.writeIndex(freshIndex(g, c, sc&3, ndctl), g, c); err != nil {
				return err
			}
			return e.reparse()
		}
		if err := e.changeVersion(g, ndctl); err != nil {
			return err
		}
		return e.reparse()
	}
	for i, seq := range []uint32{3, 2} {
		if err := e.writeIndex(freshIndex(g, i, seq, ndctl), g, i); err != nil {
			return err
		}
	}
	return e.reparse()
}

// changeVersion re-initialises a labelled area with another label size
// (geometry g) so that a crash at any write leaves either the old
// namespaces or the new empty index. Linux probes 128-byte (v1.1) labels
// first, so the order depends on the direction:
//
//   - v1.1 -> v1.2: the old v1.1 index must stay valid until a v1.2 block
//     exists. Make old block 1 current (a no-op update if it is not), then
//     write new block 0 inside old block 0 (it no longer validates as v1.1;
//     block 1 still does), then new block 1, then zero whatever remains of
//     old block 1. The first write that changes old block 1 switches the
//     area to the new state. v1.2 index blocks are never larger than v1.1
//     ones, so nothing here touches the old labels.
//   - v1.2 -> v1.1: any valid v1.1 block wins at once, so it must be
//     written without damaging the old state if it tears. Make old block 0
//     current, move live labels out of the slots the (larger) v1.1 block 1
//     covers, then write new block 1 (past old block 0), then new block 0.
//
// Both end as a fresh init: block 0 with sequence 3 current, block 1 with
// 2.
func (e *Editor) changeVersion(g Geometry, ndctl bool) error {
	old := e.area.Geometry
	if g.LabelSize == LabelSizeV12 {
		if e.area.Current != 1 {
			if _, err := e.commit(nil, nil); err != nil {
				return fmt.Errorf("moving the v%s index to block 1: %w", old.Version(), err)
			}
		}
		if err := e.writeIndex(freshIndex(g, 0, 3, ndctl), g, 0); err != nil {
			return err
		}
		if err := e.writeIndex(freshIndex(g, 1, 2, ndctl), g, 1); err != nil {
			return err
		}
		if lo, hi := max(old.IndexOffset(1), 2*g.IndexSize), 2*old.IndexSize; lo < hi {
			if err := e.write(lo, make([]byte, hi-lo), "rest of the old index block 1"); err != nil {
				return err
			}
		}
		return nil
	}
	// v1.2 -> v1.1: old slots below first lie inside the new index blocks.
	first := uint32((2*g.IndexSize - 2*old.IndexSize + int64(old.LabelSize) - 1) / int64(old.LabelSize))
	var move []Label
	var victims []uint32
	for _, s := range e.area.LiveSlots() {
		if s.Slot < first {
			// Invalid labels (Linux ignores them) are only freed: moving
			// would reseal them and make them count.
			if s.Err == nil {
				move = append(move, s.Label)
			}
			victims = append(victims, s.Slot)
		}
	}
	if len(move) > 0 {
		if _, err := e.commitFrom(move, victims, first); err != nil {
			return fmt.Errorf("moving %d label(s) out of the slots the v%s index blocks will cover: %w", len(move), g.Version(), err)
		}
	}
	if e.area.Current != 0 {
		if _, err := e.commit(nil, nil); err != nil {
			return fmt.Errorf("moving the v%s index to block 0: %w", old.Version(), err)
		}
	}
	if err := e.writeIndex(freshIndex(g, 1, 2, ndctl), g, 1); err != nil {
		return err
	}
	return e.writeIndex(freshIndex(g, 0, 3, ndctl), g, 0)
}

// ErrLabelled means Init found valid index blocks and Force was not set.
var ErrLabelled = errors.New("already labelled")

// ErrFull means no free label slot is left.
var ErrFull = errors.New("no free label slot")

func (e *Editor) writeIndex(x *Index, g Geometry, i int) error {
	b, _ := x.MarshalBinary()
	if int64(len(b)) != g.IndexSize {
		return fmt.Errorf("index block %d: encoded %d bytes, want %d", i, len(b), g.IndexSize)
	}
	return e.write(g.IndexOffset(i), b, fmt.Sprintf("index block %d (seq %d)", i, x.Seq))
}

// commit performs one kernel-style update: each label of add goes into
// the lowest free slot of the staging index (its Slot field set, v1.2
// checksum sealed) and is written; the victims' slots are marked free;
// then the staging index is written with the next sequence number and
// becomes current. It returns the slots used.
func (e *Editor) commit(add []Label, victims []uint32) ([]uint32, error) {
	return e.commitFrom(add, victims, 0)
}

// commitFrom is commit placing the new labels in free slots numbered
// minSlot or higher.
func (e *Editor) commitFrom(add []Label, victims []uint32, minSlot uint32) ([]uint32, error) {
	a := e.area
	cur := a.CurrentIndex()
	if cur == nil {
		return nil, ErrUnlabelled
	}
	g := a.Geometry
	next := cur.clone()
	nslot := g.NSlot
	if next.NSlot < nslot {
		nslot = next.NSlot
	}
	slots := make([]uint32, 0, len(add))
	for _, l := range add {
		k := minSlot
		for ; k < nslot && !next.IsFree(k); k++ {
		}
		if k == nslot {
			return nil, fmt.Errorf("%w (all %d slots in use)", ErrFull, nslot)
		}
		next.SetFree(k, false)
		l.Size = g.LabelSize
		l.Slot = k
		l.Seal()
		b, err := l.MarshalBinary()
		if err != nil {
			return nil, err
		}
		if err := e.write(g.SlotOffset(k), b, fmt.Sprintf("label slot %d", k)); err != nil {
			return nil, err
		}
		slots = append(slots, k)
	}
	for _, k := range victims {
		next.SetFree(k, true)
	}
	n := 1 - a.Current
	next.Signature = IndexSignature
	next.Flags = [3]byte{}
	next.Seq = nextSeq(cur.Seq)
	next.MyOff = uint64(g.IndexOffset(n))
	next.MySize = uint64(g.IndexSize)
	next.OtherOff = uint64(g.IndexOffset(a.Current))
	next.LabelOff = uint64(2 * g.IndexSize)
	next.Major, next.Minor, next.LabelSizeShift = 1, 1, 0
	if g.LabelSize == LabelSizeV12 {
		next.Minor, next.LabelSizeShift = 2, 1
	}
	next.Seal()
	if err := e.writeIndex(next, g, n); err != nil {
		return nil, err
	}
	if err := e.reparse(); err != nil {
		return nil, err
	}
	if e.area.Current != n {
		return nil, fmt.Errorf("internal error: index block %d did not become current after the update", n)
	}
	return slots, nil
}

// NamespaceSpec describes a namespace to create.
type NamespaceSpec struct {
	UUID UUID   // zero: random
	Name string // at most 63 bytes
	// Size in bytes; 0 means the largest free extent. It must be a
	// multiple of Align.
	Size uint64
	Mode string // raw, fsdax, devdax
	// DIMMSize is the DIMM's mapped DPA range [0, DIMMSize) (QEMU: the
	// guest-visible size). Required.
	DIMMSize uint64
	// Align is the placement and size granule; 0 means Linux's region
	// default: 16 MiB for DIMMs of at least 16 MiB, else 4 KiB.
	Align uint64
	// Cookies of the DIMM's slot.
	Cookies Cookies
	// LBASize recorded in the label; 0 means 512, what the kernel
	// writes for namespaces ndctl creates.
	LBASize uint64
}

// DefaultAlign is the region alignment Linux uses for a DIMM of size
// bytes.
func DefaultAlign(size uint64) uint64 {
	if size >= 16<<20 {
		return 16 << 20
	}
	return 4096
}

// Extent is a DPA range [Start, Start+Size).
type Extent struct {
	Start uint64 `json:"start"`
	Size  uint64 `json:"size"`
}

// FreeExtents returns the aligned free DPA ranges of [0, dimmSize) not
// covered by any valid live label.
func (a *Area) FreeExtents(dimmSize, align uint64) []Extent {
	if align == 0 {
		align = DefaultAlign(dimmSize)
	}
	var used []Extent
	for _, s := range a.LiveSlots() {
		if s.Err == nil {
			end := s.Label.DPA + s.Label.RawSize
			if end < s.Label.DPA {
				end = ^uint64(0)
			}
			used = append(used, Extent{s.Label.DPA, end - s.Label.DPA})
		}
	}
	sort.Slice(used, func(i, j int) bool { return used[i].Start < used[j].Start })
	var out []Extent
	gap := func(lo, hi uint64) {
		hi = min(hi, dimmSize)
		start := (lo + align - 1) / align * align
		if start < lo || start >= hi {
			return
		}
		if size := (hi - start) / align * align; size > 0 {
			out = append(out, Extent{start, size})
		}
	}
	pos := uint64(0)
	for _, u := range used {
		if u.Start > pos {
			gap(pos, u.Start)
		}
		pos = max(pos, u.Start+u.Size)
	}
	gap(pos, dimmSize)
	return out
}

// Place picks the DPA of a namespace of size bytes: the first aligned
// free extent that fits. size 0 means the largest extent, whose size is
// returned.
func (a *Area) Place(size, dimmSize, align uint64) (dpa, got uint64, err error) {
	if align == 0 {
		align = DefaultAlign(dimmSize)
	}
	if size%align != 0 {
		return 0, 0, fmt.Errorf("size %d is not a multiple of the region alignment %d", size, align)
	}
	ext := a.FreeExtents(dimmSize, align)
	if size == 0 {
		var best Extent
		for _, x := range ext {
			if x.Size > best.Size {
				best = x
			}
		}
		if best.Size == 0 {
			return 0, 0, fmt.Errorf("no free space of %d aligned bytes left on the %d-byte DIMM", align, dimmSize)
		}
		return best.Start, best.Size, nil
	}
	for _, x := range ext {
		if x.Size >= size {
			return x.Start, size, nil
		}
	}
	return 0, 0, fmt.Errorf("no free extent of %d bytes on the %d-byte DIMM", size, dimmSize)
}

// Create adds a pmem namespace: the label is written with UPDATING, then
// rewritten without it (two index updates, as the kernel does). It
// returns the namespace as parsed afterwards.
func (e *Editor) Create(s NamespaceSpec) (*Namespace, error) {
	l, err := e.Plan(s)
	if err != nil {
		return nil, err
	}
	slots, err := e.commit([]Label{l}, nil)
	if err != nil {
		return nil, err
	}
	l.Flags = 0
	if _, err := e.commit([]Label{l}, slots); err != nil {
		return nil, err
	}
	return e.area.FindNamespace(l.UUID, "")
}

// Plan checks s as Create does, without writing anything, and returns
// the label Create would write first (UPDATING set): its UUID (random if
// s has none), DPA and RawSize are what the namespace will get. Callers
// that write something for the namespace before its labels (the info
// block) call Plan first and pass its UUID and RawSize to Create, which
// then places the namespace at the same DPA.
func (e *Editor) Plan(s NamespaceSpec) (Label, error) {
	a := e.area
	if !a.Labelled {
		return Label{}, ErrUnlabelled
	}
	if s.DIMMSize == 0 {
		return Label{}, errors.New("create namespace: DIMM size unknown")
	}
	guid, err := ModeGUID(s.Mode)
	if err != nil {
		return Label{}, err
	}
	if s.Mode == ModeSector {
		return Label{}, errors.New("create namespace: sector (BTT) mode is not supported")
	}
	l := Label{Flags: FlagUpdating, NLabel: 1, Position: 0, LBASize: s.LBASize}
	if err := l.SetName(s.Name); err != nil {
		return Label{}, err
	}
	if s.UUID.IsZero() {
		if s.UUID, err = NewUUID(); err != nil {
			return Label{}, err
		}
	}
	for _, ns := range a.Namespaces() {
		if ns.UUID == s.UUID {
			return Label{}, fmt.Errorf("a namespace with uuid %s already exists (%q)", s.UUID, ns.Name)
		}
	}
	// Create takes one slot for the UPDATING label and a second for the
	// final one before freeing the first.
	if free := a.freeSlots(); free < 2 {
		return Label{}, fmt.Errorf("%w: creating a namespace needs 2 free label slots, %d left", ErrFull, free)
	}
	dpa, size, err := a.Place(s.Size, s.DIMMSize, s.Align)
	if err != nil {
		return Label{}, err
	}
	v := a.Version()
	cookie := s.Cookies.For(v)
	if cookie == 0 {
		return Label{}, fmt.Errorf("create namespace: the v%s interleave-set cookie is 0 (Linux ignores such labels)", v)
	}
	l.UUID, l.ISetCookie, l.DPA, l.RawSize = s.UUID, cookie, dpa, size
	if l.LBASize == 0 {
		l.LBASize = 512
	}
	if v == V12 {
		l.TypeGUID, l.AbstractionGUID = PMemTypeGUID, guid
	}
	l.Size = a.Geometry.LabelSize
	return l, nil
}

// freeSlots counts the slots the current index marks free.
func (a *Area) freeSlots() int {
	x := a.CurrentIndex()
	if x == nil {
		return 0
	}
	n := 0
	for k := uint32(0); k < min(a.Geometry.NSlot, x.NSlot); k++ {
		if x.IsFree(k) {
			n++
		}
	}
	return n
}

// rewrite replaces every label of the namespace with a changed copy, in
// two updates (UPDATING, then cleared) like the kernel's label update.
func (e *Editor) rewrite(ns *Namespace, change func(*Label)) error {
	var labels []Label
	var old []uint32
	for _, s := range ns.Labels {
		l := s.Label
		change(&l)
		labels = append(labels, l)
		old = append(old, s.Slot)
	}
	for i := range labels {
		labels[i].Flags |= FlagUpdating
	}
	slots, err := e.commit(labels, old)
	if err != nil {
		return err
	}
	for i := range labels {
		labels[i].Flags &^= FlagUpdating
	}
	_, err = e.commit(labels, slots)
	return err
}

// Destroy frees every label of the namespace in one update.
func (e *Editor) Destroy(uuid UUID) error {
	ns, err := e.area.FindNamespace(uuid, "")
	if err != nil {
		return err
	}
	var slots []uint32
	for _, s := range ns.Labels {
		slots = append(slots, s.Slot)
	}
	_, err = e.commit(nil, slots)
	return err
}

// Rename gives the namespace a new name.
func (e *Editor) Rename(uuid UUID, name string) error {
	ns, err := e.area.FindNamespace(uuid, "")
	if err != nil {
		return err
	}
	var probe Label
	if err := probe.SetName(name); err != nil {
		return err
	}
	return e.rewrite(ns, func(l *Label) { l.Name = probe.Name })
}

// Retarget rewrites the interleave-set cookie of every namespace whose
// labels do not carry the cookie of c for the area's version (after a
// backing moved to another DIMM slot). It returns how many namespaces
// changed.
//
// All namespaces switch in one update: every new label goes into a free
// slot first, then one staging-index write frees the old labels and makes
// the new ones live, so a crash leaves the whole area old or whole area
// new, never some namespaces with each cookie. An area without a free
// slot for every label to rewrite is refused and left as it is.
func (e *Editor) Retarget(c Cookies) (int, error) {
	return e.retargetAnd(c, nil)
}

// retargetAnd is Retarget that also frees the slots in free (which it
// does not rewrite) in the same update. It returns how many namespaces
// had labels rewritten.
func (e *Editor) retargetAnd(c Cookies, free []uint32) (int, error) {
	a := e.area
	if !a.Labelled {
		return 0, ErrUnlabelled
	}
	want := c.For(a.Version())
	if want == 0 {
		return 0, errors.New("retarget: cookie is 0")
	}
	skip := make(map[uint32]bool, len(free))
	for _, k := range free {
		skip[k] = true
	}
	var labels []Label
	victims := append([]uint32(nil), free...)
	n := 0
	for _, ns := range a.Namespaces() {
		stale := false
		for _, s := range ns.Labels {
			stale = stale || (!skip[s.Slot] && s.Label.ISetCookie != want)
		}
		if !stale {
			continue
		}
		for _, s := range ns.Labels {
			if skip[s.Slot] {
				continue
			}
			l := s.Label
			l.ISetCookie = want
			labels = append(labels, l)
			victims = append(victims, s.Slot)
		}
		n++
	}
	if len(labels) == 0 && len(free) == 0 {
		return 0, nil
	}
	if have := a.freeSlots(); have < len(labels) {
		return 0, fmt.Errorf("%w: retargeting %d namespace(s) rewrites %d label(s) at once (so that a crash leaves all old or all new), which needs %d free label slots, and %d are free; destroy a namespace or re-create the area larger",
			ErrFull, n, len(labels), len(labels), have)
	}
	if _, err := e.commit(labels, victims); err != nil {
		return 0, err
	}
	return n, nil
}
