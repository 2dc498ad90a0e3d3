package main

// Verbs for namespace label areas and info blocks: label init, list,
// create, destroy, rename, check, dump, retarget, infoblock; and the
// provisionNamespace hook of `create --namespace`.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/nvdimm-backend/nvdimm-backend/acpi"
	"github.com/nvdimm-backend/nvdimm-backend/label"
	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

// labelTargetOpts are the flags that say where the label area is.
type labelTargetOpts struct {
	labelSize sizeFlag
	area      bool
	dimmSize  sizeFlag
	slot      int
	force     bool
}

func (o *labelTargetOpts) addFlags(cmd *cobra.Command, write bool) {
	f := cmd.Flags()
	f.Var(&o.labelSize, "label-size", "the label area is the last SIZE bytes of PATH (a backing without metadata)")
	f.BoolVar(&o.area, "area", false, "PATH is only a label area (no guest data)")
	f.Var(&o.dimmSize, "dimm-size", "guest-visible DIMM size, for --area (default: from the backing)")
	f.IntVar(&o.slot, "slot", -1, "DIMM slot for the interleave-set cookies (default: the slot in the metadata)")
	if write {
		f.BoolVar(&o.force, "force", false, "edit even if a running VM holds the backing's lock")
	}
}

// labelTarget is an opened label area and, for a backing, its data.
type labelTarget struct {
	path     string
	dev      label.Device
	size     int64
	b        *memfile.Backing
	f        *os.File
	dimmSize uint64
	slot     int // -1: unknown
	close    func() error
}

func openLabelTarget(path string, o *labelTargetOpts, write bool) (*labelTarget, error) {
	t := &labelTarget{path: path, slot: o.slot, dimmSize: o.dimmSize.v}
	if o.area {
		flag := os.O_RDONLY
		if write {
			flag = os.O_RDWR
		}
		f, err := os.OpenFile(path, flag, 0)
		if err != nil {
			return nil, err
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, err
		}
		t.f, t.dev, t.size, t.close = f, syncFile{f}, fi.Size(), f.Close
		return t, nil
	}
	oo := memfile.OpenOptions{ReadOnly: !write, LabelSize: o.labelSize.v}
	b, err := memfile.Open(path, oo)
	if err != nil {
		return nil, err
	}
	// A --label-size the metadata record contradicts is refused, not
	// silently replaced by the recorded one.
	if err := b.CheckOptions(oo); err != nil {
		b.Close()
		return nil, err
	}
	if write {
		if err := lockForEdit(b, o.force); err != nil {
			return nil, err
		}
	}
	a, err := b.LabelArea()
	if err != nil {
		b.Close()
		return nil, err
	}
	t.b, t.dev, t.size, t.close = b, a, a.Size(), b.Close
	if t.dimmSize == 0 {
		t.dimmSize = b.Layout().GuestSize
	}
	if m := b.Meta(); m != nil && t.slot < 0 {
		t.slot = m.Slot
	}
	return t, nil
}

// lockForEdit takes the backing's exclusive lock; a backing another user
// (a running VM) holds is refused unless force. On error b is closed.
func lockForEdit(b *memfile.Backing, force bool) error {
	err := b.Lock(memfile.LockExclusive, false)
	if err == nil || (force && errors.Is(err, memfile.ErrLocked)) {
		return nil
	}
	b.Close()
	if errors.Is(err, memfile.ErrLocked) {
		// memfile's message already says who holds it and to stop it.
		return fmt.Errorf("%w, or pass --force to edit anyway", err)
	}
	return err
}

// syncFile adds Sync to a bare area file.
type syncFile struct{ *os.File }

func (s syncFile) Sync() error { return unix.Fdatasync(int(s.Fd())) }

func (t *labelTarget) cookies() *label.Cookies {
	if t.slot < 0 {
		return nil
	}
	v11, v12 := acpi.QEMUSlotCookies(t.slot)
	return &label.Cookies{V11: v11, V12: v12}
}

// data runs fn over the guest-visible data of a backing (nil for --area).
func (t *labelTarget) data(write bool, fn func(rw dataRW) error) error {
	if t.b == nil {
		return errors.New("no guest data: PATH is only a label area")
	}
	return withData(t.b, write, fn)
}

// dataRW reads and writes the guest-visible region of a backing.
type dataRW interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
}

type mapRW struct{ m []byte }

func (r mapRW) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(r.m)) {
		return 0, io.EOF
	}
	return copy(p, r.m[off:]), nil
}

func (r mapRW) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(r.m)) {
		return 0, io.ErrShortWrite
	}
	return copy(r.m[off:], p), nil
}

func (r mapRW) Sync() error { return unix.Msync(r.m, unix.MS_SYNC) }

type fileRW struct {
	f     *os.File
	limit int64
}

func (r fileRW) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > r.limit {
		return 0, io.EOF
	}
	return r.f.ReadAt(p, off)
}

