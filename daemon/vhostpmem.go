package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/nvdimm-backend/nvdimm-backend/flushhint"
	"github.com/nvdimm-backend/nvdimm-backend/memfile"
	"github.com/nvdimm-backend/nvdimm-backend/vhostuser"
	"github.com/nvdimm-backend/nvdimm-backend/vhostuser/pmem"
)

// NewRegistry returns a Prometheus registry with the Go and process
// collectors, for Config.Registry.
func NewRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// pmemServer is one device's vhost-user virtio-pmem server.
type pmemServer struct {
	name    string
	backing *memfile.Backing
	srv     *vhostuser.Server
	engine  *flushhint.Engine
	cancel  context.CancelFunc
	done    chan struct{}
	reg     prometheus.Registerer
	metrics []prometheus.Collector
}

// PMemVhostUser returns the production VhostUserFactory: a virtio-pmem
// device (vhostuser/pmem) exposing the backing as shared-memory region 0,
// its flushes going through a flushhint.Engine (group commit, the sync
// strategy memfile's kind calls for), served on the socket with
// vhostuser.Server. The engine's and the server's metrics are registered
// in reg with a "device" label.
func PMemVhostUser(reg prometheus.Registerer, log *slog.Logger) VhostUserFactory {
	if log == nil {
		log = slog.Default()
	}
	return func(dev Device, sock string) (VhostUserServer, error) {
		if dev.ReadOnly {
			return nil, errors.New("virtio-pmem over vhost-user cannot be read-only (QEMU maps shared-memory regions writable)")
		}
		b, err := memfile.Open(dev.Backing, memfile.OpenOptions{})
		if err != nil {
			return nil, err
		}
		strat, err := flushhint.ForBacking(b.Kind(), b.File(), "")
		if err != nil {
			b.Close()
			return nil, err
		}
		eng, err := flushhint.NewEngine(dev.Name, strat, flushhint.Options{Registerer: reg, Logger: log})
		if err != nil {
			b.Close()
			return nil, err
		}
		fail := func(err error) (VhostUserServer, error) {
			eng.Close()
			b.Close()
			return nil, err
		}
		pd, err := pmem.New(pmem.Options{Flusher: eng, File: b.File(), Size: dev.Size, Shmem: true, Log: log.With("device", dev.Name)})
		if err != nil {
			return fail(err)
		}
		srv, err := vhostuser.NewServer(pd, log.With("device", dev.Name))
		if err != nil {
			return fail(err)
		}
		if KeeperCommand != nil {
			srv.SetKeeper(vhostuser.Keeper{Path: sock + ".keeper", Start: startKeeper})
		}
		if err := srv.Listen(sock); err != nil {
			return fail(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		p := &pmemServer{name: dev.Name, backing: b, srv: srv, engine: eng, cancel: cancel, done: make(chan struct{}), reg: reg}
		labels := prometheus.Labels{"device": dev.Name}
		counter := func(name, help string, f func() uint64) prometheus.Collector {
			return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels}, func() float64 { return float64(f()) })
		}
		p.metrics = []prometheus.Collector{
			counter("nvdimm_backend_vhost_pmem_flushes_total", "virtio-pmem flush requests completed successfully.", pd.Stats.Flushes.Load),
			counter("nvdimm_backend_vhost_pmem_flush_failures_total", "virtio-pmem requests answered with failure.", pd.Stats.Failures.Load),
			counter("nvdimm_backend_vhost_pmem_invalid_requests_total", "Malformed virtio-pmem requests.", pd.Stats.Invalid.Load),
			counter("nvdimm_backend_vhost_connections_total", "vhost-user front-end connections.", srv.Stats.Connections.Load),
			counter("nvdimm_backend_vhost_bad_chains_total", "Descriptor chains or rings refused.", srv.Stats.BadChains.Load),
		}
		if reg != nil {
			for _, m := range p.metrics {
				if err := reg.Register(m); err != nil {
					log.Warn("vhost-user metrics", "device", dev.Name, "err", err)
				}
			}
		}
		go func() {
			defer close(p.done)
			if err := srv.Serve(ctx); err != nil {
				log.Warn("vhost-user server stopped", "device", dev.Name, "err", err)
			}
		}()
		return p, nil
	}
}

// Close stops the server and lets QEMU's connection go (a release), then
// closes the flush engine, which waits for flushes in flight and syncs
// once more, and closes the backing.
func (p *pmemServer) Close(ctx context.Context) error {
	return p.stop(ctx, p.srv.Close)
}

// Detach is Close for a daemon shutdown while the guest runs: QEMU's
// connection stays with the keeper, and the restarted daemon takes it over.
func (p *pmemServer) Detach(ctx context.Context) error {
	return p.stop(ctx, p.srv.Detach)
}

func (p *pmemServer) stop(ctx context.Context, stopServer func() error) error {
	err := stopServer()
	p.cancel()
	if errors.Is(err, net.ErrClosed) { // Serve's context already closed it
		err = nil
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return fmt.Errorf("vhost-user server %s: %w", p.name, ctx.Err())
	}
	drained := make(chan error, 1)
	go func() { drained <- p.engine.Close() }()
	select {
	case eerr := <-drained:
		err = errors.Join(err, eerr)
	case <-ctx.Done():
		return fmt.Errorf("vhost-user server %s: flushes still in flight: %w", p.name, ctx.Err())
	}
	if p.reg != nil {
		for _, m := range p.metrics {
			p.reg.Unregister(m)
		}
	}
	return errors.Join(err, p.backing.Close())
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// FileWriteback returns a Config.Writeback for NVDIMMs on plain files:
// their guests have no flush path, so a flushhint engine syncs the backing
// every interval (bounding how long written data stays volatile) and
// reports the bytes not yet durable. DAX backings and read-only devices
// get none.
func FileWriteback(reg prometheus.Registerer, interval time.Duration, log *slog.Logger) func(Device) (io.Closer, error) {
	return func(dev Device) (io.Closer, error) {
		if interval <= 0 || dev.ReadOnly {
			return nil, nil
		}
		b, err := memfile.Open(dev.Backing, memfile.OpenOptions{ReadOnly: true})
		if err != nil {
			return nil, err
		}
		if b.Kind() != memfile.KindFile {
			b.Close()
			return nil, nil
		}
		eng, err := flushhint.NewEngine(dev.Name, flushhint.ForFile(b.File()), flushhint.Options{
			Registerer: reg, Logger: log,
			Writeback: flushhint.Writeback{Interval: interval, File: b.File()},
		})
		if err != nil {
			b.Close()
			return nil, err
		}
		return closerFunc(func() error { return errors.Join(eng.Close(), b.Close()) }), nil
	}
}
