package main

// Verbs for backing stores: create, inspect, qemu-args, clone.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

// namespaceRequest is what `create --namespace` asks provisionNamespace
// (label.go) to write into the new backing.
type namespaceRequest struct {
	Name, Mode, UUID string
	Slot             int
}

// sizeFlag is a pflag.Value that accepts 4G, 512M, 128K or bytes.
type sizeFlag struct {
	v   uint64
	set bool
}

func (s *sizeFlag) String() string {
	if !s.set {
		return ""
	}
	return memfile.FormatSize(s.v)
}

func (s *sizeFlag) Set(v string) error {
	n, err := memfile.ParseSize(v)
	if err != nil {
		return err
	}
	s.v, s.set = n, true
	return nil
}

func (s *sizeFlag) Type() string { return "size" }

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// progressFunc returns a progress callback that draws a bar on stderr when
// it is a terminal, and nil otherwise.
func progressFunc(cmd *cobra.Command, what string) (func(done, total uint64), func()) {
	w := cmd.ErrOrStderr()
	if !isTerminal(w) {
		return nil, func() {}
	}
	var bar *progressbar.ProgressBar
	return func(done, total uint64) {
			if bar == nil {
				bar = progressbar.NewOptions64(int64(total), progressbar.OptionSetWriter(w),
					progressbar.OptionShowBytes(true), progressbar.OptionSetDescription(what))
			}
			_ = bar.Set64(int64(done))
		}, func() {
			if bar != nil {
				_ = bar.Finish()
				fmt.Fprintln(w)
			}
		}
}

// createResult is the JSON output of create.
type createResult struct {
	Path       string         `json:"path"`
	Meta       string         `json:"meta"`
	Kind       string         `json:"kind"`
	Layout     memfile.Layout `json:"layout"`
	Prealloc   bool           `json:"prealloc"`
	ZeroFilled bool           `json:"zero_filled"`
	Warnings   []string       `json:"warnings,omitempty"`
	Namespace  any            `json:"namespace,omitempty"`
}

