package pmem

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/nvdimm-backend/nvdimm-backend/vhostuser"
)

// Service is a running virtio-pmem vhost-user server on one socket: the
// device, its server and the goroutine accepting front-ends (one at a
// time; a front-end that reconnects is served again).
type Service struct {
	Device *Device
	Server *vhostuser.Server
	Socket string
	done   chan error
}

// Start creates the device, listens on socket (mode 0600) and serves in
// the background until Close.
func Start(socket string, o Options, log *slog.Logger) (*Service, error) {
	if log == nil {
		log = slog.Default()
	}
	if o.Log == nil {
		o.Log = log
	}
	dev, err := New(o)
	if err != nil {
		return nil, err
	}
	srv, err := vhostuser.NewServer(dev, log.With("socket", socket))
	if err != nil {
		return nil, err
	}
	if err := srv.Listen(socket); err != nil {
		return nil, err
	}
	s := &Service{Device: dev, Server: srv, Socket: socket, done: make(chan error, 1)}
	go func() { s.done <- srv.Serve(context.Background()) }()
	return s, nil
}

// Close stops listening, ends the current front-end session (its queues
// are stopped; flushes in flight finish on their own) and waits for the
// server within ctx.
func (s *Service) Close(ctx context.Context) error {
	cerr := s.Server.Close()
	select {
	case err := <-s.done:
		s.done <- err
		if err != nil {
			return fmt.Errorf("vhost-user server on %s: %w", s.Socket, err)
		}
		return cerr
	case <-ctx.Done():
		return fmt.Errorf("vhost-user server on %s: %w", s.Socket, ctx.Err())
	}
}
