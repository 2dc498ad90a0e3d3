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
	"github.com/nvdimm-backend/nvdimm-backend/internal/atomicfile"
	"github.com/nvdimm-backend/nvdimm-backend/memfile"
	"github.com/nvdimm-backend/nvdimm-backend/vhostuser"
	"github.com/nvdimm-backend/nvdimm-backend/vhostuser/pmem"
)

// serveKeeperCommand runs this program's hidden keeper verb (the keeper
// socket path is appended); keeper.go sets it with daemon.KeeperCommand.
// A test binary leaves it nil (running the test binary again would run
// the tests); the CLI tests set it for the serve processes they start.
var serveKeeperCommand []string

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
	// Keeper is the keeper socket ("" with --no-keeper); TakeOver is set
	// when a keeper was already running (pid KeeperPID): this serve takes
	// QEMU's connection over from it.
	Keeper    string `json:"keeper,omitempty"`
	TakeOver  bool   `json:"take_over,omitempty"`
	KeeperPID int    `json:"keeper_pid,omitempty"`
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
	// Connection is what happened to QEMU's connection: "kept" (the
	// keeper, pid KeeperPID, holds it for the next serve on the same
	// socket), "released" (the keeper was told to let it go), "none" (no
	// keeper was running: no front-end had connected, or it had left) or
	// "closed" (--no-keeper: the socket closed with this process).
	Connection string `json:"connection"`
	KeeperPID  int    `json:"keeper_pid,omitempty"`
}

// Values of vhostUserServeStats.Connection.
const (
	connKept     = "kept"
	connReleased = "released"
	connNone     = "none"
	connClosed   = "closed"
)

