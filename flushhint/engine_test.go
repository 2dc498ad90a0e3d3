package flushhint

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// clock is a global sequence: every event the tests compare takes a tick.
type clock struct{ n atomic.Uint64 }

func (c *clock) tick() uint64 { return c.n.Add(1) }

type syncRec struct{ start, end uint64 }

// recStrategy records each sync's start and end ticks; it can block each
// sync until released and fail chosen syncs.
type recStrategy struct {
	clk *clock
	mu  gosync.Mutex
	// +checklocks:mu
	recs       []syncRec
	running    atomic.Int32
	overlap    atomic.Bool
	maxRunning atomic.Int32
	started    chan int      // receives the sync number (1-based) at start, if non-nil
	release    chan struct{} // each sync waits for one value, if non-nil
	fail       func(n int) error
	delay      time.Duration
}

func (s *recStrategy) Sync() error {
	r := s.running.Add(1)
	if r > 1 {
		s.overlap.Store(true)
	}
	for m := s.maxRunning.Load(); r > m && !s.maxRunning.CompareAndSwap(m, r); m = s.maxRunning.Load() {
	}
	defer s.running.Add(-1)
	start := s.clk.tick()
	s.mu.Lock()
	n := len(s.recs) + 1
	s.recs = append(s.recs, syncRec{start: start})
	s.mu.Unlock()
	if s.started != nil {
		select {
		case s.started <- n:
		default: // nobody is watching (the final sync of Close in a cleanup)
		}
	}
	if s.release != nil {
		<-s.release
	}
	if s.delay > 0 {
		time.Sleep(s.delay)
	}
	var err error
	if s.fail != nil {
		err = s.fail(n)
	}
	end := s.clk.tick()
	s.mu.Lock()
	s.recs[n-1].end = end
	s.mu.Unlock()
	return err
}

func (s *recStrategy) Name() string      { return "fake" }
func (s *recStrategy) Guarantee() string { return "test double" }

func (s *recStrategy) syncs() []syncRec {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]syncRec(nil), s.recs...)
}

func newEngine(t *testing.T, s Strategy, o Options) *Engine {
	t.Helper()
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MaxInFlight == 0 {
		o.MaxInFlight = 1 // the step-by-step tests are written for one sync at a time
	}
	e, err := NewEngine("dev0", s, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	if rs, ok := s.(*recStrategy); ok && rs.release != nil {
		// Runs before Close (cleanups are LIFO): unblock every later sync.
		t.Cleanup(func() { close(rs.release) })
	}
	return e
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func asyncFlush(e *Engine, ctx context.Context) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- e.Flush(ctx) }()
	return ch
}

