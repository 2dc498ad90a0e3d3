package backing

import (
	"errors"
	"fmt"
	"strings"

	"github.com/nvdimm-backend/nvdimm-backend/label"
	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

// DumpIndex is one index block, raw fields, in Dump.
type DumpIndex struct {
	Offset   int64  `json:"offset"`
	Valid    bool   `json:"valid"`
	Error    string `json:"error,omitempty"`
	Sig      string `json:"signature"`
	Seq      uint32 `json:"seq"`
	MyOff    uint64 `json:"myoff"`
	MySize   uint64 `json:"mysize"`
	OtherOff uint64 `json:"otheroff"`
	LabelOff uint64 `json:"labeloff"`
	NSlot    uint32 `json:"nslot"`
	Major    uint16 `json:"major"`
	Minor    uint16 `json:"minor"`
	LabelSz  int    `json:"labelsize"`
	Checksum string `json:"checksum"`
	Free     uint32 `json:"free_slots"`
}

// DumpSlot is one label slot, raw fields, in Dump.
type DumpSlot struct {
	Slot            uint32 `json:"slot"`
	Offset          int64  `json:"offset"`
	Live            bool   `json:"live"`
	Valid           bool   `json:"valid"`
	Error           string `json:"error,omitempty"`
	UUID            string `json:"uuid"`
	Name            string `json:"name"`
	Flags           uint32 `json:"flags"`
	NLabel          uint16 `json:"nlabel"`
	Position        uint16 `json:"position"`
	ISetCookie      string `json:"isetcookie"`
	LBASize         uint64 `json:"lbasize"`
	DPA             uint64 `json:"dpa"`
	RawSize         uint64 `json:"rawsize"`
	SlotField       uint32 `json:"slot_field"`
	Align           uint8  `json:"align"`
	TypeGUID        string `json:"type_guid,omitempty"`
	AbstractionGUID string `json:"abstraction_guid,omitempty"`
	Checksum        string `json:"checksum,omitempty"`
}

// Dump is `label dump --json`: both index blocks and the label slots.
type Dump struct {
	Size     int64          `json:"size"`
	Geometry label.Geometry `json:"geometry"`
	Current  int            `json:"current_index"`
	Index    []DumpIndex    `json:"index"`
	Slots    []DumpSlot     `json:"slots"`
}

// Dump decodes both index blocks and every slot that is live or holds a
// non-zero byte (every slot with all).
func (a *Area) Dump(all bool) (*Dump, error) {
	if err := a.needLabels(); err != nil {
		return nil, err
	}
	raw, err := label.ReadArea(a.dev, a.size)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", a.path, err)
	}
	la, err := label.ParseBytes(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", a.path, err)
	}
	d := &Dump{Size: la.Size, Geometry: la.Geometry, Current: la.Current, Index: []DumpIndex{}, Slots: []DumpSlot{}}
	for _, b := range la.Blocks {
		x := b.Index
		di := DumpIndex{Offset: b.Offset, Valid: b.Err == nil, Sig: strings.TrimRight(string(x.Signature[:]), "\x00"),
			Seq: x.Seq, MyOff: x.MyOff, MySize: x.MySize, OtherOff: x.OtherOff, LabelOff: x.LabelOff, NSlot: x.NSlot,
			Major: x.Major, Minor: x.Minor, LabelSz: x.LabelSize(), Checksum: fmt.Sprintf("0x%016x", x.Checksum)}
		if b.Err != nil {
			di.Error = b.Err.Error()
		}
		for k := uint32(0); k < la.Geometry.NSlot; k++ {
			if x.IsFree(k) {
				di.Free++
			}
		}
		d.Index = append(d.Index, di)
	}
	for k := uint32(0); k < la.Geometry.NSlot; k++ {
		s := la.DecodeSlot(k)
		if !all && !s.Live && isZero(la.SlotBytes(k)) {
			continue
		}
		l := s.Label
		ds := DumpSlot{Slot: k, Offset: s.Offset, Live: s.Live, Valid: s.Err == nil, UUID: l.UUID.String(), Name: l.NameString(),
			Flags: l.Flags, NLabel: l.NLabel, Position: l.Position, ISetCookie: fmt.Sprintf("0x%016x", l.ISetCookie),
			LBASize: l.LBASize, DPA: l.DPA, RawSize: l.RawSize, SlotField: l.Slot, Align: l.Align}
		if s.Err != nil {
			ds.Error = s.Err.Error()
		}
		if l.Size == label.LabelSizeV12 {
			ds.TypeGUID, ds.AbstractionGUID, ds.Checksum = l.TypeGUID.String(), l.AbstractionGUID.String(), fmt.Sprintf("0x%016x", l.Checksum)
		}
		d.Slots = append(d.Slots, ds)
	}
	return d, nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// ReadInfoBlock decodes the info block of the namespace starting at
// offset in the guest data; the namespace is taken to run to the end of
// the DIMM and to be the block's own parent. No block there is
// label.ErrNoInfoBlock (wrapped).
func (a *Area) ReadInfoBlock(offset uint64) (*Info, error) {
	size, err := a.nsSize(offset)
	if err != nil {
		return nil, err
	}
	var out *Info
	err = a.data(false, func(rw dataRW) error {
		ib, err := label.ReadInfoBlock(rw, int64(offset))
		if err != nil {
			return err
		}
		out = summarize(ib, size, ib.ParentUUID)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", a.path, err)
	}
	return out, nil
}

// WriteInfoBlock writes a fresh fsdax or devdax info block (align 0:
// 2 MiB) for the namespace from offset to the end of the guest data, with
// no parent: what label-less NVDIMMs and virtio-pmem devices need to come
// up in that mode at first boot. The Area must be open for writing.
func (a *Area) WriteInfoBlock(offset uint64, mode string, align uint64) (*Info, error) {
	size, err := a.nsSize(offset)
	if err != nil {
		return nil, err
	}
	var out *Info
	err = a.data(true, func(rw dataRW) error {
		ib, err := label.NewInfoBlock(label.InfoParams{Mode: mode, Size: size, Align: align})
		if err != nil {
			return err
		}
		if err := label.WriteInfoBlock(rw, int64(offset), ib); err != nil {
			return err
		}
		out = summarize(ib, size, label.UUID{})
		return rw.Sync()
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", a.path, err)
	}
	return out, nil
}

func (a *Area) nsSize(offset uint64) (uint64, error) {
	if a.b == nil {
		return 0, fmt.Errorf("%s: %w", a.path, ErrNoData)
	}
	if offset >= a.dimmSize {
		return 0, fmt.Errorf("%s: namespace offset %d is beyond the %d-byte guest region", a.path, offset, a.dimmSize)
	}
	return a.dimmSize - offset, nil
}

// InfoAt is one place InspectInfoBlocks looked for a PFN/DAX info block.
type InfoAt struct {
	// Namespace and UUID name the labelled namespace ("" for a label-less
	// device, whose whole guest region is the namespace).
	Namespace string `json:"namespace"`
	UUID      string `json:"uuid,omitempty"`
	// DPA is the namespace start in the guest region; Offset is where the
	// block sits (DPA + 4 KiB).
	DPA    uint64 `json:"dpa"`
	Offset uint64 `json:"offset"`
	Size   uint64 `json:"size"`
	// Found reports a PFN or DAX signature there; InfoBlock decodes it.
	Found     bool   `json:"found"`
	InfoBlock *Info  `json:"info_block,omitempty"`
	Error     string `json:"error,omitempty"`
}

// InspectInfoBlocks decodes the info block of every namespace of the
// backing at path (opened read-only with o): each labelled namespace's
// start (its dpa) or, without a label area, the start of the guest
// region. Problems are reported in the entries, never as an error; a
// labelled area without a valid index has no namespaces and gives no
// entries.
func InspectInfoBlocks(path string, o memfile.OpenOptions) []InfoAt {
	o.ReadOnly = true
	b, err := memfile.Open(path, o)
	if err != nil {
		return []InfoAt{{Error: err.Error()}}
	}
	defer b.Close()
	type place struct {
		name string
		uuid label.UUID
		dpa  uint64
		size uint64
	}
	var places []place
	if b.Layout().LabelSize == 0 {
		places = append(places, place{dpa: 0, size: b.Layout().GuestSize})
	} else {
		la, err := b.LabelArea()
		if err != nil {
			return []InfoAt{{Error: err.Error()}}
		}
		a, err := label.Parse(la, la.Size())
		if err != nil {
			return []InfoAt{{Error: err.Error()}}
		}
		for _, ns := range a.Namespaces() {
			places = append(places, place{ns.Name, ns.UUID, ns.DPA(), ns.Size})
		}
	}
	out := []InfoAt{}
	for _, p := range places {
		e := InfoAt{Namespace: p.name, DPA: p.dpa, Offset: p.dpa + label.InfoBlockOffset, Size: p.size}
		if !p.uuid.IsZero() {
			e.UUID = p.uuid.String()
		}
		err := withData(b, false, func(rw dataRW) error {
			if p.dpa+label.InfoBlockOffset+label.InfoBlockSize > b.Layout().GuestSize {
				return fmt.Errorf("namespace at dpa %#x: its info block would lie beyond the %d-byte guest region", p.dpa, b.Layout().GuestSize)
			}
			ib, err := label.ReadInfoBlock(rw, int64(p.dpa))
			if err != nil {
				return err
			}
			e.Found, e.InfoBlock = true, summarize(ib, p.size, p.uuid)
			return nil
		})
		if err != nil && !errors.Is(err, label.ErrNoInfoBlock) {
			e.Error = err.Error()
		}
		out = append(out, e)
	}
	return out
}