func newCreateCmd() *cobra.Command {
	var size, labelSize, align sizeFlag
	var prealloc, readOnly bool
	var ns namespaceRequest
	cmd := &cobra.Command{
		Use:   "create PATH --size SIZE [--label-size SIZE] [--align SIZE] [--prealloc]",
		Short: "Create a backing file whose guest-visible size is SIZE",
		Long: `Create a new backing file (never overwriting anything) sized so that the
guest sees exactly --size bytes, with an optional label area of --label-size
bytes (0, or at least 128K) at its end, and its metadata record
PATH.nvdimm.json. Sizes accept 4G, 512M, 128K or bytes.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := args[0]
			if !size.set {
				return errors.New("--size is required (what the guest sees, e.g. 4G)")
			}
			if ns.Name == "" && (cmd.Flags().Changed("mode") || ns.UUID != "" || ns.Slot >= 0) {
				return errors.New("--mode, --uuid and --slot need --namespace")
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			o := memfile.CreateOptions{
				Size: size.v, LabelSize: labelSize.v, Align: align.v,
				Prealloc: prealloc, ReadOnly: readOnly, Context: ctx,
			}
			var finish func()
			o.Progress, finish = progressFunc(cmd, "preallocating")
			b, rep, err := memfile.CreateWithReport(path, o)
			finish()
			if err != nil {
				return err
			}
			res := createResult{
				Path: path, Meta: memfile.MetaPath(path), Kind: b.Kind(), Layout: b.Layout(),
				Prealloc: prealloc, ZeroFilled: rep.ZeroFilled,
				Warnings: append(append([]string(nil), b.Layout().Warnings...), rep.Warnings...),
			}
			if ns.Name != "" {
				v, err := provisionNamespace(b, ns)
				if err != nil {
					b.Close()
					if rerr := memfile.Remove(path); rerr != nil {
						return fmt.Errorf("%w (and removing the new backing failed: %v)", err, rerr)
					}
					return err
				}
				res.Namespace = v
			}
			if err := b.Close(); err != nil {
				return err
			}
			return output(cmd, res, func(w io.Writer) error {
				l := res.Layout
				fmt.Fprintf(w, "created %s (%s)\n", path, res.Kind)
				fmt.Fprintf(w, "  guest size    %s\n", memfile.FormatSize(l.GuestSize))
				fmt.Fprintf(w, "  backing size  %s (%d bytes)\n", memfile.FormatSize(l.BackingSize), l.BackingSize)
				fmt.Fprintf(w, "  align         %s\n", memfile.FormatSize(l.Align))
				if l.LabelSize != 0 {
					fmt.Fprintf(w, "  label area    %s at offset %d\n", memfile.FormatSize(l.LabelSize), l.LabelOffset)
				} else {
					fmt.Fprintf(w, "  label area    none\n")
				}
				alloc := "sparse"
				if prealloc {
					alloc = "preallocated"
					if rep.ZeroFilled {
						alloc += " (zero-filled: no fallocate on this filesystem)"
					}
				}
				fmt.Fprintf(w, "  allocation    %s\n", alloc)
				fmt.Fprintf(w, "  metadata      %s\n", res.Meta)
				if res.Namespace != nil {
					fmt.Fprintf(w, "  namespace     %s (%s)\n", ns.Name, ns.Mode)
				}
				for _, wn := range res.Warnings {
					fmt.Fprintf(w, "warning: %s\n", wn)
				}
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.Var(&size, "size", "guest-visible size (e.g. 4G, 512M, 128K or bytes)")
	f.Var(&labelSize, "label-size", "label area at the end of the backing: 0 or at least 128K")
	f.Var(&align, "align", "backend alignment, a power of two (default 2M)")
	f.BoolVar(&prealloc, "prealloc", false, "allocate every block now instead of a sparse file")
	f.BoolVar(&readOnly, "read-only", false, "record the backing as read-only (attach only with --readonly)")
	f.StringVar(&ns.Name, "namespace", "", "provision a namespace of this name in the label area")
	f.StringVar(&ns.Mode, "mode", "fsdax", "namespace mode (with --namespace)")
	f.StringVar(&ns.UUID, "uuid", "", "namespace UUID (with --namespace; default random)")
	f.IntVar(&ns.Slot, "slot", -1, "DIMM slot the labels are written for (with --namespace)")
	return cmd
}

// inspectResult is the JSON output of inspect: the backing's Info and
// the PFN/DAX info blocks at its namespaces' starts.
type inspectResult struct {
	memfile.Info
	InfoBlocks []infoAt `json:"info_blocks"`
}

func newInspectCmd() *cobra.Command {
	var labelSize, align sizeFlag
	cmd := &cobra.Command{
		Use:   "inspect PATH",
		Short: "Describe a backing: kind, size, DAX, MAP_SYNC, layout, lock, metadata",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			oo := memfile.OpenOptions{LabelSize: labelSize.v, Align: align.v}
			info, err := memfile.Inspect(args[0], oo)
			if err != nil {
				return err
			}
			in := inspectResult{Info: info, InfoBlocks: inspectInfoBlocks(args[0], oo)}
			return output(cmd, in, func(w io.Writer) error {
				l := in.Layout
				fmt.Fprintf(w, "%s\n", in.Path)
				fmt.Fprintf(w, "  kind          %s\n", in.Kind)
				fmt.Fprintf(w, "  backing size  %s (%d bytes)", memfile.FormatSize(in.Size), in.Size)
				if in.Allocated != 0 || in.Kind == memfile.KindFile || in.Kind == memfile.KindDAXFile {
					fmt.Fprintf(w, ", %s allocated", memfile.FormatSize(in.Allocated))
				}
				fmt.Fprintln(w)
				fmt.Fprintf(w, "  guest size    %s\n", memfile.FormatSize(l.GuestSize))
				fmt.Fprintf(w, "  align         %s", memfile.FormatSize(l.Align))
				if in.DevAlign != 0 {
					fmt.Fprintf(w, " (devdax align %s)", memfile.FormatSize(in.DevAlign))
				}
				fmt.Fprintln(w)
				if l.LabelSize != 0 {
					fmt.Fprintf(w, "  label area    %s at offset %d\n", memfile.FormatSize(l.LabelSize), l.LabelOffset)
				} else {
					fmt.Fprintf(w, "  label area    none\n")
				}
				fmt.Fprintf(w, "  dax           %v\n  map_sync      %v\n  read-only     %v\n  locked by     %s\n",
					in.DAX, in.MapSync, in.ReadOnly, in.LockedBy)
				if m := in.Meta; m != nil {
					fmt.Fprintf(w, "  metadata      %s (version %d)\n", memfile.MetaPath(in.Path), m.Version)
					if m.Namespace != "" || m.UUID != "" {
						fmt.Fprintf(w, "  namespace     %s mode=%s uuid=%s\n", m.Namespace, m.Mode, m.UUID)
					}
					if m.Slot >= 0 {
						fmt.Fprintf(w, "  slot          %d\n", m.Slot)
					}
				} else {
					fmt.Fprintf(w, "  metadata      none (layout from --label-size/--align)\n")
				}
				printInfoBlocks(w, in.InfoBlocks)
				for _, wn := range l.Warnings {
					fmt.Fprintf(w, "warning: %s\n", wn)
				}
				return nil
			})
		},
	}
	cmd.Flags().Var(&labelSize, "label-size", "label size of a backing without metadata (devdax, pmem)")
	cmd.Flags().Var(&align, "align", "align of a backing without metadata (default: devdax align or 2M)")
	return cmd
}

func newQEMUArgsCmd() *cobra.Command {
	var o memfile.QEMUArgOptions
	var labelSize, align, ram sizeFlag
	cmd := &cobra.Command{
		Use:   "qemu-args PATH [--id ID] [--virtio-pmem] [--readonly]",
		Short: "Print the QEMU -machine, -m, -object and -device arguments for a backing",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			oo := memfile.OpenOptions{ReadOnly: true, LabelSize: labelSize.v, Align: align.v}
			b, err := memfile.Open(args[0], oo)
			if err != nil {
				return err
			}
			defer b.Close()
			if err := b.CheckOptions(oo); err != nil {
				return err
			}
			// Opened read-only only to look; the attach mode is o.ReadOnly.
			t := memfile.QEMUTarget{
				Path: b.Path(), Kind: b.Kind(), Layout: b.Layout(),
				DAX:  b.PMem(),
				Slot: memfile.NoSlot,
			}
			if m := b.Meta(); m != nil {
				t.ReadOnly, t.Slot = m.ReadOnly, m.Slot
			}
			o.RAM = ram.v
			a, err := memfile.BuildQEMUArgs(t, o)
			if err != nil {
				return err
			}
			return printQEMUArgs(cmd, a)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.ID, "id", "nv0", "device id (the backend is mem-ID)")
	f.BoolVar(&o.VirtioPMEM, "virtio-pmem", false, "attach as virtio-pmem-pci instead of nvdimm")
	f.BoolVar(&o.ReadOnly, "readonly", false, "attach read-only (readonly=on, unarmed=on)")
	f.IntVar(&o.Slot, "slot", -1, "nvdimm slot (default: the slot in the metadata, else none)")
	f.IntVar(&o.Slots, "slots", 0, "memory slots for -m (default 4)")
	f.Var(&ram, "ram", "guest RAM for -m (default 1G)")
	f.Var(&labelSize, "label-size", "label size of a backing without metadata (devdax, pmem)")
	f.Var(&align, "align", "align of a backing without metadata (default: devdax align or 2M)")
	return cmd
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(",.=/_-+:@%", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// cloneResult is the JSON output of clone.
type cloneResult struct {
	Source string `json:"source"`
	Dest   string `json:"dest"`
	Method string `json:"method"`
}

func newCloneCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "clone SRC DST",
		Short: "Make a writable per-guest copy of a backing (reflink when possible)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			progress, finish := progressFunc(cmd, "copying")
			method, err := memfile.Clone(args[0], args[1], progress)
			finish()
			if err != nil {
				return err
			}
			res := cloneResult{Source: args[0], Dest: args[1], Method: method}
			return output(cmd, res, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "cloned %s to %s (%s)\n", res.Source, res.Dest, res.Method)
				return err
			})
		},
	}
}

func init() {
	register(newCreateCmd)
	register(newInspectCmd)
	register(newQEMUArgsCmd)
	register(newCloneCmd)
}

// printQEMUArgs prints QEMU arguments one option per line (shell-quoted
// values), warnings on stderr, or the whole record with --json.
func printQEMUArgs(cmd *cobra.Command, a memfile.QEMUArgs) error {
	return output(cmd, a, func(w io.Writer) error {
		for i := 0; i+1 < len(a.Argv); i += 2 {
			fmt.Fprintf(w, "%s %s\n", a.Argv[i], shellQuote(a.Argv[i+1]))
		}
		for _, wn := range a.Warnings {
			fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s\n", wn)
		}
		return nil
	})
}