// TestRequestDuringSyncWaitsForNextSync drives the engine step by step: a
// request arriving while a sync runs must not be completed by that sync,
// and requests arriving during one sync share the next one.
func TestRequestDuringSyncWaitsForNextSync(t *testing.T) {
	s := &recStrategy{clk: &clock{}, started: make(chan int, 8), release: make(chan struct{})}
	e := newEngine(t, s, Options{})
	ctx := context.Background()

	a := asyncFlush(e, ctx)
	if n := <-s.started; n != 1 {
		t.Fatalf("first sync is number %d", n)
	}
	// Sync 1 runs. B, C and D arrive now.
	waiters := []<-chan error{asyncFlush(e, ctx), asyncFlush(e, ctx), asyncFlush(e, ctx)}
	waitFor(t, "3 waiters", func() bool { return e.Stats().Waiting == 3 })

	s.release <- struct{}{} // end sync 1
	if err := <-a; err != nil {
		t.Fatalf("A: %v", err)
	}
	select {
	case n := <-s.started:
		if n != 2 {
			t.Fatalf("second sync is number %d", n)
		}
	case err := <-waiters[0]:
		t.Fatalf("B completed (err %v) by the sync that was running when it arrived", err)
	case <-time.After(5 * time.Second):
		t.Fatal("no second sync started for the waiting requests")
	}
	for i, w := range waiters {
		select {
		case err := <-w:
			t.Fatalf("request %d completed (err %v) before the sync that started after it ended", i, err)
		default:
		}
	}
	s.release <- struct{}{} // end sync 2
	for i, w := range waiters {
		if err := <-w; err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	st := e.Stats()
	if st.Syncs != 2 || st.Requests != 4 || st.Coalesced != 2 {
		t.Fatalf("stats %+v: want 2 syncs, 4 requests, 2 coalesced (C and D rode B's sync)", st)
	}
	select {
	case n := <-s.started:
		t.Fatalf("unexpected sync %d with no request waiting", n)
	default:
	}
}

// TestTwoInFlight: with two syncs allowed, a request arriving during a
// sync starts the second one at once; later arrivals wait for a free slot
// and still get a sync that starts after them.
func TestTwoInFlight(t *testing.T) {
	s := &recStrategy{clk: &clock{}, started: make(chan int, 8), release: make(chan struct{})}
	e := newEngine(t, s, Options{MaxInFlight: 2})
	ctx := context.Background()
	a := asyncFlush(e, ctx)
	<-s.started
	b := asyncFlush(e, ctx)
	if n := <-s.started; n != 2 {
		t.Fatalf("sync %d, want 2 running beside 1", n)
	}
	c, d := asyncFlush(e, ctx), asyncFlush(e, ctx)
	waitFor(t, "2 waiters", func() bool { return e.Stats().Waiting == 2 })
	s.release <- struct{}{} // one of syncs 1 and 2 ends
	ab := mergeErr(a, b)
	if err := <-ab; err != nil {
		t.Fatal(err)
	}
	if n := <-s.started; n != 3 {
		t.Fatalf("sync %d, want 3 for C and D", n)
	}
	select {
	case <-c:
		t.Fatal("C completed before the sync that started after it ended")
	case <-d:
		t.Fatal("D completed before the sync that started after it ended")
	default:
	}
	s.release <- struct{}{}
	s.release <- struct{}{}
	for _, ch := range []<-chan error{c, d, ab} {
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
	}
	if st := e.Stats(); st.Syncs != 3 || st.Coalesced != 1 {
		t.Fatalf("stats %+v: want 3 syncs, C and D sharing one", st)
	}
}

func mergeErr(chs ...<-chan error) <-chan error {
	out := make(chan error, len(chs))
	for _, ch := range chs {
		go func() { out <- <-ch }()
	}
	return out
}

// TestDurabilityProperty runs many concurrent flushers against a sync that
// takes a while and checks, for every request, that a sync which started
// after the request was issued ended before it returned; syncs never
// overlap.
func TestDurabilityProperty(t *testing.T) {
	for _, k := range []int{1, 2, 4} {
		t.Run(fmt.Sprintf("inflight=%d", k), func(t *testing.T) { durabilityProperty(t, k) })
	}
}

func durabilityProperty(t *testing.T, inflight int) {
	clk := &clock{}
	s := &recStrategy{clk: clk, delay: 200 * time.Microsecond}
	e := newEngine(t, s, Options{MaxInFlight: inflight})
	type req struct{ arrive, done uint64 }
	const workers, per = 16, 40
	reqs := make([][]req, workers)
	var wg gosync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for i := 0; i < per; i++ {
				if r.IntN(3) == 0 {
					time.Sleep(time.Duration(r.IntN(300)) * time.Microsecond)
				}
				a := clk.tick()
				if err := e.Flush(context.Background()); err != nil {
					t.Errorf("flush: %v", err)
					return
				}
				reqs[w] = append(reqs[w], req{a, clk.tick()})
			}
		}(w)
	}
	wg.Wait()
	syncs := s.syncs()
	if inflight == 1 && s.overlap.Load() {
		t.Fatal("two syncs ran at once")
	}
	if max := s.maxRunning.Load(); max > int32(inflight) {
		t.Fatalf("%d syncs ran at once, limit %d", max, inflight)
	}
	for w := range reqs {
		for _, q := range reqs[w] {
			ok := false
			for _, sy := range syncs {
				if sy.start > q.arrive && sy.end != 0 && sy.end < q.done {
					ok = true
					break
				}
			}
			if !ok {
				t.Fatalf("request issued at %d, done at %d: no sync started after it and ended before it returned", q.arrive, q.done)
			}
		}
	}
	st := e.Stats()
	if st.Requests != workers*per {
		t.Fatalf("requests %d, want %d", st.Requests, workers*per)
	}
	if st.Syncs >= st.Requests {
		t.Fatalf("%d syncs for %d concurrent requests: nothing was coalesced", st.Syncs, st.Requests)
	}
	if st.Syncs+st.Coalesced != st.Requests {
		t.Fatalf("syncs %d + coalesced %d != requests %d", st.Syncs, st.Coalesced, st.Requests)
	}
	t.Logf("%d requests, %d syncs", st.Requests, st.Syncs)
}

