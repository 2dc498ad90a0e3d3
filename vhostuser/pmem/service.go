package pmem

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nvdimm-backend/nvdimm-backend/vhostuser"
)

// Metric names of a Device, all with the constant label "device".
const (
	MetricFlushes  = "nvdimm_backend_vhost_pmem_flushes_total"          // flush requests answered 0
	MetricFailures = "nvdimm_backend_vhost_pmem_flush_failures_total"   // requests answered -1
	MetricInvalid  = "nvdimm_backend_vhost_pmem_invalid_requests_total" // malformed requests
)

// Collectors returns collectors reading the device's Stats.
func (d *Device) Collectors(device string) []prometheus.Collector {
	labels := prometheus.Labels{"device": device}
	counter := func(name, help string, v func() uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels},
			func() float64 { return float64(v()) })
	}
	return []prometheus.Collector{
		counter(MetricFlushes, "virtio-pmem flush requests completed successfully.", d.Stats.Flushes.Load),
		counter(MetricFailures, "virtio-pmem requests answered with failure (-1).", d.Stats.Failures.Load),
		counter(MetricInvalid, "Malformed virtio-pmem requests (too short or unknown type).", d.Stats.Invalid.Load),
	}
}

// ServiceOptions configure Start.
type ServiceOptions struct {
	// Socket is the vhost-user socket path to listen on (mode 0600).
	Socket string
	// Name labels logs and metrics ("device").
	Name string
	// Registerer receives the server's and device's metrics (nil: none);
	// they are unregistered by Close. A collector that cannot be
	// registered (its series already exists) is logged and left out: a
	// metrics clash must not keep a device from serving.
	Registerer prometheus.Registerer
	// Keeper, when its Path is set, keeps the front-end connection in a
	// keeper process (vhostuser.Keeper), so that the service can be
	// restarted (Detach, then Start again with the same keeper) without
	// the front-end noticing.
	Keeper vhostuser.Keeper
	// Log is the logger (nil: slog.Default()).
	Log *slog.Logger
}

// Service is a running virtio-pmem vhost-user server on one socket: the
// device, its server and the goroutine accepting front-ends (one at a
// time; a front-end that reconnects is served again). Its Close matches
// what the daemon expects of a vhost-user server.
type Service struct {
	Device     *Device
	Server     *vhostuser.Server
	Socket     string
	reg        prometheus.Registerer
	collectors []prometheus.Collector
	done       chan error
}

// Start creates the device, listens on so.Socket and serves in the
// background until Close.
func Start(so ServiceOptions, o Options) (*Service, error) {
	log := so.Log
	if log == nil {
		log = slog.Default()
	}
	log = log.With("device", so.Name, "socket", so.Socket)
	if o.Log == nil {
		o.Log = log
	}
	dev, err := New(o)
	if err != nil {
		return nil, err
	}
	srv, err := vhostuser.NewServer(dev, log)
	if err != nil {
		return nil, err
	}
	if so.Keeper.Path != "" {
		srv.SetKeeper(so.Keeper)
	}
	s := &Service{Device: dev, Server: srv, Socket: so.Socket, reg: so.Registerer, done: make(chan error, 1)}
	if err := srv.Listen(so.Socket); err != nil {
		return nil, err
	}
	if so.Registerer != nil {
		for _, c := range append(srv.Collectors(so.Name), dev.Collectors(so.Name)...) {
			if err := so.Registerer.Register(c); err != nil {
				log.Warn("vhost-user metrics not registered", "err", err)
				continue
			}
			s.collectors = append(s.collectors, c)
		}
	}
	go func() { s.done <- srv.Serve(context.Background()) }()
	return s, nil
}

func (s *Service) unregister() {
	for _, c := range s.collectors {
		s.reg.Unregister(c)
	}
	s.collectors = nil
}

// Close stops listening, ends the current front-end session (its queues
// are stopped; flushes in flight finish on their own; a keeper is told to
// let the front-end go), unregisters the metrics and waits for the server
// within ctx.
func (s *Service) Close(ctx context.Context) error {
	return s.stop(ctx, s.Server.Close)
}

// Detach is Close except that a keeper keeps the front-end connection
// (vhostuser.Server.Detach): a Service started later with the same keeper
// takes the session over. Without a keeper it is Close.
func (s *Service) Detach(ctx context.Context) error {
	return s.stop(ctx, s.Server.Detach)
}

func (s *Service) stop(ctx context.Context, stopServer func() error) error {
	cerr := stopServer()
	if errors.Is(cerr, net.ErrClosed) { // stopped before
		cerr = nil
	}
	defer s.unregister()
	select {
	case err := <-s.done:
		s.done <- err
		return errors.Join(err, cerr)
	case <-ctx.Done():
		return fmt.Errorf("vhost-user server on %s: %w", s.Socket, ctx.Err())
	}
}