func (r fileRW) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > r.limit {
		return 0, fmt.Errorf("write of %d bytes at %d beyond the %d-byte guest region", len(p), off, r.limit)
	}
	return r.f.WriteAt(p, off)
}

func (r fileRW) Sync() error { return unix.Fdatasync(int(r.f.Fd())) }

func withData(b *memfile.Backing, write bool, fn func(rw dataRW) error) error {
	guest := int64(b.Layout().GuestSize)
	if b.Kind() == memfile.KindDevDAX {
		m, unmap, err := memfile.Map(b, !write)
		if err != nil {
			return err
		}
		err = fn(mapRW{m[:guest]})
		if uerr := unmap(); err == nil {
			err = uerr
		}
		return err
	}
	return fn(fileRW{b.File(), guest})
}

// labelJSON is one label in `label list --json`.
type labelJSON struct {
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

// infoJSON is a decoded info block.
type infoJSON struct {
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

func infoToJSON(ib *label.InfoBlock, nsSize uint64, parent label.UUID) *infoJSON {
	j := &infoJSON{Kind: ib.Kind(), UUID: ib.UUID.String(), ParentUUID: ib.ParentUUID.String(),
		Version: fmt.Sprintf("%d.%d", ib.VersionMajor, ib.VersionMinor), DataOff: ib.DataOff, NPFNs: ib.NPFNs,
		Align: ib.Align, EndTrunc: ib.EndTrunc, DataSize: ib.NPFNs * 4096, Valid: true}
	if err := ib.Validate(nsSize, parent); err != nil {
		j.Valid, j.Error = false, err.Error()
	}
	return j
}

type namespaceJSON struct {
	UUID      string      `json:"uuid"`
	Name      string      `json:"name"`
	Mode      string      `json:"mode"`
	Size      uint64      `json:"size"`
	Labels    []labelJSON `json:"labels"`
	InfoBlock *infoJSON   `json:"info_block,omitempty"`
}

// listJSON is `label list --json`; Version is "" for an unlabelled area
// (no valid index block), with current_index -1.
type listJSON struct {
	Version      string          `json:"version"`
	NSlot        uint32          `json:"nslot"`
	CurrentIndex int             `json:"current_index"`
	Seq          uint32          `json:"seq"`
	Namespaces   []namespaceJSON `json:"namespaces"`
}

func listArea(t *labelTarget, a *label.Area) listJSON {
	out := listJSON{Version: string(a.Version()), CurrentIndex: a.Current, Namespaces: []namespaceJSON{}}
	if x := a.CurrentIndex(); x != nil {
		out.NSlot, out.Seq = x.NSlot, x.Seq&3
	}
	for _, ns := range a.Namespaces() {
		nj := namespaceJSON{UUID: ns.UUID.String(), Name: ns.Name, Mode: ns.Mode, Size: ns.Size, Labels: []labelJSON{}}
		for _, s := range ns.Labels {
			l := s.Label
			nj.Labels = append(nj.Labels, labelJSON{Slot: s.Slot, Flags: l.Flags, NLabel: l.NLabel, Position: l.Position,
				ISetCookie: fmt.Sprintf("0x%016x", l.ISetCookie), LBASize: l.LBASize, DPA: l.DPA, RawSize: l.RawSize,
				AbstractionGUID: l.AbstractionGUID.String()})
		}
		if t.b != nil {
			_ = t.data(false, func(rw dataRW) error {
				ib, err := label.ReadInfoBlock(rw, int64(ns.DPA()))
				if err != nil {
					return err
				}
				nj.InfoBlock = infoToJSON(ib, ns.Size, ns.UUID)
				// v1.1 labels do not record fsdax/devdax: the info block does.
				if nj.InfoBlock.Valid && ns.Mode == label.ModeRaw && a.Version() == label.V11 {
					nj.Mode = ib.Kind()
				}
				return nil
			})
		}
		out.Namespaces = append(out.Namespaces, nj)
	}
	return out
}

func printList(w io.Writer, path string, l listJSON) error {
	if l.Version == "" {
		_, err := fmt.Fprintf(w, "%s: no valid label index (unlabelled; run label init)\n", path)
		return err
	}
	fmt.Fprintf(w, "%s: labels v%s, %d slots, index block %d current (seq %d), %d namespace(s)\n",
		path, l.Version, l.NSlot, l.CurrentIndex, l.Seq, len(l.Namespaces))
	for _, n := range l.Namespaces {
		fmt.Fprintf(w, "  %-16q %s  %-6s %s", n.Name, n.UUID, n.Mode, memfile.FormatSize(n.Size))
		for _, lb := range n.Labels {
			fmt.Fprintf(w, "  dpa %#x slot %d cookie %s", lb.DPA, lb.Slot, lb.ISetCookie)
			if lb.Flags&label.FlagUpdating != 0 {
				fmt.Fprint(w, " UPDATING")
			}
		}
		fmt.Fprintln(w)
		if ib := n.InfoBlock; ib != nil {
			fmt.Fprintf(w, "    info block: %s uuid %s, data at +%s, %s usable", ib.Kind, ib.UUID, memfile.FormatSize(ib.DataOff), memfile.FormatSize(ib.DataSize))
			if !ib.Valid {
				fmt.Fprintf(w, " (INVALID: %s)", ib.Error)
			}
			fmt.Fprintln(w)
		}
	}
	return nil
}

// recordMeta stores the namespace in the backing's metadata record.
func recordMeta(t *labelTarget, name, mode string, uuid label.UUID, clear bool) error {
	if t.b == nil || t.b.Meta() == nil {
		return nil
	}
	m := *t.b.Meta()
	if clear {
		if m.UUID != uuid.String() {
			return nil
		}
		m.Namespace, m.Mode, m.UUID = "", "", ""
	} else {
		m.Namespace, m.Mode, m.UUID = name, mode, uuid.String()
		if t.slot >= 0 {
			m.Slot = t.slot
		}
	}
	return memfile.WriteMeta(t.path, &m)
}

// nsResult is the output of label create and of create --namespace.
type nsResult struct {
	UUID      string    `json:"uuid"`
	Name      string    `json:"name"`
	Mode      string    `json:"mode"`
	Size      uint64    `json:"size"`
	DPA       uint64    `json:"dpa"`
	Slot      int       `json:"slot"`
	Version   string    `json:"label_version,omitempty"`
	InfoBlock *infoJSON `json:"info_block,omitempty"`
	Warnings  []string  `json:"warnings,omitempty"`
}

// writeInfo writes (fsdax/devdax) or clears (raw) the info block of a
// namespace at dpa in the backing's data, and syncs it.
func writeInfo(t *labelTarget, mode string, dpa, size uint64, parent label.UUID) (*infoJSON, error) {
	var out *infoJSON
	err := t.data(true, func(rw dataRW) error {
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
		out = infoToJSON(ib, size, parent)
		return rw.Sync()
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.path, err)
	}
	return out, nil
}

// createNamespace places and writes a namespace: info block first (in
// space no label owns yet), then the labels.
func createNamespace(t *labelTarget, e *label.Editor, spec label.NamespaceSpec) (*nsResult, error) {
	res := &nsResult{Name: spec.Name, Mode: spec.Mode, Version: string(e.Area().Version())}
	if t.slot < 0 {
		t.slot = 0
		res.Warnings = append(res.Warnings, "no DIMM slot recorded or given: labels written for slot 0 (use --slot, or label retarget later)")
	}
	res.Slot = t.slot
	spec.Cookies = *t.cookies()
	spec.DIMMSize = t.dimmSize
	// Every check before the first write, so a refusal changes nothing.
	plan, err := e.Plan(spec)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.path, err)
	}
	dpa, size := plan.DPA, plan.RawSize
	spec.UUID, spec.Size = plan.UUID, size
	if spec.Mode != label.ModeRaw {
		// The info block's own checks (namespace big enough for its
		// memmap) also come before any write.
		if _, err := label.NewInfoBlock(label.InfoParams{Mode: spec.Mode, ParentUUID: spec.UUID, Size: size}); err != nil {
			return nil, fmt.Errorf("%s: %w", t.path, err)
		}
	}
	if t.b != nil {
		if res.InfoBlock, err = writeInfo(t, spec.Mode, dpa, size, spec.UUID); err != nil {
			return nil, err
		}
	} else if spec.Mode != label.ModeRaw {
		res.Warnings = append(res.Warnings, "--area: no guest data here, so no info block was written; the guest's ndctl must set the mode")
	}
	ns, err := e.Create(spec)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.path, err)
	}
	res.UUID, res.Size, res.DPA = ns.UUID.String(), ns.Size, ns.DPA()
	if err := recordMeta(t, spec.Name, spec.Mode, ns.UUID, false); err != nil {
		return nil, err
	}
	return res, nil
}