func TestSyncErrorReachesEveryRequestOfTheBatch(t *testing.T) {
	boom := errors.New("EIO from the disk")
	s := &recStrategy{clk: &clock{}, started: make(chan int, 8), release: make(chan struct{}),
		fail: func(n int) error {
			if n == 2 {
				return boom
			}
			return nil
		}}
	e := newEngine(t, s, Options{})
	ctx := context.Background()
	a := asyncFlush(e, ctx)
	<-s.started
	b, c := asyncFlush(e, ctx), asyncFlush(e, ctx)
	waitFor(t, "2 waiters", func() bool { return e.Stats().Waiting == 2 })
	s.release <- struct{}{}
	if err := <-a; err != nil {
		t.Fatal(err)
	}
	<-s.started
	s.release <- struct{}{}
	for _, ch := range []<-chan error{b, c} {
		err := <-ch
		if !errors.Is(err, boom) || !strings.Contains(err.Error(), "dev0") {
			t.Fatalf("got %v, want the sync error naming the device", err)
		}
	}
	// The engine recovers: the next request gets a fresh sync.
	d := asyncFlush(e, ctx)
	<-s.started
	s.release <- struct{}{}
	if err := <-d; err != nil {
		t.Fatal(err)
	}
	if st := e.Stats(); st.Errors != 1 || st.Syncs != 3 {
		t.Fatalf("stats %+v: want 1 error in 3 syncs", st)
	}
}

// TestCancelledWaiterDoesNotStall cancels requests in every position and
// checks the engine still completes the others and later ones.
func TestCancelledWaiterDoesNotStall(t *testing.T) {
	s := &recStrategy{clk: &clock{}, started: make(chan int, 16), release: make(chan struct{})}
	e := newEngine(t, s, Options{})
	bg := context.Background()
	a := asyncFlush(e, bg)
	<-s.started
	// B and C wait for sync 2; both give up.
	cctx, cancel := context.WithCancel(bg)
	b, c := asyncFlush(e, cctx), asyncFlush(e, cctx)
	waitFor(t, "2 waiters", func() bool { return e.Stats().Waiting == 2 })
	cancel()
	for _, ch := range []<-chan error{b, c} {
		if err := <-ch; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled waiter: %v", err)
		}
	}
	s.release <- struct{}{}
	if err := <-a; err != nil {
		t.Fatal(err)
	}
	// Nobody is left, so no sync 2 may start; a new request starts one.
	d := asyncFlush(e, bg)
	if n := <-s.started; n != 2 {
		t.Fatalf("sync %d, want 2", n)
	}
	// Now one waiter cancels and one stays: the one who stays must be served.
	cctx2, cancel2 := context.WithCancel(bg)
	x, y := asyncFlush(e, cctx2), asyncFlush(e, bg)
	waitFor(t, "2 waiters", func() bool { return e.Stats().Waiting == 2 })
	cancel2()
	if err := <-x; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: %v", err)
	}
	s.release <- struct{}{}
	if err := <-d; err != nil {
		t.Fatal(err)
	}
	if n := <-s.started; n != 3 {
		t.Fatalf("sync %d, want 3", n)
	}
	s.release <- struct{}{}
	if err := <-y; err != nil {
		t.Fatal(err)
	}
	if err := e.Flush(canceledCtx()); !errors.Is(err, context.Canceled) {
		t.Fatalf("flush with a cancelled context: %v", err)
	}
}

