package flushhint

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gvisor.dev/gvisor/pkg/sync"
)

// ErrClosed is returned by Flush on an engine that is closed or closing.
var ErrClosed = errors.New("flush engine closed")

// DefaultMaxInFlight is the number of concurrent syncs an engine allows
// unless Options.MaxInFlight says otherwise.
const DefaultMaxInFlight = 2

// Options tune an Engine. The zero value is group commit with no rate
// limit, no writeback and unregistered metrics.
type Options struct {
	// RateLimit caps the syncs issued per second (0: unlimited). Requests
	// arriving while a sync waits for a token join that sync.
	RateLimit float64
	// MaxInFlight is how many syncs may run at once (0: DefaultMaxInFlight).
	// Each still covers only requests that arrived before it started; a
	// second sync lets a device that completes concurrent flushes in
	// parallel do so, while arrivals keep coalescing.
	MaxInFlight int
	// Burst is how many syncs may run back to back before RateLimit
	// applies (default 1).
	Burst int
	// Writeback, when Interval is set, syncs the backing periodically; use
	// it for NVDIMMs on plain files, whose guests have no flush path.
	Writeback Writeback
	// Registerer receives the engine's metrics (nil: not registered). Many
	// engines may share one Registerer; each has its own "device" label.
	Registerer prometheus.Registerer
	// Logger logs sync failures (default slog.Default()).
	Logger *slog.Logger
}

// Writeback configures periodic syncs and the not-yet-durable gauge.
type Writeback struct {
	// Interval between writeback syncs (0: no writeback). Data written to
	// the backing is durable at most Interval plus one sync later.
	Interval time.Duration
	// File is the backing whose not-yet-durable bytes the gauge reports
	// (nil: no gauge). It must stay open until Close returns.
	File *os.File
	// SampleEvery is how often the gauge is refreshed (default the smaller
	// of Interval and one second).
	SampleEvery time.Duration
}

// Stats is a snapshot of an engine's counters.
type Stats struct {
	Device         string `json:"device"`
	Strategy       string `json:"strategy"`
	Requests       uint64 `json:"requests"`
	Syncs          uint64 `json:"syncs"`
	Coalesced      uint64 `json:"coalesced"`
	Errors         uint64 `json:"errors"`
	RateLimitWaits uint64 `json:"rate_limit_waits"`
	Waiting        int64  `json:"waiting"`
	// NotDurableBytes and NotDurableSource are the last writeback sample
	// (source "" when none was taken).
	NotDurableBytes  uint64 `json:"not_durable_bytes"`
	NotDurableSource string `json:"not_durable_source,omitempty"`
}

// batch is the set of requests one sync completes. Its fields other than
// the channels' contents are guarded by the engine's mu.
type batch struct {
	done      chan struct{} // closed when the batch's sync ended; nil until a waiter joins
	lead      chan struct{} // one-slot lead token; nil until a waiter joins
	err       error         // the sync's result, written before done is closed
	n         int           // requests in the batch, the leader included
	waiters   int           // requests blocked in wait (not the leader)
	hasLeader bool          // a leader runs or will run this batch
}

// Engine is the flush engine of one device. Its methods are safe for
// concurrent use.
type Engine struct {
	name    string
	strat   Strategy
	limiter *tokenBucket
	m       *devMetrics
	log     *slog.Logger
	gate    sync.Gate

	mu sync.Mutex
	// open is the batch accepting arrivals: its sync has not started.
	// +checklocks:mu
	open *batch
	// inflight counts led batches: syncs running, leaders waiting for the
	// rate limit, and lead tokens not yet taken. At most maxInFlight.
	// +checklocks:mu
	inflight int
	// +checklocks:mu
	maxInFlight int

	requests, syncs, coalesced, errs, waits atomic.Uint64
	waiting                                 atomic.Int64
	dirtyBytes                              atomic.Uint64
	dirtySource                             atomic.Pointer[string]

	wbCancel context.CancelFunc
	wbDone   chan struct{}

	closeOnce sync.Once
	closeErr  error
}