func printNS(w io.Writer, r *nsResult) error {
	fmt.Fprintf(w, "namespace %q %s: %s %s at dpa %#x (labels v%s, slot %d)\n", r.Name, r.UUID, r.Mode, memfile.FormatSize(r.Size), r.DPA, r.Version, r.Slot)
	if ib := r.InfoBlock; ib != nil {
		fmt.Fprintf(w, "  info block %s uuid %s: data at +%s, %s usable\n", ib.Kind, ib.UUID, memfile.FormatSize(ib.DataOff), memfile.FormatSize(ib.DataSize))
	}
	for _, wn := range r.Warnings {
		fmt.Fprintf(w, "warning: %s\n", wn)
	}
	return nil
}

func provision(cmd *cobra.Command, b *memfile.Backing, ns namespaceRequest) (any, error) {
	t := &labelTarget{path: b.Path(), b: b, dimmSize: b.Layout().GuestSize, slot: ns.Slot}
	mode := ns.Mode
	if mode == "" {
		mode = label.ModeFSDAX
	}
	var u label.UUID
	if ns.UUID != "" {
		var err error
		if u, err = label.ParseUUID(ns.UUID); err != nil {
			return nil, fmt.Errorf("--uuid: %w", err)
		}
	}
	if b.Layout().LabelSize == 0 {
		// Label-less NVDIMM or virtio-pmem: the info block alone sets the mode.
		if mode == label.ModeRaw {
			return nil, errors.New("--namespace with mode raw needs a label area (--label-size)")
		}
		ib, err := writeInfo(t, mode, 0, b.Layout().GuestSize, label.UUID{})
		if err != nil {
			return nil, err
		}
		res := &nsResult{Name: ns.Name, Mode: mode, Size: b.Layout().GuestSize, Slot: t.slot, InfoBlock: ib,
			Warnings: []string{"no label area: wrote only the info block; the name is kept in the metadata"}}
		if ib != nil {
			res.UUID = ib.UUID
		}
		if err := recordMeta(t, ns.Name, mode, label.UUID{}, false); err != nil {
			return nil, err
		}
		return res, nil
	}
	a, err := b.LabelArea()
	if err != nil {
		return nil, err
	}
	t.dev, t.size = a, a.Size()
	e, err := label.NewEditor(a, a.Size())
	if err != nil {
		return nil, err
	}
	if err := e.Init(label.InitOptions{Version: label.V12}); err != nil {
		return nil, err
	}
	return createNamespace(t, e, label.NamespaceSpec{UUID: u, Name: ns.Name, Mode: mode})
}

func newLabelCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "label",
		Short: "Inspect and edit NVDIMM namespace label areas and info blocks",
		Long: `Namespace label areas offline: PATH is a backing file whose metadata
records the label size, or any file with --label-size N (its last N bytes),
or a bare label area with --area. Editing refuses a backing a running VM
holds unless --force.`,
	}
	root.AddCommand(newLabelInitCmd(), newLabelListCmd(), newLabelCreateCmd(), newLabelDestroyCmd(),
		newLabelRenameCmd(), newLabelCheckCmd(), newLabelDumpCmd(), newLabelRetargetCmd(), newLabelInfoCmd())
	return root
}

func newLabelInitCmd() *cobra.Command {
	var o labelTargetOpts
	var version string
	var force bool
	cmd := &cobra.Command{
		Use:   "init PATH [--version 1.1|1.2]",
		Short: "Write two empty index blocks (v1.2 like the kernel, v1.1 like ndctl)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := label.ParseVersion(version)
			if err != nil {
				return err
			}
			t, err := openLabelTarget(args[0], &o, true)
			if err != nil {
				return err
			}
			defer t.close()
			e, err := label.NewEditor(t.dev, t.size)
			if err != nil {
				return err
			}
			if err := e.Init(label.InitOptions{Version: v, Force: force}); err != nil {
				if errors.Is(err, label.ErrLabelled) {
					return fmt.Errorf("%s: %w (pass --reinit to drop them)", args[0], err)
				}
				return fmt.Errorf("%s: %w", args[0], err)
			}
			// --reinit dropped every namespace: forget the recorded one.
			if m := metaOf(t); m != nil && m.UUID != "" {
				if u, err := label.ParseUUID(m.UUID); err == nil {
					if err := recordMeta(t, "", "", u, true); err != nil {
						return err
					}
				}
			}
			g := e.Area().Geometry
			res := map[string]any{"path": args[0], "version": string(v), "nslot": g.NSlot, "index_size": g.IndexSize, "area_size": g.AreaSize}
			return output(cmd, res, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "%s: initialised v%s labels: %d slots, %d-byte index blocks\n", args[0], v, g.NSlot, g.IndexSize)
				return err
			})
		},
	}
	o.addFlags(cmd, true)
	cmd.Flags().StringVar(&version, "version", "1.2", "label version: 1.2 (256-byte labels, the kernel's default) or 1.1 (ndctl's default)")
	cmd.Flags().BoolVar(&force, "reinit", false, "re-initialise an area that already has labels (drops every namespace)")
	return cmd
}

func newLabelListCmd() *cobra.Command {
	var o labelTargetOpts
	cmd := &cobra.Command{
		Use:   "list PATH",
		Short: "List the namespaces of a label area (and their info blocks)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := openLabelTarget(args[0], &o, false)
			if err != nil {
				return err
			}
			defer t.close()
			a, err := label.Parse(t.dev, t.size)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			l := listArea(t, a)
			return output(cmd, l, func(w io.Writer) error { return printList(w, args[0], l) })
		},
	}
	o.addFlags(cmd, false)
	return cmd
}

