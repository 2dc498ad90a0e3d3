package main

// Verbs for the vhost-user virtio-pmem back-end: vhost-user serve.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/nvdimm-backend/nvdimm-backend/flushhint"
	"github.com/nvdimm-backend/nvdimm-backend/memfile"
	"github.com/nvdimm-backend/nvdimm-backend/vhostuser/pmem"
)

func init() {
	register(func() *cobra.Command {
		cmd := &cobra.Command{
			Use:   "vhost-user",
			Short: "Serve virtio-pmem devices over vhost-user",
		}
		cmd.AddCommand(vhostUserServeCmd())
		return cmd
	})
}

// vhostUserServeInfo is the --json start-up record of `vhost-user serve`.
type vhostUserServeInfo struct {
	Socket    string   `json:"socket"`
	Backing   string   `json:"backing"`
	Kind      string   `json:"kind"`
	Size      uint64   `json:"size"`
	Flush     string   `json:"flush"`
	Guarantee string   `json:"guarantee"`
	QEMUArgs  []string `json:"qemu_args"`
}

// vhostUserServeStats is the --json record printed when serving stops.
type vhostUserServeStats struct {
	Connections uint64 `json:"connections"`
	Requests    uint64 `json:"requests"`
	Flushes     uint64 `json:"flushes"`
	Failures    uint64 `json:"failures"`
	Invalid     uint64 `json:"invalid"`
	BadChains   uint64 `json:"bad_chains"`
	ShmemMaps   uint64 `json:"shmem_maps"`
	Syncs       uint64 `json:"syncs"`
	Coalesced   uint64 `json:"coalesced"`
}

func vhostUserServeCmd() *cobra.Command {
	var socket, backing string
	var rate float64
	var burst int
	cmd := &cobra.Command{
		Use:   "serve --socket PATH --backing PATH",
		Short: "Serve one backing as a virtio-pmem device on a vhost-user socket until interrupted",
		Long: `Serve one backing as a virtio-pmem device (virtio id 27) on a vhost-user
Unix socket (created mode 0600). The backing is mapped into the guest as
shared-memory region 0 (VIRTIO_PMEM_F_SHMEM_REGION), so its guest size must
be a power of two, and it must have no label area (as for qemu-args
--virtio-pmem); guest flushes sync the backing. QEMU 11.1.2 or later
connects with vhost-user-test-device-pci (see the printed arguments); a
front-end that disconnects may reconnect. SIGINT or SIGTERM stops serving.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if socket == "" || backing == "" {
				return errors.New("--socket and --backing are required")
			}
			return runVhostUserServe(cmd, socket, backing, flushhint.Options{RateLimit: rate, Burst: burst})
		},
	}
	f := cmd.Flags()
	f.StringVar(&socket, "socket", "", "vhost-user socket path to listen on")
	f.StringVar(&backing, "backing", "", "backing file or device (see create)")
	f.Float64Var(&rate, "rate-limit", 0, "at most this many syncs per second (0: unlimited); flushes arriving meanwhile share the next sync")
	f.IntVar(&burst, "burst", 1, "syncs allowed back to back before --rate-limit applies")
	return cmd
}

func runVhostUserServe(cmd *cobra.Command, socket, path string, fo flushhint.Options) error {
	b, err := memfile.Open(path, memfile.OpenOptions{})
	if err != nil {
		return err
	}
	defer b.Close()
	// The rules of qemu-args --virtio-pmem (no read-only mode, no label
	// area, a mappable size) and the shared-memory region's power of two.
	size, labelSize := b.Layout().GuestSize, b.Layout().LabelSize
	if err := pmem.CheckShmemBacking(path, size, labelSize, b.ReadOnly()); err != nil {
		return err
	}
	if err := b.Lock(memfile.LockExclusive, false); err != nil {
		return err
	}
	strat, err := flushhint.ForBacking(b.Kind(), b.File(), "")
	if err != nil {
		return err
	}
	engine, err := flushhint.NewEngine(path, strat, fo)
	if err != nil {
		return err
	}
	defer engine.Close()
	svc, err := pmem.Start(pmem.ServiceOptions{Socket: socket, Name: path}, pmem.Options{Flusher: engine, File: b.File(), Size: size, LabelSize: labelSize, Shmem: true})
	if err != nil {
		return err
	}
	info := vhostUserServeInfo{
		Socket: socket, Backing: path, Kind: b.Kind(), Size: size,
		Flush:     strat.Name(),
		Guarantee: strat.Guarantee(),
		QEMUArgs: []string{
			"-object", "memory-backend-memfd,id=ram,size=RAM,share=on", "-machine", "memory-backend=ram",
			"-chardev", "socket,id=pmem0,path=" + socket,
			"-device", fmt.Sprintf("vhost-user-test-device-pci,chardev=pmem0,virtio-id=%d,num_vqs=1,config_size=%d", pmem.DeviceID, pmem.ConfigSize),
		},
	}
	if err := output(cmd, info, func(w io.Writer) error {
		fmt.Fprintf(w, "serving %s (%s, %s) as virtio-pmem on %s\n", path, b.Kind(), memfile.FormatSize(size), socket)
		fmt.Fprintf(w, "flush: %s with group commit; %s\n", info.Flush, info.Guarantee)
		fmt.Fprintf(w, "QEMU (11.1.2 or later; guest RAM must be shared):\n")
		for i := 0; i < len(info.QEMUArgs); i += 2 {
			fmt.Fprintf(w, "  %s %s\n", info.QEMUArgs[i], info.QEMUArgs[i+1])
		}
		return nil
	}); err != nil {
		svc.Close(context.Background())
		return err
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cerr := svc.Close(cctx)
	if err := engine.Close(); err != nil && cerr == nil {
		cerr = fmt.Errorf("final sync of %s: %w", path, err)
	}
	es := engine.Stats()
	st := &svc.Server.Stats
	ds := &svc.Device.Stats
	res := vhostUserServeStats{
		Connections: st.Connections.Load(), Requests: st.Requests.Load(), BadChains: st.BadChains.Load(),
		ShmemMaps: st.ShmemMaps.Load(), Flushes: ds.Flushes.Load(), Failures: ds.Failures.Load(), Invalid: ds.Invalid.Load(),
		Syncs: es.Syncs, Coalesced: es.Coalesced,
	}
	if err := output(cmd, res, func(w io.Writer) error {
		_, err := fmt.Fprintf(w, "stopped: %d connections, %d requests, %d flushes (%d syncs, %d coalesced), %d failed, %d invalid, %d bad chains\n",
			res.Connections, res.Requests, res.Flushes, res.Syncs, res.Coalesced, res.Failures, res.Invalid, res.BadChains)
		return err
	}); err != nil {
		return err
	}
	return cerr
}
