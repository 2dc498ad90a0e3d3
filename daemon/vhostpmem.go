package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
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

// pmemServer is one device's vhost-user virtio-pmem service (the device
// and its server, vhostuser/pmem.Service) with the flush engine and the
// backing it owns.
type pmemServer struct {
	name    string
	backing *memfile.Backing
	engine  *flushhint.Engine
	svc     *pmem.Service
}

// PMemVhostUser returns the production VhostUserFactory: a virtio-pmem
// device exposing the backing as shared-memory region 0, its flushes going
// through a flushhint.Engine (group commit, the sync strategy memfile's
// kind calls for), served on the socket by pmem.Start. The engine's, the
// device's and the server's metrics are registered in reg with a "device"
// label. With KeeperCommand set, the front-end connection is kept in a
// keeper process at socket + ".keeper".
func PMemVhostUser(reg prometheus.Registerer, log *slog.Logger) VhostUserFactory {
	if log == nil {
		log = slog.Default()
	}
	return func(dev Device, sock string) (VhostUserServer, error) {
		// Refused before the backing is opened writable.
		if err := pmem.CheckShmemBacking(dev.Backing, dev.Size, dev.LabelSize, dev.ReadOnly); err != nil {
			return nil, err
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
		so := pmem.ServiceOptions{Socket: sock, Name: dev.Name, Registerer: reg, Log: log}
		if KeeperCommand != nil {
			so.Keeper = vhostuser.Keeper{Path: sock + ".keeper", Start: startKeeper}
		}
		svc, err := pmem.Start(so, pmem.Options{Flusher: eng, File: b.File(), Size: dev.Size, LabelSize: b.Layout().LabelSize, Shmem: true})
		if err != nil {
			eng.Close()
			b.Close()
			return nil, err
		}
		return &pmemServer{name: dev.Name, backing: b, engine: eng, svc: svc}, nil
	}
}

// Close stops the server and lets QEMU's connection go (a release), then
// closes the flush engine, which waits for flushes in flight and syncs
// once more, and closes the backing.
func (p *pmemServer) Close(ctx context.Context) error {
	return p.stop(ctx, p.svc.Close)
}

// Detach is Close for a daemon shutdown while the guest runs: QEMU's
// connection stays with the keeper, and the restarted daemon takes it over.
func (p *pmemServer) Detach(ctx context.Context) error {
	return p.stop(ctx, p.svc.Detach)
}

func (p *pmemServer) stop(ctx context.Context, stopService func(context.Context) error) error {
	err := stopService(ctx)
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("vhost-user server %s: %w", p.name, err)
	}
	drained := make(chan error, 1)
	go func() { drained <- p.engine.Close() }()
	select {
	case eerr := <-drained:
		err = errors.Join(err, eerr)
	case <-ctx.Done():
		return fmt.Errorf("vhost-user server %s: flushes still in flight: %w", p.name, ctx.Err())
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