func newLabelCreateCmd() *cobra.Command {
	var o labelTargetOpts
	var size, align sizeFlag
	var name, mode, uuid string
	cmd := &cobra.Command{
		Use:   "create PATH --name NAME [--size SIZE] [--mode fsdax|devdax|raw] [--uuid UUID]",
		Short: "Create a namespace (labels, and its info block in the backing)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec := label.NamespaceSpec{Name: name, Mode: mode, Size: size.v, Align: align.v}
			if uuid != "" {
				u, err := label.ParseUUID(uuid)
				if err != nil {
					return fmt.Errorf("--uuid: %w", err)
				}
				spec.UUID = u
			}
			if _, err := label.ModeGUID(mode); err != nil || mode == label.ModeSector {
				return fmt.Errorf("--mode %q: want fsdax, devdax or raw", mode)
			}
			t, err := openLabelTarget(args[0], &o, true)
			if err != nil {
				return err
			}
			defer t.close()
			if t.dimmSize == 0 {
				return errors.New("--area needs --dimm-size (the guest-visible DIMM size)")
			}
			e, err := label.NewEditor(t.dev, t.size)
			if err != nil {
				return err
			}
			if !e.Area().Labelled {
				return fmt.Errorf("%s: %w", args[0], label.ErrUnlabelled)
			}
			res, err := createNamespace(t, e, spec)
			if err != nil {
				return err
			}
			return output(cmd, res, func(w io.Writer) error { return printNS(w, res) })
		},
	}
	o.addFlags(cmd, true)
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "namespace name (at most 63 bytes)")
	f.StringVar(&mode, "mode", label.ModeFSDAX, "fsdax, devdax or raw")
	f.StringVar(&uuid, "uuid", "", "namespace UUID (default random)")
	f.Var(&size, "size", "namespace size (default: the largest free extent); a multiple of the region alignment")
	f.Var(&align, "align", "placement granule (default 16M, Linux's region alignment)")
	_ = cmd.MarkFlagRequired("name")
	return cmd
}

// pick finds the namespace chosen by --name or --uuid.
func pick(a *label.Area, name, uuid string) (*label.Namespace, error) {
	if (name == "") == (uuid == "") {
		return nil, errors.New("choose the namespace with exactly one of --name or --uuid")
	}
	var u label.UUID
	if uuid != "" {
		var err error
		if u, err = label.ParseUUID(uuid); err != nil {
			return nil, fmt.Errorf("--uuid: %w", err)
		}
	}
	return a.FindNamespace(u, name)
}

func newLabelDestroyCmd() *cobra.Command {
	var o labelTargetOpts
	var name, uuid string
	cmd := &cobra.Command{
		Use:   "destroy PATH (--name NAME | --uuid UUID)",
		Short: "Destroy a namespace (frees its labels in one index update)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := openLabelTarget(args[0], &o, true)
			if err != nil {
				return err
			}
			defer t.close()
			e, err := label.NewEditor(t.dev, t.size)
			if err != nil {
				return err
			}
			ns, err := pick(e.Area(), name, uuid)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			if err := e.Destroy(ns.UUID); err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			if err := recordMeta(t, "", "", ns.UUID, true); err != nil {
				return err
			}
			res := map[string]any{"destroyed": ns.UUID.String(), "name": ns.Name}
			return output(cmd, res, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "destroyed namespace %q %s\n", ns.Name, ns.UUID)
				return err
			})
		},
	}
	o.addFlags(cmd, true)
	cmd.Flags().StringVar(&name, "name", "", "namespace name")
	cmd.Flags().StringVar(&uuid, "uuid", "", "namespace UUID")
	return cmd
}

func newLabelRenameCmd() *cobra.Command {
	var o labelTargetOpts
	var name, uuid, to string
	cmd := &cobra.Command{
		Use:   "rename PATH (--name NAME | --uuid UUID) --to NEWNAME",
		Short: "Rename a namespace",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := openLabelTarget(args[0], &o, true)
			if err != nil {
				return err
			}
			defer t.close()
			e, err := label.NewEditor(t.dev, t.size)
			if err != nil {
				return err
			}
			ns, err := pick(e.Area(), name, uuid)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			if err := e.Rename(ns.UUID, to); err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			if m := metaOf(t); m != nil && m.UUID == ns.UUID.String() {
				if err := recordMeta(t, to, m.Mode, ns.UUID, false); err != nil {
					return err
				}
			}
			res := map[string]any{"uuid": ns.UUID.String(), "old_name": ns.Name, "name": to}
			return output(cmd, res, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "renamed %q to %q (%s)\n", ns.Name, to, ns.UUID)
				return err
			})
		},
	}
	o.addFlags(cmd, true)
	cmd.Flags().StringVar(&name, "name", "", "current namespace name")
	cmd.Flags().StringVar(&uuid, "uuid", "", "namespace UUID")
	cmd.Flags().StringVar(&to, "to", "", "new name")
	_ = cmd.MarkFlagRequired("to")
	return cmd
}

func metaOf(t *labelTarget) *memfile.Meta {
	if t.b == nil {
		return nil
	}
	return t.b.Meta()
}

