package pmem_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvdimm-backend/nvdimm-backend/vhostuser"
	"github.com/nvdimm-backend/nvdimm-backend/vhostuser/frontend"
	"github.com/nvdimm-backend/nvdimm-backend/vhostuser/pmem"
)

const (
	ramGPA  = 0x100000
	ramSize = 0x100000
	reqGPA  = 0x140000
	respGPA = 0x180000
	wait    = 5 * time.Second
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// countingFlusher counts flushes; with gate set each flush waits for a
// value from it (true = succeed, false = fail).
type countingFlusher struct {
	n    atomic.Int64
	gate chan bool
	fail bool
}

func (c *countingFlusher) Flush(ctx context.Context) error {
	c.n.Add(1)
	if c.gate != nil {
		select {
		case ok := <-c.gate:
			if !ok {
				return errors.New("injected failure")
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if c.fail {
		return errors.New("injected failure")
	}
	return nil
}

func memfdFile(t testing.TB, size int64) *os.File {
	fd, err := unix.MemfdCreate("pmem-backing", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "pmem-backing")
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

type rig struct {
	t    testing.TB
	dev  *pmem.Device
	srv  *vhostuser.Server
	f    *frontend.Frontend
	vq   *frontend.Vring
	neg  frontend.Negotiated
	done chan error
}

const proto = vhostuser.ProtoReplyAck | vhostuser.ProtoConfig | vhostuser.ProtoBackendReq |
	vhostuser.ProtoBackendSendFd | vhostuser.ProtoConfigureMemSlots | vhostuser.ProtoStatus | vhostuser.ProtoShmem

func newRig(t testing.TB, o pmem.Options, qsize uint16) *rig {
	t.Helper()
	o.Log = quietLog()
	dev, err := pmem.New(o)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := vhostuser.NewServer(dev, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	f, sc, err := frontend.Pair()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.ServeConn(context.Background(), sc) }()
	r := &rig{t: t, dev: dev, srv: srv, f: f, done: done}
	t.Cleanup(func() {
		f.Close()
		select {
		case err := <-done:
			done <- err
		case <-time.After(wait):
			t.Error("session did not end after the front-end closed")
		}
		if r.vq != nil {
			r.vq.Close()
		}
	})
	if r.neg, err = f.Realize(proto, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := f.AddRegion(ramGPA, ramSize); err != nil {
		t.Fatal(err)
	}
	if r.vq, err = f.NewVring(0, qsize, ramGPA); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *rig) start() {
	r.t.Helper()
	if err := r.f.Ack(vhostuser.ReqSetFeatures, frontend.U64(r.dev.Features()|vhostuser.FeatureProtocolFeatures), nil); err != nil {
		r.t.Fatal(err)
	}
	if err := r.f.SetMemTable(); err != nil {
		r.t.Fatal(err)
	}
	if err := r.vq.Setup(0, true); err != nil {
		r.t.Fatal(err)
	}
}

// flushReq prepares request i: descriptor 2i = 4-byte type, 2i+1 =
// 4-byte response (pre-filled with 0x55 so a missing write shows).
func (r *rig) flushReq(i uint16, typ uint32) {
	copy(r.f.Mem(reqGPA+8*uint64(i), 4), []byte{byte(typ), byte(typ >> 8), byte(typ >> 16), byte(typ >> 24)})
	copy(r.f.Mem(respGPA+8*uint64(i), 4), []byte{0x55, 0x55, 0x55, 0x55})
	r.vq.SetDesc(2*i, frontend.Desc{Addr: reqGPA + 8*uint64(i), Len: 4, Flags: frontend.DescNext, Next: 2*i + 1})
	r.vq.SetDesc(2*i+1, frontend.Desc{Addr: respGPA + 8*uint64(i), Len: 4, Flags: frontend.DescWrite})
}

func (r *rig) ret(i uint16) int32 {
	b := r.f.Mem(respGPA+8*uint64(i), 4)
	return int32(uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24)
}

func TestFlushEndToEnd(t *testing.T) {
	fl := &countingFlusher{}
	r := newRig(t, pmem.Options{Flusher: fl, Size: 1 << 21, Start: 1 << 32}, 128)
	r.start()
	for i := uint16(0); i < 4; i++ {
		r.flushReq(i, pmem.ReqTypeFlush)
	}
	r.vq.Publish(0, 2, 4, 6)
	r.vq.Kicked()
	used, err := r.vq.WaitUsed(4, wait)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range used {
		if u.Len != 4 || r.ret(uint16(u.ID/2)) != pmem.RespOK {
			t.Fatalf("used %+v ret %d, want len 4 ret 0", u, r.ret(uint16(u.ID/2)))
		}
	}
	if fl.n.Load() != 4 || r.dev.Stats.Flushes.Load() != 4 {
		t.Fatalf("flusher called %d times, stats %d; want 4", fl.n.Load(), r.dev.Stats.Flushes.Load())
	}
}

func TestFlushFailureAndInvalidRequests(t *testing.T) {
	fl := &countingFlusher{fail: true}
	r := newRig(t, pmem.Options{Flusher: fl, Size: 1 << 21}, 128)
	r.start()
	r.flushReq(0, pmem.ReqTypeFlush) // flusher fails -> -1
	r.flushReq(1, 7)                 // unknown type -> -1, no flush
	// Request with a 2-byte type: -1.
	r.flushReq(2, 0)
	r.vq.SetDesc(4, frontend.Desc{Addr: reqGPA + 16, Len: 2, Flags: frontend.DescNext, Next: 5})
	// Request with no writable part: completed with length 0.
	r.vq.SetDesc(6, frontend.Desc{Addr: reqGPA + 24, Len: 4})
	r.vq.Publish(0, 2, 4, 6)
	r.vq.Kicked()
	used, err := r.vq.WaitUsed(4, wait)
	if err != nil {
		t.Fatal(err)
	}
	lens := map[uint32]uint32{}
	for _, u := range used {
		lens[u.ID] = u.Len
	}
	for i := uint16(0); i < 3; i++ {
		if r.ret(i) != pmem.RespFail || lens[uint32(2*i)] != 4 {
			t.Errorf("request %d: ret %d len %d, want -1 and 4", i, r.ret(i), lens[uint32(2*i)])
		}
	}
	if lens[6] != 0 {
		t.Errorf("request without response buffer: used len %d, want 0", lens[6])
	}
	if fl.n.Load() != 1 {
		t.Errorf("flusher called %d times, want 1 (only the valid request)", fl.n.Load())
	}
}

func TestFlushesCompleteOutOfOrder(t *testing.T) {
	fl := &countingFlusher{gate: make(chan bool)}
	r := newRig(t, pmem.Options{Flusher: fl, Size: 1 << 21}, 128)
	r.start()
	r.flushReq(0, 0)
	r.flushReq(1, 0)
	r.vq.Publish(0, 2)
	r.vq.Kicked()
	deadline := time.Now().Add(wait)
	for fl.n.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	// Both flushes run at once (off the vring goroutine); release one.
	fl.gate <- true
	first, err := r.vq.WaitUsed(1, wait)
	if err != nil {
		t.Fatal(err)
	}
	fl.gate <- false
	second, err := r.vq.WaitUsed(1, wait)
	if err != nil {
		t.Fatal(err)
	}
	if first[0].ID == second[0].ID {
		t.Fatalf("same head completed twice: %+v %+v", first, second)
	}
	if r.ret(uint16(first[0].ID/2)) != 0 || r.ret(uint16(second[0].ID/2)) != -1 {
		t.Fatalf("rets %d %d, want 0 then -1", r.ret(uint16(first[0].ID/2)), r.ret(uint16(second[0].ID/2)))
	}
}

func TestConfig(t *testing.T) {
	get := func(r *rig) []byte {
		q, _ := vhostuser.ConfigPayload{Data: make([]byte, pmem.ConfigSize)}.MarshalBinary()
		p, _, err := r.f.Call(vhostuser.ReqGetConfig, false, q, nil)
		if err != nil {
			t.Fatal(err)
		}
		var c vhostuser.ConfigPayload
		if err := c.UnmarshalBinary(p); err != nil {
			t.Fatal(err)
		}
		return c.Data
	}
	r := newRig(t, pmem.Options{Flusher: &countingFlusher{}, Size: 1 << 30, Start: 0x1_4000_0000}, 128)
	want := []byte{0, 0, 0, 0x40, 1, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0, 0}
	if got := get(r); string(got) != string(want) {
		t.Fatalf("config % x, want % x", got, want)
	}
	c, _ := vhostuser.ConfigPayload{Data: make([]byte, 8)}.MarshalBinary()
	if err := r.f.Ack(vhostuser.ReqSetConfig, c, nil); err == nil {
		t.Fatal("SET_CONFIG on read-only config acknowledged")
	}
	s := newRig(t, pmem.Options{Flusher: &countingFlusher{}, Size: 1 << 21, File: memfdFile(t, 1<<21), Shmem: true}, 128)
	if got := get(s); string(got) != string(make([]byte, 16)) {
		t.Fatalf("shared-memory mode config % x, want zeros", got)
	}
}

func TestNewRefusals(t *testing.T) {
	f := memfdFile(t, 3<<20)
	cases := []struct {
		o    pmem.Options
		want string
	}{
		{pmem.Options{Size: 1 << 21}, "no flusher"},
		{pmem.Options{Flusher: &countingFlusher{}, File: f, Size: 3 << 20, Shmem: true}, "power of two"},
		{pmem.Options{Flusher: &countingFlusher{}, File: f, Size: 1 << 21, Shmem: true, ReadOnly: true}, "no read-only mode"},
		{pmem.Options{Flusher: &countingFlusher{}, File: f, Size: 1 << 21, Shmem: true, LabelSize: 128 << 10}, "128 KiB label area"},
		{pmem.Options{Flusher: &countingFlusher{}, File: f, Size: 1 << 20, Shmem: true}, "not a multiple of 2 MiB"},
		{pmem.Options{Flusher: &countingFlusher{}, Size: 1 << 21, Shmem: true}, "needs the backing"},
	}
	for _, c := range cases {
		if _, err := pmem.New(c.o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(%+v): %v, want an error mentioning %q", c.o, err, c.want)
		}
	}
}

func sameFile(t *testing.T, fd int, f *os.File) bool {
	var a, b unix.Stat_t
	if err := unix.Fstat(fd, &a); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(int(f.Fd()), &b); err != nil {
		t.Fatal(err)
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

// TestShmemMapOnEveryStart: negotiation offers SHMEM (bit 22) without
// CONFIGURE_MEM_SLOTS, GET_SHMEM_CONFIG reports region 0, nothing is
// mapped before start, SET_FEATURES is acknowledged without waiting for
// the map's reply, and each start sends SHMEM_MAP with the backing's fd.
func TestShmemMapOnEveryStart(t *testing.T) {
	backing := memfdFile(t, 1<<21)
	r := newRig(t, pmem.Options{Flusher: &countingFlusher{}, File: backing, Size: 1 << 21, Shmem: true}, 128)
	if r.neg.Protocol&vhostuser.ProtoShmem == 0 || r.neg.Protocol&vhostuser.ProtoConfigureMemSlots != 0 {
		t.Fatalf("protocol features %#x: want SHMEM and not CONFIGURE_MEM_SLOTS", r.neg.Protocol)
	}
	if !r.neg.HasShmem || r.neg.Shmem.NRegions != 1 || r.neg.Shmem.Sizes[0] != 1<<21 {
		t.Fatalf("GET_SHMEM_CONFIG = %d regions, size[0] %d", r.neg.Shmem.NRegions, r.neg.Shmem.Sizes[0])
	}
	if r.neg.Messages[len(r.neg.Messages)-1] != vhostuser.ReqGetShmemConfig {
		t.Fatalf("realize order %v: GET_SHMEM_CONFIG should be last", r.neg.Messages)
	}
	if r.neg.Features&pmem.FeatureShmemRegion == 0 {
		t.Fatal("SHMEM_REGION feature not offered")
	}
	// Nothing before start.
	r.f.Timeout = 100 * time.Millisecond
	if _, err := r.f.ReadBackendRequest(0); err == nil {
		t.Fatal("SHMEM_MAP sent before the device started")
	}
	r.f.Timeout = wait
	for round := 0; round < 2; round++ {
		r.start() // SET_FEATURES is acked while the map waits for our reply
		m, err := r.f.ReadBackendRequest(0)
		if err != nil {
			t.Fatalf("start %d: no SHMEM_MAP: %v", round, err)
		}
		if vhostuser.BackendRequestType(m.Header.Request) != vhostuser.BackendShmemMap || len(m.Fds) != 1 {
			t.Fatalf("start %d: got %v with %d fds", round, vhostuser.BackendRequestType(m.Header.Request), len(m.Fds))
		}
		if m.Req.ShmID != 0 || m.Req.Len != 1<<21 || m.Req.ShmOffset != 0 || m.Req.FdOffset != 0 || m.Req.Flags != vhostuser.ShmemMapFlagWritable {
			t.Fatalf("start %d: SHMEM_MAP %+v", round, m.Req)
		}
		if !m.Header.NeedReply() {
			t.Fatal("SHMEM_MAP without NEED_REPLY although REPLY_ACK was negotiated")
		}
		if !sameFile(t, m.Fds[0], backing) {
			t.Fatal("SHMEM_MAP fd is not the backing")
		}
		// QEMU announces the mapped range back as guest memory with our
		// own fd, while the ring runs: the table is swapped under it.
		shm := vhostuser.MemRegion{GPA: 1 << 40, Size: 1 << 21, UserAddr: 1 << 41}
		mt, _ := vhostuser.MemTable{Regions: []vhostuser.MemRegion{r.f.Regions[0].MemRegion, shm}}.MarshalBinary()
		if err := r.f.Ack(vhostuser.ReqSetMemTable, mt, []int{int(r.f.Regions[0].File.Fd()), m.Fds[0]}); err != nil {
			t.Fatalf("start %d: memory table with the shared-memory region: %v", round, err)
		}
		unix.Close(m.Fds[0])
		// Flushes work, then QEMU's stop: disable + GET_VRING_BASE.
		r.flushReq(0, 0)
		r.vq.Publish(0)
		r.vq.Kicked()
		if _, err := r.vq.WaitUsed(1, wait); err != nil {
			t.Fatal(err)
		}
		if err := r.f.Ack(vhostuser.ReqSetVringEnable, frontend.State(0, 0), nil); err != nil {
			t.Fatal(err)
		}
		if _, _, err := r.f.Call(vhostuser.ReqGetVringBase, false, frontend.State(0, 0), nil); err != nil {
			t.Fatal(err)
		}
	}
	// The map's sender counts it after reading our ack, on its own goroutine.
	for deadline := time.Now().Add(wait); r.srv.Stats.ShmemMaps.Load() < 2 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if got := r.srv.Stats.ShmemMaps.Load(); got != 2 {
		t.Fatalf("ShmemMaps = %d, want 2", got)
	}
}

// BenchmarkPmemRequestPath drives flush requests through the fake
// front-end, a real socket and eventfds to the pmem device with a no-op
// flusher, keeping the queue full, and reports requests per second.
func BenchmarkPmemRequestPath(b *testing.B) {
	const qsize = 256
	const inflight = qsize / 2
	r := newRig(b, pmem.Options{Flusher: &countingFlusher{}, Size: 1 << 21}, qsize)
	r.start()
	for i := uint16(0); i < inflight; i++ {
		r.flushReq(i, 0)
	}
	b.ResetTimer()
	start := time.Now()
	submitted, done := 0, 0
	var heads []uint16
	for i := uint16(0); i < inflight && submitted < b.N; i++ {
		heads = append(heads, 2*i)
		submitted++
	}
	r.vq.Publish(heads...)
	r.vq.Kicked()
	for done < b.N {
		// Ask for a call on the next completion, then look again so
		// none is missed.
		r.vq.SetUsedEvent(r.vq.UsedIdx())
		used := r.vq.Reap()
		if len(used) == 0 {
			r.vq.WaitCall(time.Millisecond)
			continue
		}
		done += len(used)
		heads = heads[:0]
		for _, u := range used {
			if submitted < b.N {
				heads = append(heads, uint16(u.ID))
				submitted++
			}
		}
		if len(heads) > 0 {
			if err := r.vq.PublishNotify(heads...); err != nil {
				b.Fatal(err)
			}
		}
	}
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds(), "req/s/queue")
}

// TestUnansweredShmemMapDoesNotHang: a front-end that never answers
// SHMEM_MAP and then goes away must not keep the session alive.
func TestUnansweredShmemMapDoesNotHang(t *testing.T) {
	r := newRig(t, pmem.Options{Flusher: &countingFlusher{}, File: memfdFile(t, 1<<21), Size: 1 << 21, Shmem: true}, 128)
	r.start()
	r.f.Conn.Close() // the back-end channel stays open and silent
	select {
	case err := <-r.done:
		r.done <- err
	case <-time.After(wait):
		t.Fatal("session still running after the front-end closed with a SHMEM_MAP unanswered")
	}
}
