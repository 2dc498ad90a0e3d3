package backing

import (
	"errors"
	"fmt"

	"github.com/nvdimm-backend/nvdimm-backend/label"
	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

// Info is a decoded PFN/DAX info block and whether the kernel would
// accept it for its namespace.
type Info struct {
	Kind       string `json:"kind"`
	UUID       string `json:"uuid"`
	ParentUUID string `json:"parent_uuid"`
	Version    string `json:"version"`
	DataOff    uint64 `json:"dataoff"`
	NPFNs      uint64 `json:"npfns"`
	Align      uint32 `json:"align"`
	EndTrunc   uint32 `json:"end_trunc"`
	DataSize   uint64 `json:"data_size"`
	Valid      bool   `json:"valid"`
	Error      string `json:"error,omitempty"`
}

// summarize decodes ib for a namespace of nsSize bytes whose uuid is
// parent.
func summarize(ib *label.InfoBlock, nsSize uint64, parent label.UUID) *Info {
	j := &Info{Kind: ib.Kind(), UUID: ib.UUID.String(), ParentUUID: ib.ParentUUID.String(),
		Version: fmt.Sprintf("%d.%d", ib.VersionMajor, ib.VersionMinor), DataOff: ib.DataOff, NPFNs: ib.NPFNs,
		Align: ib.Align, EndTrunc: ib.EndTrunc, DataSize: ib.NPFNs * 4096, Valid: true}
	if err := ib.Validate(nsSize, parent); err != nil {
		j.Valid, j.Error = false, err.Error()
	}
	return j
}

// LabelEntry is one label of a listed namespace.
type LabelEntry struct {
	Slot            uint32 `json:"slot"`
	Flags           uint32 `json:"flags"`
	NLabel          uint16 `json:"nlabel"`
	Position        uint16 `json:"position"`
	ISetCookie      string `json:"isetcookie"`
	LBASize         uint64 `json:"lbasize"`
	DPA             uint64 `json:"dpa"`
	RawSize         uint64 `json:"rawsize"`
	AbstractionGUID string `json:"abstraction_guid"`
}

// NamespaceEntry is one namespace of List, with the info block at its
// start when the backing has guest data and one is there.
type NamespaceEntry struct {
	UUID      string       `json:"uuid"`
	Name      string       `json:"name"`
	Mode      string       `json:"mode"`
	Size      uint64       `json:"size"`
	Labels    []LabelEntry `json:"labels"`
	InfoBlock *Info        `json:"info_block,omitempty"`
}

// List is `label list --json`; Version is "" for an unlabelled area (no
// valid index block), with CurrentIndex -1.
type List struct {
	Version      string           `json:"version"`
	NSlot        uint32           `json:"nslot"`
	CurrentIndex int              `json:"current_index"`
	Seq          uint32           `json:"seq"`
	Namespaces   []NamespaceEntry `json:"namespaces"`
}

// List reads the area and lists its namespaces. For a backing each
// namespace carries the info block at its dpa, and a v1.1 raw label (v1.1
// labels do not record fsdax/devdax) takes the mode of its valid block.
func (a *Area) List() (*List, error) {
	la, err := a.parse()
	if err != nil {
		return nil, err
	}
	out := &List{Version: string(la.Version()), CurrentIndex: la.Current, Namespaces: []NamespaceEntry{}}
	if x := la.CurrentIndex(); x != nil {
		out.NSlot, out.Seq = x.NSlot, x.Seq&3
	}
	for _, ns := range la.Namespaces() {
		nj := NamespaceEntry{UUID: ns.UUID.String(), Name: ns.Name, Mode: ns.Mode, Size: ns.Size, Labels: []LabelEntry{}}
		for _, s := range ns.Labels {
			l := s.Label
			nj.Labels = append(nj.Labels, LabelEntry{Slot: s.Slot, Flags: l.Flags, NLabel: l.NLabel, Position: l.Position,
				ISetCookie: fmt.Sprintf("0x%016x", l.ISetCookie), LBASize: l.LBASize, DPA: l.DPA, RawSize: l.RawSize,
				AbstractionGUID: l.AbstractionGUID.String()})
		}
		if a.b != nil {
			_ = a.data(false, func(rw dataRW) error {
				ib, err := label.ReadInfoBlock(rw, int64(ns.DPA()))
				if err != nil {
					return err
				}
				nj.InfoBlock = summarize(ib, ns.Size, ns.UUID)
				if nj.InfoBlock.Valid && ns.Mode == label.ModeRaw && la.Version() == label.V11 {
					nj.Mode = ib.Kind()
				}
				return nil
			})
		}
		out.Namespaces = append(out.Namespaces, nj)
	}
	return out, nil
}

// NamespaceResult is what Create and Provision made (`label create
// --json`, and "namespace" in `create --namespace --json`).
type NamespaceResult struct {
	UUID      string   `json:"uuid"`
	Name      string   `json:"name"`
	Mode      string   `json:"mode"`
	Size      uint64   `json:"size"`
	DPA       uint64   `json:"dpa"`
	Slot      int      `json:"slot"`
	Version   string   `json:"label_version,omitempty"`
	InfoBlock *Info    `json:"info_block,omitempty"`
	Warnings  []string `json:"warnings,omitempty"`
}

// writeInfo writes (fsdax/devdax) or clears (raw) the info block of the
// namespace of size bytes at dpa in the guest data, and syncs it.
func (a *Area) writeInfo(mode string, dpa, size uint64, parent label.UUID) (*Info, error) {
	var out *Info
	err := a.data(true, func(rw dataRW) error {
		if mode == label.ModeRaw {
			if err := label.ClearInfoBlock(rw, int64(dpa)); err != nil {
				return err
			}
			return rw.Sync()
		}
		ib, err := label.NewInfoBlock(label.InfoParams{Mode: mode, ParentUUID: parent, Size: size})
		if err != nil {
			return err
		}
		if err := label.WriteInfoBlock(rw, int64(dpa), ib); err != nil {
			return err
		}
		out = summarize(ib, size, parent)
		return rw.Sync()
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", a.path, err)
	}
	return out, nil
}

// ErrNoDIMMSize means a namespace cannot be placed: the DIMM size is
// unknown (a bare area opened without Options.DIMMSize).
var ErrNoDIMMSize = errors.New("DIMM size unknown: a bare label area needs the guest-visible DIMM size")

// checkMode refuses the modes a namespace cannot be created with here.
func checkMode(mode string) error {
	switch mode {
	case label.ModeFSDAX, label.ModeDevDAX, label.ModeRaw:
		return nil
	}
	return fmt.Errorf("mode %q: want fsdax, devdax or raw", mode)
}

// Create adds a namespace to a labelled area: every check first (so a
// refusal changes nothing), then the info block (fsdax/devdax; cleared
// for raw) in space no label owns yet, then the labels, then the
// namespace and slot in the metadata record. spec's DIMMSize and Cookies
// come from the Area; with no slot known, labels are written for slot 0
// with a warning. A bare area gets no info block (warned too).
func (a *Area) Create(spec label.NamespaceSpec) (*NamespaceResult, error) {
	if err := checkMode(spec.Mode); err != nil {
		return nil, fmt.Errorf("%s: %w", a.path, err)
	}
	if a.dimmSize == 0 {
		return nil, fmt.Errorf("%s: %w", a.path, ErrNoDIMMSize)
	}
	e, err := a.editor()
	if err != nil {
		return nil, err
	}
	if !e.Area().Labelled {
		return nil, fmt.Errorf("%s: %w", a.path, label.ErrUnlabelled)
	}
	return a.create(e, spec)
}

func (a *Area) create(e *label.Editor, spec label.NamespaceSpec) (*NamespaceResult, error) {
	res := &NamespaceResult{Name: spec.Name, Mode: spec.Mode, Version: string(e.Area().Version())}
	if a.slot < 0 {
		a.slot = 0
		res.Warnings = append(res.Warnings, "no DIMM slot recorded or given: labels written for slot 0 (use --slot, or label retarget later)")
	}
	res.Slot = a.slot
	spec.Cookies = *a.Cookies()
	spec.DIMMSize = a.dimmSize
	plan, err := e.Plan(spec)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", a.path, err)
	}
	dpa, size := plan.DPA, plan.RawSize
	spec.UUID, spec.Size = plan.UUID, size
	if spec.Mode != label.ModeRaw {
		// The info block's own checks (namespace big enough for its
		// memmap) also come before any write.
		if _, err := label.NewInfoBlock(label.InfoParams{Mode: spec.Mode, ParentUUID: spec.UUID, Size: size}); err != nil {
			return nil, fmt.Errorf("%s: %w", a.path, err)
		}
	}
	if a.b != nil {
		if res.InfoBlock, err = a.writeInfo(spec.Mode, dpa, size, spec.UUID); err != nil {
			return nil, err
		}
	} else if spec.Mode != label.ModeRaw {
		res.Warnings = append(res.Warnings, "--area: no guest data here, so no info block was written; the guest's ndctl must set the mode")
	}
	ns, err := e.Create(spec)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", a.path, err)
	}
	res.UUID, res.Size, res.DPA = ns.UUID.String(), ns.Size, ns.DPA()
	if err := a.recordMeta(spec.Name, spec.Mode, ns.UUID, false); err != nil {
		return nil, err
	}
	return res, nil
}