// NewEngine returns the flush engine for the device name, syncing with s.
// Close it before closing the backing it syncs.
func NewEngine(name string, s Strategy, o Options) (*Engine, error) {
	if name == "" {
		return nil, errors.New("flush engine: empty device name")
	}
	if s == nil {
		return nil, fmt.Errorf("flush engine %s: no strategy", name)
	}
	if o.RateLimit < 0 || math.IsNaN(o.RateLimit) || math.IsInf(o.RateLimit, 0) {
		return nil, fmt.Errorf("flush engine %s: rate limit %v: want a finite number of syncs per second >= 0", name, o.RateLimit)
	}
	if o.MaxInFlight < 0 || o.MaxInFlight > 64 {
		return nil, fmt.Errorf("flush engine %s: max in flight %d: want 0 (default) to 64", name, o.MaxInFlight)
	}
	if o.Burst < 0 {
		return nil, fmt.Errorf("flush engine %s: burst %d: want >= 0", name, o.Burst)
	}
	if o.Writeback.Interval < 0 || o.Writeback.SampleEvery < 0 {
		return nil, fmt.Errorf("flush engine %s: writeback interval %v / sample %v: want >= 0", name, o.Writeback.Interval, o.Writeback.SampleEvery)
	}
	v := newVecs()
	if o.Registerer != nil {
		var err error
		if v, err = v.register(o.Registerer); err != nil {
			return nil, fmt.Errorf("flush engine %s: %w", name, err)
		}
	}
	e := &Engine{name: name, strat: s, m: v.forDevice(name), log: o.Logger, maxInFlight: o.MaxInFlight}
	if e.maxInFlight == 0 {
		e.maxInFlight = DefaultMaxInFlight
	}
	if e.log == nil {
		e.log = slog.Default()
	}
	if o.RateLimit > 0 {
		e.limiter = newTokenBucket(o.RateLimit, o.Burst, time.Now)
	}
	if o.Writeback.Interval > 0 || o.Writeback.File != nil {
		e.startWriteback(o.Writeback)
	}
	return e, nil
}

// Name is the device name the engine was created with.
func (e *Engine) Name() string { return e.name }

// Strategy is the strategy the engine syncs with.
func (e *Engine) Strategy() Strategy { return e.strat }

// Flush returns once every write to the backing that completed before
// Flush was called is durable: it waits for a sync that started after the
// call, sharing it with concurrent callers. An error means that sync
// failed (all requests it covered get the error) or ctx ended first; a
// cancelled request never cancels a sync others wait for.
func (e *Engine) Flush(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !e.gate.Enter() {
		return fmt.Errorf("flush %s: %w", e.name, ErrClosed)
	}
	defer e.gate.Leave()
	start := time.Now()
	e.requests.Add(1)
	e.m.requests.Inc()
	err := e.flush(ctx)
	e.m.latency.Observe(time.Since(start).Seconds())
	return err
}

func (e *Engine) flush(ctx context.Context) error {
	e.mu.Lock()
	b := e.open
	if b == nil {
		b = &batch{}
		e.open = b
	}
	b.n++
	if !b.hasLeader && e.inflight < e.maxInFlight {
		e.inflight++
		b.hasLeader = true
		e.mu.Unlock()
		return e.lead(ctx, b)
	}
	if b.done == nil {
		b.done = make(chan struct{})
		b.lead = make(chan struct{}, 1)
	}
	b.waiters++
	e.waiting.Add(1)
	e.mu.Unlock()
	defer e.waiting.Add(-1)

	select {
	case <-b.done:
		return b.err
	case <-b.lead:
		e.mu.Lock()
		b.waiters--
		e.mu.Unlock()
		return e.lead(ctx, b)
	case <-ctx.Done():
		return e.abandon(ctx, b)
	}
}