type checkJSON struct {
	Clean    bool                `json:"clean"`
	Slot     int                 `json:"slot"`
	Problems []label.Problem     `json:"problems"`
	Repair   *label.RepairReport `json:"repair,omitempty"`
}

func newLabelCheckCmd() *cobra.Command {
	var o labelTargetOpts
	var repair bool
	cmd := &cobra.Command{
		Use:   "check PATH [--repair]",
		Short: "Diagnose a label area; --repair fixes what can be fixed",
		Long: `Reports every inconsistency Linux would trip over: invalid index blocks,
bad label checksums, slot field mismatches, duplicate UUIDs, overlapping DPA
ranges, labels beyond the DIMM, cookies of another DIMM slot. Exit status 1
if the area is not clean. Nothing is changed without --repair.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := openLabelTarget(args[0], &o, repair)
			if err != nil {
				return err
			}
			defer t.close()
			co := label.CheckOptions{Cookies: t.cookies(), DIMMSize: t.dimmSize}
			res := checkJSON{Slot: t.slot}
			if repair {
				e, err := label.NewEditor(t.dev, t.size)
				if err != nil {
					return err
				}
				r, err := e.Repair(co)
				if err != nil {
					return fmt.Errorf("%s: repair: %w", args[0], err)
				}
				res.Repair, res.Problems = &r, r.Remaining
				// Cookies now follow t.slot: record it, as retarget does.
				if m := metaOf(t); m != nil && r.Retarget > 0 && m.Slot != t.slot {
					mm := *m
					mm.Slot = t.slot
					if err := memfile.WriteMeta(args[0], &mm); err != nil {
						return err
					}
				}
			} else {
				a, err := label.Parse(t.dev, t.size)
				if err != nil {
					return fmt.Errorf("%s: %w", args[0], err)
				}
				res.Problems = label.Check(a, co)
			}
			if res.Problems == nil {
				res.Problems = []label.Problem{}
			}
			res.Clean = label.Clean(res.Problems)
			err = output(cmd, res, func(w io.Writer) error {
				if r := res.Repair; r != nil {
					fmt.Fprintf(w, "repair: freed slots %v, retargeted %d namespace(s), rewrote staging index: %v\n", r.Freed, r.Retarget, r.Staging)
				}
				for _, p := range res.Problems {
					fmt.Fprintf(w, "%s\n", p)
				}
				if t.slot < 0 {
					fmt.Fprintln(w, "note: no DIMM slot known, cookies not checked (use --slot)")
				}
				if res.Clean {
					fmt.Fprintf(w, "%s: clean\n", args[0])
				} else {
					fmt.Fprintf(w, "%s: NOT clean\n", args[0])
				}
				return nil
			})
			if err == nil && !res.Clean {
				return errNotClean
			}
			return err
		},
	}
	o.addFlags(cmd, true)
	cmd.Flags().BoolVar(&repair, "repair", false, "fix repairable problems (crash-safe updates)")
	return cmd
}

var errNotClean = errors.New("label area is not clean")

type dumpIndex struct {
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

type dumpSlot struct {
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

type dumpJSON struct {
	Size     int64          `json:"size"`
	Geometry label.Geometry `json:"geometry"`
	Current  int            `json:"current_index"`
	Index    []dumpIndex    `json:"index"`
	Slots    []dumpSlot     `json:"slots"`
}

func newLabelDumpCmd() *cobra.Command {
	var o labelTargetOpts
	var all bool
	cmd := &cobra.Command{
		Use:   "dump PATH [--all]",
		Short: "Print both index blocks and every non-empty slot, raw fields",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := openLabelTarget(args[0], &o, false)
			if err != nil {
				return err
			}
			defer t.close()
			raw, err := label.ReadArea(t.dev, t.size)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			a, err := label.ParseBytes(raw)
			if err != nil {
				return err
			}
			d := dumpJSON{Size: a.Size, Geometry: a.Geometry, Current: a.Current, Index: []dumpIndex{}, Slots: []dumpSlot{}}
			for _, b := range a.Blocks {
				x := b.Index
				di := dumpIndex{Offset: b.Offset, Valid: b.Err == nil, Sig: strings.TrimRight(string(x.Signature[:]), "\x00"),
					Seq: x.Seq, MyOff: x.MyOff, MySize: x.MySize, OtherOff: x.OtherOff, LabelOff: x.LabelOff, NSlot: x.NSlot,
					Major: x.Major, Minor: x.Minor, LabelSz: x.LabelSize(), Checksum: fmt.Sprintf("0x%016x", x.Checksum)}
				if b.Err != nil {
					di.Error = b.Err.Error()
				}
				for k := uint32(0); k < a.Geometry.NSlot; k++ {
					if x.IsFree(k) {
						di.Free++
					}
				}
				d.Index = append(d.Index, di)
			}
			for k := uint32(0); k < a.Geometry.NSlot; k++ {
				s := a.DecodeSlot(k)
				if !all && !s.Live && isZero(a.SlotBytes(k)) {
					continue
				}
				l := s.Label
				ds := dumpSlot{Slot: k, Offset: s.Offset, Live: s.Live, Valid: s.Err == nil, UUID: l.UUID.String(), Name: l.NameString(),
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
			return output(cmd, d, func(w io.Writer) error {
				fmt.Fprintf(w, "area %d bytes: %d-byte labels, %d-byte index blocks, %d slots; current index %d\n",
					d.Size, d.Geometry.LabelSize, d.Geometry.IndexSize, d.Geometry.NSlot, d.Current)
				for i, x := range d.Index {
					fmt.Fprintf(w, "index %d @%d: valid=%v sig=%q seq=%d myoff=%#x mysize=%#x otheroff=%#x labeloff=%#x nslot=%d v%d.%d labelsize=%d checksum=%s free=%d",
						i, x.Offset, x.Valid, x.Sig, x.Seq, x.MyOff, x.MySize, x.OtherOff, x.LabelOff, x.NSlot, x.Major, x.Minor, x.LabelSz, x.Checksum, x.Free)
					if x.Error != "" {
						fmt.Fprintf(w, " (%s)", x.Error)
					}
					fmt.Fprintln(w)
				}
				for _, s := range d.Slots {
					fmt.Fprintf(w, "slot %d @%d: live=%v valid=%v uuid=%s name=%q flags=%#x nlabel=%d pos=%d cookie=%s lbasize=%d dpa=%#x rawsize=%#x slot=%d",
						s.Slot, s.Offset, s.Live, s.Valid, s.UUID, s.Name, s.Flags, s.NLabel, s.Position, s.ISetCookie, s.LBASize, s.DPA, s.RawSize, s.SlotField)
					if s.TypeGUID != "" {
						fmt.Fprintf(w, " type=%s abstraction=%s checksum=%s", s.TypeGUID, s.AbstractionGUID, s.Checksum)
					}
					if s.Error != "" {
						fmt.Fprintf(w, " (%s)", s.Error)
					}
					fmt.Fprintln(w)
				}
				return nil
			})
		},
	}
	o.addFlags(cmd, false)
	cmd.Flags().BoolVar(&all, "all", false, "also print empty free slots")
	return cmd
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func newLabelRetargetCmd() *cobra.Command {
	var o labelTargetOpts
	cmd := &cobra.Command{
		Use:   "retarget PATH --slot N",
		Short: "Rewrite the interleave-set cookies for DIMM slot N (after moving a backing)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.slot < 0 {
				return errors.New("--slot is required")
			}
			t, err := openLabelTarget(args[0], &o, true)
			if err != nil {
				return err
			}
			defer t.close()
			t.slot = o.slot
			e, err := label.NewEditor(t.dev, t.size)
			if err != nil {
				return err
			}
			n, err := e.Retarget(*t.cookies())
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			if m := metaOf(t); m != nil && m.Slot != o.slot {
				mm := *m
				mm.Slot = o.slot
				if err := memfile.WriteMeta(args[0], &mm); err != nil {
					return err
				}
			}
			res := map[string]any{"slot": o.slot, "namespaces_rewritten": n}
			return output(cmd, res, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "%s: %d namespace(s) retargeted to slot %d\n", args[0], n, o.slot)
				return err
			})
		},
	}
	o.addFlags(cmd, true)
	return cmd
}

func newLabelInfoCmd() *cobra.Command {
	var o labelTargetOpts
	var offset, align sizeFlag
	var write string
	cmd := &cobra.Command{
		Use:   "infoblock PATH [--offset N] [--write fsdax|devdax [--align A]]",
		Short: "Decode the PFN/DAX info block at namespace offset 4K, or write one for a label-less device",
		Long: `Without --write, decodes the info block of the namespace starting at
--offset (default 0). With --write, writes an info block covering the whole
guest-visible region: for label-less NVDIMMs and virtio-pmem devices, so the
guest sees an fsdax or devdax device at first boot.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := openLabelTargetData(args[0], &o, write != "")
			if err != nil {
				return err
			}
			defer t.close()
			size := t.dimmSize - offset.v
			if offset.v >= t.dimmSize {
				return fmt.Errorf("--offset %d is beyond the %d-byte guest region", offset.v, t.dimmSize)
			}
			var ij *infoJSON
			if write != "" {
				err = t.data(true, func(rw dataRW) error {
					ib, err := label.NewInfoBlock(label.InfoParams{Mode: write, Size: size, Align: align.v})
					if err != nil {
						return err
					}
					if err := label.WriteInfoBlock(rw, int64(offset.v), ib); err != nil {
						return err
					}
					ij = infoToJSON(ib, size, label.UUID{})
					return rw.Sync()
				})
			} else {
				err = t.data(false, func(rw dataRW) error {
					ib, err := label.ReadInfoBlock(rw, int64(offset.v))
					if err != nil {
						return err
					}
					ij = infoToJSON(ib, size, ib.ParentUUID)
					return nil
				})
			}
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			return output(cmd, ij, func(w io.Writer) error {
				fmt.Fprintf(w, "%s info block v%s uuid %s parent %s\n  dataoff %s, %d pages (%s), align %s, end_trunc %d, valid %v %s\n",
					ij.Kind, ij.Version, ij.UUID, ij.ParentUUID, memfile.FormatSize(ij.DataOff), ij.NPFNs, memfile.FormatSize(ij.DataSize),
					memfile.FormatSize(uint64(ij.Align)), ij.EndTrunc, ij.Valid, ij.Error)
				return nil
			})
		},
	}
	o.addFlags(cmd, true)
	cmd.Flags().Var(&offset, "offset", "namespace start in the guest region (default 0)")
	cmd.Flags().StringVar(&write, "write", "", "write a fresh info block: fsdax or devdax")
	cmd.Flags().Var(&align, "align", "mapping alignment for --write (default 2M)")
	return cmd
}

