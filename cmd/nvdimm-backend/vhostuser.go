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
	"golang.org/x/sys/unix"

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
}

func vhostUserServeCmd() *cobra.Command {
	var socket, backing string
	cmd := &cobra.Command{
		Use:   "serve --socket PATH --backing PATH",
		Short: "Serve one backing as a virtio-pmem device on a vhost-user socket until interrupted",
		Long: `Serve one backing as a virtio-pmem device (virtio id 27) on a vhost-user
Unix socket (created mode 0600). The backing is mapped into the guest as
shared-memory region 0 (VIRTIO_PMEM_F_SHMEM_REGION), so its guest size must
be a power of two; guest flushes sync the backing. QEMU 11.1.2 or later
connects with vhost-user-test-device-pci (see the printed arguments); a
front-end that disconnects may reconnect. SIGINT or SIGTERM stops serving.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if socket == "" || backing == "" {
				return errors.New("--socket and --backing are required")
			}
			return runVhostUserServe(cmd, socket, backing)
		},
	}
	f := cmd.Flags()
	f.StringVar(&socket, "socket", "", "vhost-user socket path to listen on")
	f.StringVar(&backing, "backing", "", "backing file or device (see create)")
	return cmd
}

// fdatasyncFlusher is the flush path until a flush engine is wired in:
// every request runs one fdatasync of the backing.
type fdatasyncFlusher struct{ f *os.File }

func (s fdatasyncFlusher) Flush(context.Context) error {
	for {
		err := unix.Fdatasync(int(s.f.Fd()))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("fdatasync %s: %w", s.f.Name(), err)
		}
		return nil
	}
}

func runVhostUserServe(cmd *cobra.Command, socket, path string) error {
	b, err := memfile.Open(path, memfile.OpenOptions{})
	if err != nil {
		return err
	}
	defer b.Close()
	if b.ReadOnly() {
		return fmt.Errorf("backing %s is read-only: QEMU 11.1.2 maps every vhost-user shared-memory region writable whatever the flag, so a read-only virtio-pmem device cannot be offered on this transport", path)
	}
	if err := b.Lock(memfile.LockExclusive, false); err != nil {
		return err
	}
	size := b.Layout().GuestSize
	if err := memfile.CheckSHMEMRegionSize(size); err != nil {
		return fmt.Errorf("backing %s guest size: %w", path, err)
	}
	flusher := fdatasyncFlusher{b.File()}
	svc, err := pmem.Start(pmem.ServiceOptions{Socket: socket, Name: path}, pmem.Options{Flusher: flusher, File: b.File(), Size: size, Shmem: true})
	if err != nil {
		return err
	}
	info := vhostUserServeInfo{
		Socket: socket, Backing: path, Kind: b.Kind(), Size: size,
		Flush:     "fdatasync per request",
		Guarantee: "a flush completes after an fdatasync of the backing that started after the request arrived",
		QEMUArgs: []string{
			"-object", "memory-backend-memfd,id=ram,size=RAM,share=on", "-machine", "memory-backend=ram",
			"-chardev", "socket,id=pmem0,path=" + socket,
			"-device", fmt.Sprintf("vhost-user-test-device-pci,chardev=pmem0,virtio-id=%d,num_vqs=1,config_size=%d", pmem.DeviceID, pmem.ConfigSize),
		},
	}
	if err := output(cmd, info, func(w io.Writer) error {
		fmt.Fprintf(w, "serving %s (%s, %s) as virtio-pmem on %s\n", path, b.Kind(), memfile.FormatSize(size), socket)
		fmt.Fprintf(w, "flush: %s\n", info.Flush)
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
	st := &svc.Server.Stats
	ds := &svc.Device.Stats
	res := vhostUserServeStats{
		Connections: st.Connections.Load(), Requests: st.Requests.Load(), BadChains: st.BadChains.Load(),
		ShmemMaps: st.ShmemMaps.Load(), Flushes: ds.Flushes.Load(), Failures: ds.Failures.Load(), Invalid: ds.Invalid.Load(),
	}
	if err := output(cmd, res, func(w io.Writer) error {
		_, err := fmt.Fprintf(w, "stopped: %d connections, %d requests, %d flushes, %d failed, %d invalid, %d bad chains\n",
			res.Connections, res.Requests, res.Flushes, res.Failures, res.Invalid, res.BadChains)
		return err
	}); err != nil {
		return err
	}
	return cerr
}
