package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/nvdimm-backend/nvdimm-backend/daemon"
	"github.com/nvdimm-backend/nvdimm-backend/daemon/libvirthook"
	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

// Verbs of the serving daemon: serve, device ..., libvirt-hook.

func init() {
	register(newServeCmd)
	register(newDeviceCmd)
	register(newLibvirtHookCmd)
}

func newServeCmd() *cobra.Command {
	var stateDir, sock, catalogDir string
	var backingDirs []string
	var writeback time.Duration
	c := &cobra.Command{
		Use:   "serve",
		Short: "Run the daemon: device registry, control API, attach flows, vhost-user servers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			reg := daemon.NewRegistry()
			if catalogDir == "" {
				catalogDir = filepath.Join(stateDir, "images")
			}
			cat, err := memfile.OpenCatalog(catalogDir)
			if err != nil {
				return err
			}
			d, err := daemon.New(daemon.Config{
				StateDir: stateDir, BackingDirs: backingDirs,
				Images:    daemon.CatalogImages{Catalog: cat},
				Registry:  reg,
				VhostUser: daemon.PMemVhostUser(reg, slog.Default()),
				Writeback: daemon.FileWriteback(reg, writeback, slog.Default()),
				Backings:  daemon.MemfileBackings{},
				DialQMP:   daemon.DialQMP,
				Logger:    slog.Default(),
			})
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			d.Recover(ctx)
			l, err := daemon.ListenControl(sock)
			if err != nil {
				_ = d.Close(context.Background())
				return err
			}
			defer os.Remove(sock)
			slog.Info("serving", "control_socket", sock, "state_dir", stateDir, "backing_dirs", d.Confiner().Dirs(), "catalog", d.Confiner().CatalogDir())
			return d.Serve(ctx, l)
		},
	}
	c.Flags().StringVar(&stateDir, "state-dir", daemon.DefaultStateDir(), "state directory (registry, vhost-user sockets)")
	c.Flags().StringVar(&sock, "control-socket", daemon.DefaultControlSocket(), "control socket path (created 0600)")
	c.Flags().StringArrayVar(&backingDirs, "backing-dir", nil, "directory backings may live in (repeatable; default <state-dir>/backings)")
	c.Flags().StringVar(&catalogDir, "catalog", "", "image catalog directory for devices made with --image (default <state-dir>/images); usable for images only")
	c.Flags().DurationVar(&writeback, "nvdimm-writeback", 5*time.Second, "sync interval for NVDIMMs on plain files, whose guests cannot flush (0: off)")
	return c
}