// infoAt is one place inspect looked for a PFN/DAX info block.
type infoAt struct {
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
	Found     bool      `json:"found"`
	InfoBlock *infoJSON `json:"info_block,omitempty"`
	Error     string    `json:"error,omitempty"`
}

// inspectInfoBlocks decodes the info block of every namespace of the
// backing at path: each labelled namespace's start (its dpa) or, without
// a label area, the start of the guest region. Problems are reported in
// the entries, never as an error; a labelled area without a valid index
// has no namespaces and gives no entries.
func inspectInfoBlocks(path string, o memfile.OpenOptions) []infoAt {
	o.ReadOnly = true
	b, err := memfile.Open(path, o)
	if err != nil {
		return []infoAt{{Error: err.Error()}}
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
			return []infoAt{{Error: err.Error()}}
		}
		a, err := label.Parse(la, la.Size())
		if err != nil {
			return []infoAt{{Error: err.Error()}}
		}
		for _, ns := range a.Namespaces() {
			places = append(places, place{ns.Name, ns.UUID, ns.DPA(), ns.Size})
		}
	}
	out := []infoAt{}
	for _, p := range places {
		e := infoAt{Namespace: p.name, DPA: p.dpa, Offset: p.dpa + label.InfoBlockOffset, Size: p.size}
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
			e.Found, e.InfoBlock = true, infoToJSON(ib, p.size, p.uuid)
			return nil
		})
		if err != nil && !errors.Is(err, label.ErrNoInfoBlock) {
			e.Error = err.Error()
		}
		out = append(out, e)
	}
	return out
}