// ProvisionSpec is the namespace Provision writes into a new backing.
type ProvisionSpec struct {
	Name string
	// Mode is fsdax (the default when empty), devdax or raw; raw needs a
	// label area.
	Mode string
	// UUID of the namespace; zero: random.
	UUID label.UUID
	// Slot is the DIMM slot the labels are written for; memfile.NoSlot
	// (-1) writes them for slot 0 with a warning.
	Slot int
}

// Provision gives a just-created backing (open read-write; the caller
// holds whatever lock it needs) its namespace: with a label area, v1.2
// labels (as the kernel initialises them) and a namespace over the whole
// DIMM, made as Create does; without one, only the info block at the
// start of the guest data (the name is kept in the metadata record). The
// caller removes the backing if this fails.
func Provision(b *memfile.Backing, s ProvisionSpec) (*NamespaceResult, error) {
	a := newArea(b, Options{Slot: s.Slot})
	if s.Slot < 0 {
		a.slot = -1 // the request's slot, never one a record may hold
	}
	mode := s.Mode
	if mode == "" {
		mode = label.ModeFSDAX
	}
	if err := checkMode(mode); err != nil {
		return nil, fmt.Errorf("%s: %w", a.path, err)
	}
	if b.Layout().LabelSize == 0 {
		// Label-less NVDIMM or virtio-pmem: the info block alone sets the mode.
		if mode == label.ModeRaw {
			return nil, fmt.Errorf("%s: mode raw needs a label area (a label size): without one only an fsdax or devdax info block sets the mode", a.path)
		}
		ib, err := a.writeInfo(mode, 0, b.Layout().GuestSize, label.UUID{})
		if err != nil {
			return nil, err
		}
		res := &NamespaceResult{Name: s.Name, Mode: mode, Size: b.Layout().GuestSize, Slot: a.slot, InfoBlock: ib,
			Warnings: []string{"no label area: wrote only the info block; the name is kept in the metadata"}}
		if ib != nil {
			res.UUID = ib.UUID
		}
		if err := a.recordMeta(s.Name, mode, label.UUID{}, false); err != nil {
			return nil, err
		}
		return res, nil
	}
	la, err := b.LabelArea()
	if err != nil {
		return nil, err
	}
	a.dev, a.size = la, la.Size()
	e, err := label.NewEditor(la, la.Size())
	if err != nil {
		return nil, err
	}
	if err := e.Init(label.InitOptions{Version: label.V12}); err != nil {
		return nil, fmt.Errorf("%s: %w", a.path, err)
	}
	return a.create(e, label.NamespaceSpec{UUID: s.UUID, Name: s.Name, Mode: mode})
}