func vhostUserServeCmd() *cobra.Command {
	var socket, backing string
	var rate float64
	var burst int
	var noKeeper, release bool
	cmd := &cobra.Command{
		Use:   "serve --socket PATH --backing PATH",
		Short: "Serve one backing as a virtio-pmem device on a vhost-user socket until interrupted",
		Long: `Serve one backing as a virtio-pmem device (virtio id 27) on a vhost-user
Unix socket (created mode 0600). The backing is mapped into the guest as
shared-memory region 0 (VIRTIO_PMEM_F_SHMEM_REGION), so its guest size must
be a power of two, and it must have no label area (as for qemu-args
--virtio-pmem); guest flushes sync the backing. QEMU 11.1.2 or later
connects with vhost-user-test-device-pci (see the printed arguments).

QEMU 11.1.2 cannot reconnect to a back-end, so by default QEMU's
connection is also held by a keeper process (socket PATH.keeper, log
PATH.keeper.log, the backing it belongs to in PATH.keeper.json), which
outlives this command:

  - SIGINT or SIGTERM stops serving and leaves the connection with the
    keeper; the guest's flushes wait. Running serve again on the same
    socket with the same backing takes the connection over, as does a
    serve started after this one crashed or was killed. A serve with a
    different backing is refused while the keeper runs.
  - With --release, SIGINT or SIGTERM instead tells the keeper to let
    QEMU's connection go: the guest loses the device for good. Stopping
    the keeper (kill PID, printed on exit) does the same.
  - The keeper exits by itself when QEMU closes the connection (the VM
    shut down).

--no-keeper serves without one: the connection closes with this process
and QEMU 11.1.2 cannot use the device again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if socket == "" || backing == "" {
				return errors.New("--socket and --backing are required")
			}
			if noKeeper && release {
				return errors.New("--release is about the keeper; it has no meaning with --no-keeper")
			}
			so := serveOptions{socket: socket, backing: backing, flush: flushhint.Options{RateLimit: rate, Burst: burst}, keeper: !noKeeper, release: release}
			return runVhostUserServe(cmd, so)
		},
	}
	f := cmd.Flags()
	f.StringVar(&socket, "socket", "", "vhost-user socket path to listen on")
	f.StringVar(&backing, "backing", "", "backing file or device (see create)")
	f.Float64Var(&rate, "rate-limit", 0, "at most this many syncs per second (0: unlimited); flushes arriving meanwhile share the next sync")
	f.IntVar(&burst, "burst", 1, "syncs allowed back to back before --rate-limit applies")
	f.BoolVar(&noKeeper, "no-keeper", false, "no keeper process: QEMU's connection ends with this process")
	f.BoolVar(&release, "release", false, "on SIGINT/SIGTERM let QEMU's connection go instead of leaving it with the keeper")
	return cmd
}

type serveOptions struct {
	socket, backing string
	flush           flushhint.Options
	keeper, release bool
}

func runVhostUserServe(cmd *cobra.Command, so serveOptions) error {
	socket, path := so.socket, so.backing
	// Signals are caught from the start: a SIGTERM that arrives once the
	// socket exists, before serving begins, must still stop it cleanly
	// (detach or release), not kill it with QEMU's connection unkept.
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// lockB holds the backing's lock and nothing else. The device maps
	// (and sends QEMU) a second open of the same file: QEMU keeps its
	// copy of that descriptor while the guest runs, and a lock on it
	// would outlive this process and refuse the serve that takes over.
	lockB, err := memfile.Open(path, memfile.OpenOptions{})
	if err != nil {
		return err
	}
	defer lockB.Close()
	// The rules of qemu-args --virtio-pmem (no read-only mode, no label
	// area, a mappable size) and the shared-memory region's power of two.
	size, labelSize := lockB.Layout().GuestSize, lockB.Layout().LabelSize
	if err := pmem.CheckShmemBacking(path, size, labelSize, lockB.ReadOnly()); err != nil {
		return err
	}
	if err := lockB.Lock(memfile.LockExclusive, false); err != nil {
		return err
	}
	b, err := memfile.Open(path, memfile.OpenOptions{})
	if err != nil {
		return err
	}
	defer b.Close()
	id, err := pmem.BackingIdentity(lockB, b, size)
	if err != nil {
		return err
	}
	var k vhostuser.Keeper
	var prev int // pid of a keeper already running
	if so.keeper {
		if len(serveKeeperCommand) == 0 {
			return errors.New("vhost-user serve: cannot find this program to run its keeper; use --no-keeper")
		}
		k = vhostuser.Keeper{Path: socket + ".keeper", Start: startServeKeeper}
		if prev, err = pmem.CheckKeeper(k.Path, id); err != nil {
			return err
		}
	}
	strat, err := flushhint.ForBacking(b.Kind(), b.File(), "")
	if err != nil {
		return err
	}
	engine, err := flushhint.NewEngine(path, strat, so.flush)
	if err != nil {
		return err
	}
	defer engine.Close()
	svc, err := pmem.Start(pmem.ServiceOptions{Socket: socket, Name: path, Keeper: k}, pmem.Options{Flusher: engine, File: b.File(), Size: size, LabelSize: labelSize, Shmem: true})
	if err != nil {
		return err
	}
	if so.keeper && prev == 0 {
		// Written after Listen succeeded (a serve refused because
		// another one listens must not overwrite it) and before any
		// front-end can have made a keeper start (attachKeeper runs
		// after an accept, so at worst microseconds later).
		if err := atomicfile.WriteJSON(k.Path+".json", id, 0o600); err != nil {
			svc.Close(context.Background())
			return fmt.Errorf("keeper record: %w", err)
		}
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
		Keeper: k.Path, TakeOver: prev != 0, KeeperPID: prev,
	}
	if err := output(cmd, info, func(w io.Writer) error {
		fmt.Fprintf(w, "serving %s (%s, %s) as virtio-pmem on %s\n", path, b.Kind(), memfile.FormatSize(size), socket)
		fmt.Fprintf(w, "flush: %s with group commit; %s\n", info.Flush, info.Guarantee)
		switch {
		case prev != 0:
			fmt.Fprintf(w, "taking QEMU's connection over from the keeper (pid %d) on %s\n", prev, k.Path)
		case so.keeper && so.release:
			fmt.Fprintf(w, "keeper: %s (survives a crash of this command; SIGINT/SIGTERM let QEMU's connection go)\n", k.Path)
		case so.keeper:
			fmt.Fprintf(w, "keeper: %s (SIGINT/SIGTERM leave QEMU's connection with it; serve again to take over)\n", k.Path)
		default:
			fmt.Fprintf(w, "no keeper: QEMU's connection ends with this process\n")
		}
		fmt.Fprintf(w, "QEMU (11.1.2 or later; guest RAM must be shared):\n")
		for i := 0; i < len(info.QEMUArgs); i += 2 {
			fmt.Fprintf(w, "  %s %s\n", info.QEMUArgs[i], info.QEMUArgs[i+1])
		}
		return nil
	}); err != nil {
		svc.Close(context.Background())
		return err
	}
	<-ctx.Done()
	cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res := vhostUserServeStats{Connection: connClosed}
	var cerr error
	switch {
	case !so.keeper:
		cerr = svc.Close(cctx)
	case so.release:
		res.Connection = connNone
		if pid, ok := vhostuser.KeeperPID(k.Path); ok {
			res.Connection, res.KeeperPID = connReleased, pid
		}
		cerr = svc.Close(cctx)
	default:
		cerr = svc.Detach(cctx)
		res.Connection = connNone
		// A keeper that is still there after the session ended holds
		// QEMU's connection (it exits when QEMU hangs up).
		if pid, ok := vhostuser.KeeperPID(k.Path); ok {
			res.Connection, res.KeeperPID = connKept, pid
		}
	}
	if err := engine.Close(); err != nil && cerr == nil {
		cerr = fmt.Errorf("final sync of %s: %w", path, err)
	}
	if so.keeper && res.Connection != connKept && vhostuser.KeeperGone(k.Path, 2*time.Second) {
		// Nothing to take over: the record would only be left behind.
		os.Remove(k.Path + ".json")
	}
	es := engine.Stats()
	st := &svc.Server.Stats
	ds := &svc.Device.Stats
	res.Connections, res.Requests, res.BadChains = st.Connections.Load(), st.Requests.Load(), st.BadChains.Load()
	res.ShmemMaps, res.Flushes, res.Failures, res.Invalid = st.ShmemMaps.Load(), ds.Flushes.Load(), ds.Failures.Load(), ds.Invalid.Load()
	res.Syncs, res.Coalesced = es.Syncs, es.Coalesced
	if err := output(cmd, res, func(w io.Writer) error {
		// The counters come last: scripts show the last line.
		switch res.Connection {
		case connKept:
			fmt.Fprintf(w, "QEMU's connection is left with the keeper (pid %d); run serve again on %s with the same backing to take it over (kill %d lets QEMU go: the guest loses the device)\n",
				res.KeeperPID, socket, res.KeeperPID)
		case connReleased:
			fmt.Fprintf(w, "released: the keeper (pid %d) let QEMU's connection go\n", res.KeeperPID)
		case connNone:
			fmt.Fprintf(w, "no front-end connection to keep\n")
		}
		_, err := fmt.Fprintf(w, "stopped: %d connections, %d requests, %d flushes (%d syncs, %d coalesced), %d failed, %d invalid, %d bad chains\n",
			res.Connections, res.Requests, res.Flushes, res.Syncs, res.Coalesced, res.Failures, res.Invalid, res.BadChains)
		return err
	}); err != nil {
		return err
	}
	return cerr
}

// startServeKeeper is vhostuser.Keeper.Start for serve.
func startServeKeeper(path string) error {
	return vhostuser.StartKeeperProcess(serveKeeperCommand, path)
}