func canceledCtx() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

// TestRandomCancellationsRace mixes cancellations into a concurrent load
// (run with -race); every request that did not fail must be covered.
func TestRandomCancellationsRace(t *testing.T) {
	clk := &clock{}
	s := &recStrategy{clk: clk, delay: 50 * time.Microsecond}
	e := newEngine(t, s, Options{RateLimit: 20000, Burst: 4})
	var wg gosync.WaitGroup
	var okCount atomic.Int64
	for w := 0; w < 12; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for i := 0; i < 60; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(r.IntN(150))*time.Microsecond)
				a := clk.tick()
				err := e.Flush(ctx)
				d := clk.tick()
				cancel()
				if err != nil {
					if !errors.Is(err, context.DeadlineExceeded) {
						t.Errorf("flush: %v", err)
					}
					continue
				}
				okCount.Add(1)
				covered := false
				for _, sy := range s.syncs() {
					if sy.start > a && sy.end != 0 && sy.end < d {
						covered = true
						break
					}
				}
				if !covered {
					t.Errorf("request [%d, %d] not covered by a later sync", a, d)
				}
			}
		}(w)
	}
	wg.Wait()
	// The engine is not wedged.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.Flush(ctx); err != nil {
		t.Fatalf("engine stuck after cancellations: %v", err)
	}
	t.Logf("%d of %d requests completed", okCount.Load(), 12*60)
}

func TestRateLimit(t *testing.T) {
	s := &recStrategy{clk: &clock{}}
	e := newEngine(t, s, Options{RateLimit: 100, Burst: 2})
	start := time.Now()
	for i := 0; i < 7; i++ {
		if err := e.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	// 2 from the burst, 5 more at 100/s: at least 50 ms.
	if el := time.Since(start); el < 45*time.Millisecond {
		t.Fatalf("7 sequential flushes at 100/s with burst 2 took %v, want >= 50ms", el)
	}
	if st := e.Stats(); st.RateLimitWaits < 4 || st.Syncs != 7 {
		t.Fatalf("stats %+v: want >= 4 rate-limit waits and 7 syncs", st)
	}
}

// TestRateLimitedLeaderCancelPassesLead cancels a leader while it waits
// for a token; the waiter behind it must lead the batch instead.
func TestRateLimitedLeaderCancelPassesLead(t *testing.T) {
	s := &recStrategy{clk: &clock{}}
	e := newEngine(t, s, Options{RateLimit: 5, Burst: 1})
	if err := e.Flush(context.Background()); err != nil { // uses the burst
		t.Fatal(err)
	}
	lctx, cancel := context.WithCancel(context.Background())
	leader := asyncFlush(e, lctx)
	waitFor(t, "leader", func() bool { return e.Stats().Requests == 2 })
	w := asyncFlush(e, context.Background())
	waitFor(t, "waiter", func() bool { return e.Stats().Waiting == 1 })
	cancel()
	if err := <-leader; !errors.Is(err, context.Canceled) {
		t.Fatalf("leader: %v", err)
	}
	select {
	case err := <-w:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter behind a cancelled leader was never served")
	}
	if st := e.Stats(); st.Syncs != 2 {
		t.Fatalf("syncs %d, want 2", st.Syncs)
	}
}

func TestCloseDrainsAndRefuses(t *testing.T) {
	s := &recStrategy{clk: &clock{}, started: make(chan int, 8), release: make(chan struct{}, 8)}
	e, err := NewEngine("dev0", s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	a := asyncFlush(e, context.Background())
	<-s.started
	closed := make(chan error, 1)
	go func() { closed <- e.Close() }()
	select {
	case <-closed:
		t.Fatal("Close returned while a flush was in flight")
	case <-time.After(20 * time.Millisecond):
	}
	s.release <- struct{}{} // the in-flight sync
	s.release <- struct{}{} // Close's final sync
	if err := <-a; err != nil {
		t.Fatal(err)
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if err := e.Flush(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("flush after close: %v", err)
	}
	if err := e.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if n := len(s.syncs()); n != 2 {
		t.Fatalf("%d syncs, want 2 (request, final)", n)
	}
}

func TestNewEngineRefusesBadOptions(t *testing.T) {
	s := &recStrategy{clk: &clock{}}
	for _, c := range []struct {
		name string
		s    Strategy
		o    Options
		want string
	}{
		{"", s, Options{}, "empty device name"},
		{"d", nil, Options{}, "no strategy"},
		{"d", s, Options{RateLimit: -1}, "rate limit"},
		{"d", s, Options{Burst: -1}, "burst"},
		{"d", s, Options{Writeback: Writeback{Interval: -time.Second}}, "writeback"},
	} {
		if _, err := NewEngine(c.name, c.s, c.o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("NewEngine(%q, %+v): %v, want an error about %s", c.name, c.o, err, c.want)
		}
	}
}

func metricValue(t *testing.T, reg *prometheus.Registry, name, device string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labelIs(m, "device", device) {
				switch {
				case m.Counter != nil:
					return m.Counter.GetValue()
				case m.Gauge != nil:
					return m.Gauge.GetValue()
				case m.Histogram != nil:
					return float64(m.Histogram.GetSampleCount())
				}
			}
		}
	}
	return -1
}

func labelIs(m *dto.Metric, k, v string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == k && l.GetValue() == v {
			return true
		}
	}
	return false
}

func TestMetricsSharedRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	fail := false
	s := &recStrategy{clk: &clock{}, fail: func(int) error {
		if fail {
			return errors.New("boom")
		}
		return nil
	}}
	e1, err := NewEngine("pmem0", s, Options{Registerer: reg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	e2, err := NewEngine("pmem1", &recStrategy{clk: &clock{}}, Options{Registerer: reg, RateLimit: 1e6})
	if err != nil {
		t.Fatalf("second engine on the same registry: %v", err)
	}
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if err := e1.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	fail = true
	if err := e1.Flush(ctx); err == nil {
		t.Fatal("failing sync reported success")
	}
	fail = false
	if err := e2.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, dev string
		want      float64
	}{
		{MetricRequests, "pmem0", 4}, {MetricSyncs, "pmem0", 4}, {MetricErrors, "pmem0", 1},
		{MetricLatency, "pmem0", 4}, {MetricSyncDuration, "pmem0", 4}, {MetricCoalesced, "pmem0", 0},
		{MetricRequests, "pmem1", 1}, {MetricRateLimitWaits, "pmem1", 0},
	} {
		if got := metricValue(t, reg, c.name, c.dev); got != c.want {
			t.Errorf("%s{device=%q} = %v, want %v", c.name, c.dev, got, c.want)
		}
	}
	e1.Close()
	if got := metricValue(t, reg, MetricRequests, "pmem0"); got != -1 {
		t.Errorf("closed device still exported: %v", got)
	}
	if got := metricValue(t, reg, MetricRequests, "pmem1"); got != 1 {
		t.Errorf("other device lost its series: %v", got)
	}
	e2.Close()

	// A registry where the name means something else is refused clearly.
	bad := prometheus.NewRegistry()
	bad.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: MetricLatency, Help: "x"}))
	if _, err := NewEngine("d", s, Options{Registerer: bad}); err == nil {
		t.Fatal("conflicting metric registration accepted")
	}
}

func ExampleEngine() {
	e, err := NewEngine("pmem0", None("example: nothing to sync"), Options{})
	if err != nil {
		panic(err)
	}
	defer e.Close()
	fmt.Println(e.Flush(context.Background()), e.Stats().Syncs)
	// Output: <nil> 1
}