// abandon takes a cancelled waiter out of b, passing on the lead token if
// it holds it.
func (e *Engine) abandon(ctx context.Context, b *batch) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	select {
	case <-b.done:
		return b.err // finished meanwhile: report the real result
	default:
	}
	b.waiters--
	b.n--
	if b.hasLeader {
		select {
		case <-b.lead:
			// The token was ours; it must not be lost.
			if b.waiters > 0 {
				b.lead <- struct{}{}
			} else {
				e.dropLocked(b)
			}
		default: // another goroutine leads b
		}
	} else if b.waiters == 0 && e.open == b {
		e.open = nil // nobody left: the next leader has nothing to do
	}
	return ctx.Err()
}

// dropLocked forgets the open batch b, which has no requests left, and
// the lead it held.
// +checklocks:e.mu
func (e *Engine) dropLocked(b *batch) {
	if e.open == b {
		e.open = nil
	}
	e.inflight--
}

// lead runs b's sync: wait for the rate limit (arrivals meanwhile join b),
// close b to arrivals, sync, wake b's waiters, and hand the lead to the
// next batch if requests arrived during the sync.
func (e *Engine) lead(ctx context.Context, b *batch) error {
	if e.limiter != nil {
		waited, err := e.limiter.take(ctx)
		if waited {
			e.waits.Add(1)
			e.m.waits.Inc()
		}
		if err != nil {
			e.mu.Lock()
			b.n--
			if b.waiters > 0 {
				b.lead <- struct{}{}
			} else {
				e.dropLocked(b)
			}
			e.mu.Unlock()
			return err
		}
	}
	e.mu.Lock()
	if e.open == b {
		e.open = nil
	}
	n, done := b.n, b.done
	e.mu.Unlock()

	err := e.runSync()

	b.err = err
	if done != nil {
		close(done)
	}
	e.mu.Lock()
	e.inflight--
	if next := e.open; next != nil && !next.hasLeader {
		// next has waiters: a batch whose waiters all left is dropped.
		e.inflight++
		next.hasLeader = true
		next.lead <- struct{}{}
	}
	e.mu.Unlock()
	if n > 1 {
		e.coalesced.Add(uint64(n - 1))
		e.m.coalesced.Add(float64(n - 1))
	}
	return err
}

func (e *Engine) runSync() error {
	start := time.Now()
	err := e.strat.Sync()
	e.m.syncDur.Observe(time.Since(start).Seconds())
	e.syncs.Add(1)
	e.m.syncs.Inc()
	if err != nil {
		e.errs.Add(1)
		e.m.errors.Inc()
		e.log.Error("flush failed", "device", e.name, "strategy", e.strat.Name(), "err", err)
		return fmt.Errorf("flush %s: %w", e.name, err)
	}
	return nil
}

// Stats returns a snapshot of the engine's counters.
func (e *Engine) Stats() Stats {
	s := Stats{
		Device:          e.name,
		Strategy:        e.strat.Name(),
		Requests:        e.requests.Load(),
		Syncs:           e.syncs.Load(),
		Coalesced:       e.coalesced.Load(),
		Errors:          e.errs.Load(),
		RateLimitWaits:  e.waits.Load(),
		Waiting:         e.waiting.Load(),
		NotDurableBytes: e.dirtyBytes.Load(),
	}
	if p := e.dirtySource.Load(); p != nil {
		s.NotDurableSource = *p
	}
	return s
}

// Close stops the writeback, refuses new flushes, waits for those in
// flight, runs a last sync (so everything written before Close is
// durable) and removes the device's metrics. It returns the last sync's
// error; later calls return the same.
func (e *Engine) Close() error {
	e.closeOnce.Do(func() {
		if e.wbCancel != nil {
			e.wbCancel()
			<-e.wbDone
		}
		e.gate.Close()
		e.closeErr = e.runSync()
		e.m.remove()
	})
	return e.closeErr
}
