package main

// Verbs for namespace label areas and info blocks: label init, list,
// create, destroy, rename, check, dump, retarget, infoblock; and the
// namespace provisioning of `create --namespace`. Every verb is flags ->
// one call into package label/backing -> print.

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/nvdimm-backend/nvdimm-backend/label"
	"github.com/nvdimm-backend/nvdimm-backend/label/backing"
	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

// The JSON shapes of the label verbs (documented in the README) are
// package backing's result types.
type (
	listJSON  = backing.List
	nsResult  = backing.NamespaceResult
	infoJSON  = backing.Info
	infoAt    = backing.InfoAt
	checkJSON = backing.CheckResult
	dumpJSON  = backing.Dump
	dumpSlot  = backing.DumpSlot
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

func (o *labelTargetOpts) options(write bool) backing.Options {
	return backing.Options{LabelSize: o.labelSize.v, AreaOnly: o.area, DIMMSize: o.dimmSize.v, Slot: o.slot, Write: write, Force: o.force}
}

// openLabelTarget opens PATH's label area; editing a backing a running VM
// holds is refused with the --force hint.
func openLabelTarget(path string, o *labelTargetOpts, write bool) (*backing.Area, error) {
	return forceHint(backing.Open(path, o.options(write)))
}

// openLabelTargetData opens a backing for its data (a label area is not
// needed).
func openLabelTargetData(path string, o *labelTargetOpts, write bool) (*backing.Area, error) {
	if o.area {
		return nil, errors.New("infoblock works on a backing's data, not on --area")
	}
	return forceHint(backing.OpenData(path, o.options(write)))
}

func forceHint(t *backing.Area, err error) (*backing.Area, error) {
	if errors.Is(err, memfile.ErrLocked) {
		// memfile's message already says who holds it and to stop it.
		return nil, fmt.Errorf("%w, or pass --force to edit anyway", err)
	}
	return t, err
}

func printList(w io.Writer, path string, l *listJSON) error {
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

// provisionNamespace writes the namespace `create --namespace` asks for
// into the just-created backing b; its result is printed under
// "namespace" in --json output.
func provisionNamespace(b *memfile.Backing, ns namespaceRequest) (*nsResult, error) {
	var u label.UUID
	if ns.UUID != "" {
		var err error
		if u, err = label.ParseUUID(ns.UUID); err != nil {
			return nil, fmt.Errorf("--uuid: %w", err)
		}
	}
	return backing.Provision(b, backing.ProvisionSpec{Name: ns.Name, Mode: ns.Mode, UUID: u, Slot: ns.Slot})
}

// inspectInfoBlocks is the info-block part of inspect.
func inspectInfoBlocks(path string, o memfile.OpenOptions) []infoAt {
	return backing.InspectInfoBlocks(path, o)
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
			defer t.Close()
			g, err := t.Init(label.InitOptions{Version: v, Force: force})
			if errors.Is(err, label.ErrLabelled) {
				return fmt.Errorf("%w (pass --reinit to drop them)", err)
			}
			if err != nil {
				return err
			}
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
			defer t.Close()
			l, err := t.List()
			if err != nil {
				return err
			}
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
			if mode != label.ModeFSDAX && mode != label.ModeDevDAX && mode != label.ModeRaw {
				return fmt.Errorf("--mode %q: want fsdax, devdax or raw", mode)
			}
			t, err := openLabelTarget(args[0], &o, true)
			if err != nil {
				return err
			}
			defer t.Close()
			if t.DIMMSize() == 0 {
				return errors.New("--area needs --dimm-size (the guest-visible DIMM size)")
			}
			res, err := t.Create(spec)
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

// pick turns --name or --uuid into the namespace selector.
func pick(name, uuid string) (backing.Selector, error) {
	if (name == "") == (uuid == "") {
		return backing.Selector{}, errors.New("choose the namespace with exactly one of --name or --uuid")
	}
	if uuid == "" {
		return backing.Selector{Name: name}, nil
	}
	u, err := label.ParseUUID(uuid)
	if err != nil {
		return backing.Selector{}, fmt.Errorf("--uuid: %w", err)
	}
	return backing.Selector{UUID: u}, nil
}

func newLabelDestroyCmd() *cobra.Command {
	var o labelTargetOpts
	var name, uuid string
	cmd := &cobra.Command{
		Use:   "destroy PATH (--name NAME | --uuid UUID)",
		Short: "Destroy a namespace (frees its labels in one index update)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sel, err := pick(name, uuid)
			if err != nil {
				return err
			}
			t, err := openLabelTarget(args[0], &o, true)
			if err != nil {
				return err
			}
			defer t.Close()
			ns, err := t.Destroy(sel)
			if err != nil {
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
			sel, err := pick(name, uuid)
			if err != nil {
				return err
			}
			t, err := openLabelTarget(args[0], &o, true)
			if err != nil {
				return err
			}
			defer t.Close()
			ns, err := t.Rename(sel, to)
			if err != nil {
				return err
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
			defer t.Close()
			res, err := t.Check(repair)
			if err != nil {
				return err
			}
			err = output(cmd, res, func(w io.Writer) error {
				if r := res.Repair; r != nil {
					fmt.Fprintf(w, "repair: freed slots %v, retargeted %d namespace(s), rewrote staging index: %v\n", r.Freed, r.Retarget, r.Staging)
				}
				for _, p := range res.Problems {
					fmt.Fprintf(w, "%s\n", p)
				}
				if res.Slot < 0 {
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
			defer t.Close()
			d, err := t.Dump(all)
			if err != nil {
				return err
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
			defer t.Close()
			n, err := t.Retarget(o.slot)
			if err != nil {
				return err
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
			defer t.Close()
			var ij *infoJSON
			if write != "" {
				ij, err = t.WriteInfoBlock(offset.v, write, align.v)
			} else {
				ij, err = t.ReadInfoBlock(offset.v)
			}
			if err != nil {
				return err
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

func init() { register(newLabelCmd) }