// printInfoBlocks is the human form of inspectInfoBlocks' result.
func printInfoBlocks(w io.Writer, ibs []infoAt) {
	for _, e := range ibs {
		where := fmt.Sprintf("at offset %d", e.Offset)
		if e.Namespace != "" || e.UUID != "" {
			where = fmt.Sprintf("of %q %s", e.Namespace, where)
		}
		switch {
		case e.Error != "" && e.Offset == 0:
			fmt.Fprintf(w, "  info block    unreadable: %s\n", e.Error)
		case e.Error != "":
			fmt.Fprintf(w, "  info block    %s: %s\n", where, e.Error)
		case !e.Found:
			fmt.Fprintf(w, "  info block    none %s (the guest sees a raw namespace until ndctl sets a mode)\n", where)
		default:
			ib := e.InfoBlock
			fmt.Fprintf(w, "  info block    %s %s: v%s uuid %s, data at +%s, %s usable, align %s",
				where, ib.Kind, ib.Version, ib.UUID, memfile.FormatSize(ib.DataOff), memfile.FormatSize(ib.DataSize), memfile.FormatSize(uint64(ib.Align)))
			if !ib.Valid {
				fmt.Fprintf(w, " (INVALID: %s)", ib.Error)
			}
			fmt.Fprintln(w)
		}
	}
}

// openLabelTargetData opens a backing for its data (a label area is not
// needed).
func openLabelTargetData(path string, o *labelTargetOpts, write bool) (*labelTarget, error) {
	if o.area {
		return nil, errors.New("infoblock works on a backing's data, not on --area")
	}
	oo := memfile.OpenOptions{ReadOnly: !write, LabelSize: o.labelSize.v}
	b, err := memfile.Open(path, oo)
	if err != nil {
		return nil, err
	}
	// A --label-size the metadata record contradicts is refused, not
	// silently replaced by the recorded one.
	if err := b.CheckOptions(oo); err != nil {
		b.Close()
		return nil, err
	}
	if write {
		if err := lockForEdit(b, o.force); err != nil {
			return nil, err
		}
	}
	return &labelTarget{path: path, b: b, dimmSize: b.Layout().GuestSize, slot: -1, close: b.Close}, nil
}

func init() {
	register(newLabelCmd)
	provisionNamespace = provision
}
