package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

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

// syncFlusher makes a flush durable with fsync of the backing (what QEMU's
// own virtio-pmem does) and counts flushes in flight so that Close can
// drain them.
type syncFlusher struct {
	f  *os.File
	wg sync.WaitGroup
}

func (s *syncFlusher) Flush(ctx context.Context) error {
	s.wg.Add(1)
	defer s.wg.Done()
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", s.f.Name(), err)
	}
	return nil
}

// pmemServer is one device's vhost-user virtio-pmem server.
type pmemServer struct {
	name    string
	backing *memfile.Backing
	srv     *vhostuser.Server
	flusher *syncFlusher
	cancel  context.CancelFunc
	done    chan struct{}
	reg     prometheus.Registerer
	metrics []prometheus.Collector
}

// PMemVhostUser returns the production VhostUserFactory: a virtio-pmem
// device (vhostuser/pmem) exposing the backing as shared-memory region 0,
// flushing with fsync, served on the socket with vhostuser.Server. Its
// counters are registered in reg with a "device" label.
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
		fl := &syncFlusher{f: b.File()}
		pd, err := pmem.New(pmem.Options{Flusher: fl, File: b.File(), Size: dev.Size, Shmem: true, Log: log.With("device", dev.Name)})
		if err != nil {
			b.Close()
			return nil, err
		}
		srv, err := vhostuser.NewServer(pd, log.With("device", dev.Name))
		if err != nil {
			b.Close()
			return nil, err
		}
		if err := srv.Listen(sock); err != nil {
			b.Close()
			return nil, err
		}
		ctx, cancel := context.WithCancel(context.Background())
		p := &pmemServer{name: dev.Name, backing: b, srv: srv, flusher: fl, cancel: cancel, done: make(chan struct{}), reg: reg}
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

// Close stops the server, waits (within ctx) for flushes in flight,
// makes the backing durable once more and closes it.
func (p *pmemServer) Close(ctx context.Context) error {
	err := p.srv.Close()
	p.cancel()
	if errors.Is(err, net.ErrClosed) { // Serve's context already closed it
		err = nil
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return fmt.Errorf("vhost-user server %s: %w", p.name, ctx.Err())
	}
	drained := make(chan struct{})
	go func() { p.flusher.wg.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-ctx.Done():
		return fmt.Errorf("vhost-user server %s: flushes still in flight: %w", p.name, ctx.Err())
	}
	if serr := p.backing.File().Sync(); serr != nil {
		err = errors.Join(err, serr)
	}
	if p.reg != nil {
		for _, m := range p.metrics {
			p.reg.Unregister(m)
		}
	}
	return errors.Join(err, p.backing.Close())
}
