package qmp

import (
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/sync"
)

// Subscription receives the client's events through a bounded buffer.
// Delivery never blocks the client: when the buffer is full the event is
// dropped, Dropped counts it and the next event delivered carries the
// number lost just before it in Event.Dropped.
type Subscription struct {
	c     *Client
	ch    chan Event
	names map[string]bool // nil: every event

	dropped atomic.Uint64

	mu sync.Mutex
	// +checklocks:mu
	closed bool
	// +checklocks:mu
	lost uint64 // dropped since the last delivered event
}

// Subscribe starts delivering events named in names (all events when
// names is empty) into a buffer of buf events (at least 1). The channel
// closes when the subscription is closed or the connection closes.
func (c *Client) Subscribe(buf int, names ...string) *Subscription {
	if buf < 1 {
		buf = 1
	}
	s := &Subscription{c: c, ch: make(chan Event, buf)}
	if len(names) > 0 {
		s.names = make(map[string]bool, len(names))
		for _, n := range names {
			s.names[n] = true
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		s.close()
		return s
	}
	c.subs[s] = struct{}{}
	return s
}

// Events is the subscription's channel.
func (s *Subscription) Events() <-chan Event { return s.ch }

// Dropped is how many events this subscription has lost in all.
func (s *Subscription) Dropped() uint64 { return s.dropped.Load() }

// Close stops delivery and closes the channel. It is idempotent.
func (s *Subscription) Close() {
	s.c.mu.Lock()
	delete(s.c.subs, s)
	s.c.mu.Unlock()
	s.close()
}

func (s *Subscription) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		close(s.ch)
	}
}

// offer delivers ev without blocking.
func (s *Subscription) offer(ev Event) {
	if s.names != nil && !s.names[ev.Name] {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	ev.Dropped = s.lost
	select {
	case s.ch <- ev:
		s.lost = 0
	default:
		s.lost++
		s.dropped.Add(1)
	}
}