func newDeviceCmd() *cobra.Command {
	var sock string
	client := func() *daemon.Client { return daemon.NewClient(sock) }
	c := &cobra.Command{Use: "device", Short: "Manage the daemon's devices (create, list, show, attach, delete)"}
	c.PersistentFlags().StringVar(&sock, "control-socket", daemon.DefaultControlSocket(), "daemon control socket (or $"+daemon.SocketEnv+")")

	var req daemon.CreateRequest
	var size, label sizeFlag
	var slot int
	create := &cobra.Command{
		Use:   "create NAME (--backing PATH [--size SIZE] [--label-size SIZE] [--namespace NAME --mode MODE] [--readonly] | --image IMAGE)",
		Short: "Register a device; its backing is created when missing and adopted when present, or it is a catalogued image (read-only)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			if (req.Backing == "") == (req.Image == "") {
				return errors.New("device create: give exactly one of --backing PATH and --image IMAGE")
			}
			if req.Image != "" && cmd.Flags().Changed("readonly") && !req.ReadOnly {
				return fmt.Errorf("device create: refusing --readonly=false with --image %s: images are shared read-only by every guest; make a private writable copy with `image clone %s PATH` and use --backing", req.Image, req.Image)
			}
			if req.Backing != "" && !filepath.IsAbs(req.Backing) {
				abs, err := filepath.Abs(req.Backing)
				if err != nil {
					return err
				}
				req.Backing = abs
			}
			req.Size, req.LabelSize = size.v, label.v
			if slot >= 0 {
				req.Slot = &slot
			}
			dv, err := client().Create(cmd.Context(), req)
			if err != nil {
				return err
			}
			return output(cmd, dv, func(w io.Writer) error { return printDevice(w, dv) })
		},
	}
	create.Flags().StringVar(&req.Backing, "backing", "", "backing path (file under a backing directory, /dev/daxX.Y or /dev/pmemN)")
	create.Flags().Var(&size, "size", "guest-visible size, e.g. 1G (needed to create)")
	create.Flags().Var(&label, "label-size", "label area size (0 or at least 128K)")
	create.Flags().StringVar(&req.Namespace, "namespace", "", "namespace to provision in the label area")
	create.Flags().StringVar(&req.Mode, "mode", "", "namespace mode: fsdax, devdax or raw")
	create.Flags().IntVar(&slot, "slot", -1, "DIMM slot the namespace labels are written for (with --namespace)")
	create.Flags().BoolVar(&req.ReadOnly, "readonly", false, "read-only device (nvdimm attached unarmed)")
	create.Flags().StringVar(&req.Image, "image", "", "make the device from this catalogued image (read-only, attached as an nvdimm; many devices may share one image)")

	list := &cobra.Command{
		Use: "list", Short: "List devices", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			devs, err := client().List(cmd.Context())
			if err != nil {
				return err
			}
			return output(cmd, daemon.DeviceList{Devices: devs}, func(w io.Writer) error {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tSIZE\tLABEL\tMODE\tRO\tATTACHED\tBACKING")
				for _, d := range devs {
					att := "-"
					if d.Attached != nil {
						att = d.Attached.Kind + " @ " + d.Attached.QMP
					}
					backing := d.Backing
					if d.Image != "" {
						backing = "image " + d.Image + ": " + d.Backing
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%s\t%s\n", d.Name, memfile.FormatSize(d.Size), memfile.FormatSize(d.LabelSize), dash(d.Mode), d.ReadOnly, att, backing)
				}
				return tw.Flush()
			})
		},
	}
	show := &cobra.Command{
		Use: "show NAME", Short: "Show one device", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dv, err := client().Get(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return output(cmd, dv, func(w io.Writer) error { return printDevice(w, dv) })
		},
	}
	var areq daemon.AttachRequest
	attach := &cobra.Command{
		Use:   "attach NAME --qmp SOCKET --as nvdimm|virtio-pmem|vhost-user",
		Short: "Hot-add a device to a running VM through its QMP socket",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if areq.QMP != "" && !filepath.IsAbs(areq.QMP) {
				abs, err := filepath.Abs(areq.QMP)
				if err != nil {
					return err
				}
				areq.QMP = abs
			}
			dv, err := client().Attach(cmd.Context(), args[0], areq)
			if err != nil {
				return err
			}
			return output(cmd, dv, func(w io.Writer) error { return printDevice(w, dv) })
		},
	}
	attach.Flags().StringVar(&areq.QMP, "qmp", "", "the VM's QMP socket")
	attach.Flags().StringVar(&areq.As, "as", "nvdimm", "nvdimm, virtio-pmem or vhost-user")
	attach.Flags().StringVar(&areq.Bus, "bus", "", "PCI bus id for virtio-pmem and vhost-user (e.g. a pcie-root-port)")
	_ = attach.MarkFlagRequired("qmp")
	detach := &cobra.Command{
		Use: "detach NAME", Short: "Ask QEMU to unplug a device (QEMU refuses for nvdimm and virtio-pmem)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dv, err := client().Detach(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return output(cmd, dv, func(w io.Writer) error { return printDevice(w, dv) })
		},
	}
	var purge bool
	del := &cobra.Command{
		Use: "delete NAME [--purge]", Short: "Remove an unattached device from the registry", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := client().Delete(cmd.Context(), args[0], purge); err != nil {
				return err
			}
			v := map[string]any{"deleted": args[0], "purged": purge}
			return output(cmd, v, func(w io.Writer) error { _, err := fmt.Fprintf(w, "deleted %s\n", args[0]); return err })
		},
	}
	del.Flags().BoolVar(&purge, "purge", false, "also remove the backing if the daemon created it")
	c.AddCommand(create, list, show, attach, detach, del)
	return c
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printDevice(w io.Writer, d daemon.Device) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "name:\t%s\n", d.Name)
	if d.Image != "" {
		fmt.Fprintf(tw, "image:\t%s (shared read-only, attached as an unarmed nvdimm)\n", d.Image)
	}
	fmt.Fprintf(tw, "backing:\t%s (%s, created by daemon: %v)\n", d.Backing, memfile.FormatSize(d.BackingSize), d.Created)
	fmt.Fprintf(tw, "guest size:\t%s\n", memfile.FormatSize(d.Size))
	fmt.Fprintf(tw, "label size:\t%s\n", memfile.FormatSize(d.LabelSize))
	if d.Namespace != "" || d.Mode != "" {
		fmt.Fprintf(tw, "namespace:\t%s (%s)\n", dash(d.Namespace), dash(d.Mode))
	}
	fmt.Fprintf(tw, "read-only:\t%v\n", d.ReadOnly)
	if d.Attached != nil {
		a := d.Attached
		fmt.Fprintf(tw, "attached:\t%s to %s as %s at 0x%x (since %s)\n", a.DeviceID, a.QMP, a.Kind, a.Addr, a.AttachedAt.Format("2006-01-02 15:04:05Z07:00"))
	} else {
		fmt.Fprintf(tw, "attached:\tno\n")
	}
	if d.VhostUserSocket != "" {
		fmt.Fprintf(tw, "vhost-user socket:\t%s\n", d.VhostUserSocket)
	}
	return tw.Flush()
}

func newLibvirtHookCmd() *cobra.Command {
	var stateDir string
	var backingDirs []string
	c := &cobra.Command{
		Use:   "libvirt-hook DOMAIN OP SUBOP [EXTRA]",
		Short: "libvirt QEMU hook: validate and prepare nvdimm/virtio-pmem backings (domain XML on stdin)",
		Long: "Install as an executable in /etc/libvirt/hooks/qemu.d/ that runs\n" +
			"  exec nvdimm-backend libvirt-hook \"$@\"\n" +
			"On 'prepare begin' it checks every <memory model='nvdimm'|'virtio-pmem'>, creates missing\n" +
			"backings under the backing directories and claims them; on 'release end' it drops the claim\n" +
			"and removes backings it created under <backing-dir>/" + libvirthook.EphemeralDir + "/.",
		Args: cobra.RangeArgs(3, 4),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(backingDirs) == 0 {
				backingDirs = []string{daemon.DefaultBackingDir(stateDir)}
			}
			conf, err := daemon.NewConfiner(backingDirs)
			if err != nil {
				return err
			}
			err = libvirthook.Run(libvirthook.Config{StateDir: stateDir, Confiner: conf, Log: cmd.ErrOrStderr()}, args, cmd.InOrStdin())
			if err != nil {
				return fmt.Errorf("%s", strings.TrimPrefix(err.Error(), "libvirt-hook: "))
			}
			return nil
		},
	}
	c.Flags().StringVar(&stateDir, "state-dir", daemon.DefaultStateDir(), "state directory (claim records)")
	c.Flags().StringArrayVar(&backingDirs, "backing-dir", nil, "managed backing directory (repeatable; default <state-dir>/backings)")
	return c
}
