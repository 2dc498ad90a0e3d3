package vhostuser_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvdimm-backend/nvdimm-backend/vhostuser"
	"github.com/nvdimm-backend/nvdimm-backend/vhostuser/frontend"
)

const (
	ramGPA  = 0x100000
	ramSize = 0x100000
	bufGPA  = 0x140000 // readable buffers
	outGPA  = 0x180000 // writable buffers
	qsize   = 16
	wait    = 5 * time.Second
)

func quietLog() *slog.Logger {
	if os.Getenv("VHOSTUSER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// echoDev copies each request's readable bytes into its writable part.
// With hold set, completions wait until hold is closed.
type echoDev struct {
	nq      int
	hold    chan struct{}
	handled atomic.Int64
	mu      sync.Mutex
	// +checklocks:mu
	heads []uint16
	// +checklocks:mu
	cfg [8]byte
}

func (d *echoDev) Features() uint64 {
	return vhostuser.FeatureVersion1 | vhostuser.FeatureEventIdx | vhostuser.FeatureIndirectDesc
}
func (d *echoDev) ProtocolFeatures() uint64 { return 0 }
func (d *echoDev) NumQueues() int {
	if d.nq == 0 {
		return 1
	}
	return d.nq
}
func (d *echoDev) MaxQueueSize() int { return 256 }
func (d *echoDev) GetConfig(off, size uint32) ([]byte, error) {
	if uint64(off)+uint64(size) > uint64(len(d.cfg)) {
		return nil, errors.New("outside config")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.cfg[off : off+size]), nil
}
func (d *echoDev) SetConfig(off uint32, data []byte) error {
	if uint64(off)+uint64(len(data)) > uint64(len(d.cfg)) {
		return errors.New("outside config")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(d.cfg[off:], data)
	return nil
}
func (d *echoDev) ShmemRegions() []uint64                  { return nil }
func (d *echoDev) ShmemMappings() []vhostuser.ShmemMapping { return nil }
func (d *echoDev) SetFeatures(uint64) error                { return nil }
func (d *echoDev) HandleRequest(r *vhostuser.Request) {
	d.mu.Lock()
	d.heads = append(d.heads, r.Head())
	d.mu.Unlock()
	d.handled.Add(1)
	buf := make([]byte, r.ReadableLen())
	n, _ := r.ReadAt(buf, 0)
	finish := func() {
		w, _ := r.WriteAt(buf[:n], 0)
		r.Complete(uint32(w))
	}
	if d.hold != nil {
		go func() { <-d.hold; finish() }()
		return
	}
	finish()
}

type fixture struct {
	t    *testing.T
	srv  *vhostuser.Server
	f    *frontend.Frontend
	dev  *echoDev
	vq   *frontend.Vring
	neg  frontend.Negotiated
	done chan error
}

// newFixture connects a fake front-end to a server over a socket pair.
func newFixture(t *testing.T, dev *echoDev) *fixture {
	t.Helper()
	srv, err := vhostuser.NewServer(dev, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	f, sc, err := frontend.Pair()
	if err != nil {
		t.Fatal(err)
	}
	fx := &fixture{t: t, srv: srv, f: f, dev: dev, done: make(chan error, 1)}
	go func() { fx.done <- srv.ServeConn(context.Background(), sc) }()
	t.Cleanup(func() {
		f.Close()
		select {
		case <-fx.done:
		case <-time.After(wait):
			t.Error("server session did not end after the front-end closed")
		}
		if fx.vq != nil {
			fx.vq.Close()
		}
	})
	return fx
}

// start runs realize and start in QEMU's order with one region and ring 0.
func (fx *fixture) start(proto uint64) {
	t := fx.t
	t.Helper()
	var err error
	if fx.neg, err = fx.f.Realize(proto, fx.dev.NumQueues()); err != nil {
		t.Fatalf("realize: %v", err)
	}
	if _, err := fx.f.AddRegion(ramGPA, ramSize); err != nil {
		t.Fatal(err)
	}
	fx.setFeatures()
	if err := fx.f.SetMemTable(); err != nil {
		t.Fatalf("SET_MEM_TABLE: %v", err)
	}
	fx.setupRing()
}

func (fx *fixture) setFeatures() {
	feat := fx.dev.Features() | vhostuser.FeatureProtocolFeatures
	if err := fx.f.Ack(vhostuser.ReqSetFeatures, frontend.U64(feat), nil); err != nil {
		fx.t.Fatalf("SET_FEATURES: %v", err)
	}
}

func (fx *fixture) setupRing() {
	var err error
	if fx.vq == nil {
		if fx.vq, err = fx.f.NewVring(0, qsize, ramGPA); err != nil {
			fx.t.Fatal(err)
		}
	}
	if err := fx.vq.Setup(0, true); err != nil {
		fx.t.Fatalf("ring setup: %v", err)
	}
}

// submit queues request i (descriptors 2i, 2i+1): data readable at
// in, len(data) writable at out; it publishes and kicks.
func (fx *fixture) submitAt(i uint16, data []byte, in, out uint64) {
	if err := fx.f.Write(in, data); err != nil {
		fx.t.Fatal(err)
	}
	fx.vq.SetDesc(2*i, frontend.Desc{Addr: in, Len: uint32(len(data)), Flags: frontend.DescNext, Next: 2*i + 1})
	fx.vq.SetDesc(2*i+1, frontend.Desc{Addr: out, Len: uint32(len(data)), Flags: frontend.DescWrite})
	fx.vq.Publish(2 * i)
	if err := fx.vq.Kicked(); err != nil {
		fx.t.Fatal(err)
	}
}

func (fx *fixture) submit(i uint16, data []byte) {
	fx.submitAt(i, data, bufGPA+0x100*uint64(i), outGPA+0x100*uint64(i))
}

func (fx *fixture) status() uint64 {
	st, err := fx.f.GetU64(vhostuser.ReqGetStatus)
	if err != nil {
		fx.t.Fatalf("GET_STATUS: %v", err)
	}
	return st
}

// expectNeedsReset checks that a bad ring produced no completion, the
// error eventfd fired and GET_STATUS reports NEEDS_RESET.
func (fx *fixture) expectNeedsReset() {
	t := fx.t
	t.Helper()
	if err := frontend.WaitEvent(fx.vq.Err, wait); err != nil {
		t.Fatalf("error eventfd: %v", err)
	}
	if st := fx.status(); st&vhostuser.StatusNeedsReset == 0 {
		t.Fatalf("GET_STATUS %#x lacks NEEDS_RESET", st)
	}
	if u := fx.vq.Reap(); len(u) != 0 {
		t.Fatalf("bad chain completed: %+v", u)
	}
}

const qemuProto = vhostuser.ProtoMQ | vhostuser.ProtoReplyAck | vhostuser.ProtoConfig | vhostuser.ProtoBackendReq |
	vhostuser.ProtoBackendSendFd | vhostuser.ProtoConfigureMemSlots | vhostuser.ProtoInflightShmfd |
	vhostuser.ProtoResetDevice | vhostuser.ProtoStatus

func TestQEMUMessageOrder(t *testing.T) {
	fx := newFixture(t, &echoDev{})
	fx.start(qemuProto)
	if fx.neg.Features&vhostuser.FeatureVersion1 == 0 || fx.neg.Protocol != qemuProto {
		t.Fatalf("negotiated features %#x protocol %#x, want VERSION_1 and %#x", fx.neg.Features, fx.neg.Protocol, uint64(qemuProto))
	}
	if fx.neg.QueueNum != 1 || fx.neg.MemSlots != vhostuser.MaxMemSlots {
		t.Fatalf("queue num %d, mem slots %d", fx.neg.QueueNum, fx.neg.MemSlots)
	}
	if err := fx.f.Ack(vhostuser.ReqSetStatus, frontend.U64(0xf), nil); err != nil {
		t.Fatal(err)
	}
	for i := uint16(0); i < 3; i++ {
		fx.submit(i, []byte{byte(i), 1, 2, 3, 4})
	}
	used, err := fx.vq.WaitUsed(3, wait)
	if err != nil {
		t.Fatal(err)
	}
	for i, u := range used {
		if u.ID != uint32(2*i) || u.Len != 5 {
			t.Fatalf("used %d = %+v, want id %d len 5", i, u, 2*i)
		}
		if got := fx.f.Mem(outGPA+0x100*uint64(i), 5); got[0] != byte(i) || got[4] != 4 {
			t.Fatalf("request %d: device wrote % x", i, got)
		}
	}
	if fx.vq.AvailEvent() != 3 {
		t.Errorf("avail_event %d, want 3 (EVENT_IDX)", fx.vq.AvailEvent())
	}
	if st := fx.status(); st != 0xf {
		t.Errorf("GET_STATUS %#x, want 0xf", st)
	}
	// Stop as QEMU does: disable, then GET_VRING_BASE.
	if err := fx.f.Ack(vhostuser.ReqSetVringEnable, frontend.State(0, 0), nil); err != nil {
		t.Fatal(err)
	}
	p, _, err := fx.f.Call(vhostuser.ReqGetVringBase, false, frontend.State(0, 0), nil)
	if err != nil {
		t.Fatal(err)
	}
	var st vhostuser.VringState
	if err := st.UnmarshalBinary(p); err != nil || st.Num != 3 {
		t.Fatalf("GET_VRING_BASE = %+v, %v; want num 3", st, err)
	}
	// Restart from the reported base: the ring works again.
	fx.setupRing()
	fx.submit(3, []byte("again"))
	if _, err := fx.vq.WaitUsed(1, wait); err != nil {
		t.Fatalf("after restart: %v", err)
	}
}

func TestConfigAndStatus(t *testing.T) {
	fx := newFixture(t, &echoDev{})
	fx.start(qemuProto)
	c, _ := vhostuser.ConfigPayload{Offset: 2, Data: []byte{9, 8, 7}}.MarshalBinary()
	if err := fx.f.Ack(vhostuser.ReqSetConfig, c, nil); err != nil {
		t.Fatal(err)
	}
	q, _ := vhostuser.ConfigPayload{Data: make([]byte, 8)}.MarshalBinary()
	p, _, err := fx.f.Call(vhostuser.ReqGetConfig, false, q, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got vhostuser.ConfigPayload
	if err := got.UnmarshalBinary(p); err != nil || string(got.Data) != "\x00\x00\x09\x08\x07\x00\x00\x00" {
		t.Fatalf("GET_CONFIG = %+v, %v", got, err)
	}
	// Outside the config space: an empty reply (QEMU treats it as an error).
	q, _ = vhostuser.ConfigPayload{Offset: 4, Data: make([]byte, 8)}.MarshalBinary()
	if p, _, err = fx.f.Call(vhostuser.ReqGetConfig, false, q, nil); err != nil || len(p) != 0 {
		t.Fatalf("GET_CONFIG outside: %d bytes, %v; want an empty reply", len(p), err)
	}
	if err := fx.f.Ack(vhostuser.ReqResetDevice, nil, nil); err != nil {
		t.Fatal(err)
	}
	if st := fx.status(); st != 0 {
		t.Fatalf("status after RESET_DEVICE %#x", st)
	}
}

func TestMemoryRegionsAddRemove(t *testing.T) {
	fx := newFixture(t, &echoDev{})
	var err error
	if fx.neg, err = fx.f.Realize(qemuProto, 1); err != nil {
		t.Fatal(err)
	}
	fx.setFeatures()
	a, _ := frontend.NewRegion(ramGPA, ramSize)
	b, _ := frontend.NewRegion(ramGPA+ramSize, ramSize) // adjacent
	fx.f.Regions = append(fx.f.Regions, a, b)
	for _, r := range []*frontend.Region{a, b} {
		p, _ := vhostuser.SingleMemRegion{Region: r.MemRegion}.MarshalBinary()
		if err := fx.f.Ack(vhostuser.ReqAddMemReg, p, []int{int(r.File.Fd())}); err != nil {
			t.Fatalf("ADD_MEM_REG: %v", err)
		}
	}
	fx.setupRing()
	// A buffer in region b, and one straddling a and b.
	fx.submitAt(0, []byte("in b"), b.GPA+0x100, b.GPA+0x200)
	fx.submitAt(1, []byte("straddles"), b.GPA-4, b.GPA+0x300)
	if _, err := fx.vq.WaitUsed(2, wait); err != nil {
		t.Fatal(err)
	}
	if got, _ := fx.f.Read(b.GPA+0x300, 9); string(got) != "straddles" {
		t.Fatalf("straddling copy wrote %q", got)
	}
	// Removing a region that does not exist fails.
	bogus, _ := vhostuser.SingleMemRegion{Region: vhostuser.MemRegion{GPA: 0x9000000, Size: 4096}}.MarshalBinary()
	if err := fx.f.Ack(vhostuser.ReqRemMemReg, bogus, nil); err == nil {
		t.Fatal("REM_MEM_REG of an unknown region acknowledged")
	}
	// Overlapping region refused.
	over, _ := vhostuser.SingleMemRegion{Region: vhostuser.MemRegion{GPA: ramGPA + 4096, Size: 4096}}.MarshalBinary()
	if err := fx.f.Ack(vhostuser.ReqAddMemReg, over, []int{int(a.File.Fd())}); err == nil {
		t.Fatal("overlapping ADD_MEM_REG acknowledged")
	}
	// Remove b: a buffer in it is now outside guest memory.
	p, _ := vhostuser.SingleMemRegion{Region: b.MemRegion}.MarshalBinary()
	if err := fx.f.Ack(vhostuser.ReqRemMemReg, p, nil); err != nil {
		t.Fatalf("REM_MEM_REG: %v", err)
	}
	fx.submitAt(2, []byte("gone"), b.GPA+0x100, a.GPA+0x80000)
	fx.expectNeedsReset()
}

func TestHostileRings(t *testing.T) {
	cases := []struct {
		name  string
		setup func(fx *fixture)
	}{
		{"descriptor loop", func(fx *fixture) {
			fx.vq.SetDesc(0, frontend.Desc{Addr: bufGPA, Len: 4, Flags: frontend.DescNext, Next: 1})
			fx.vq.SetDesc(1, frontend.Desc{Addr: bufGPA, Len: 4, Flags: frontend.DescNext, Next: 0})
			fx.vq.Publish(0)
		}},
		{"head out of range", func(fx *fixture) { fx.vq.Publish(qsize + 3) }},
		{"next out of range", func(fx *fixture) {
			fx.vq.SetDesc(0, frontend.Desc{Addr: bufGPA, Len: 4, Flags: frontend.DescNext, Next: 999})
			fx.vq.Publish(0)
		}},
		{"indirect in indirect", func(fx *fixture) {
			fx.vq.SetDesc(0, frontend.Desc{Addr: bufGPA, Len: 32, Flags: frontend.DescIndirect})
			frontend.Desc{Addr: bufGPA, Len: 32, Flags: frontend.DescIndirect}.Put(fx.f.Mem(bufGPA, 16))
			fx.vq.Publish(0)
		}},
		{"buffer outside memory", func(fx *fixture) {
			fx.vq.SetDesc(0, frontend.Desc{Addr: ramGPA + ramSize - 2, Len: 8})
			fx.vq.Publish(0)
		}},
		{"avail idx jumps", func(fx *fixture) { fx.vq.SetAvailIdx(qsize + 1) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fx := newFixture(t, &echoDev{})
			fx.start(qemuProto)
			c.setup(fx)
			if err := fx.vq.Kicked(); err != nil {
				t.Fatal(err)
			}
			fx.expectNeedsReset()
			if fx.dev.handled.Load() != 0 {
				t.Fatal("a bad chain reached the device")
			}
			// The session still answers.
			if _, err := fx.f.GetU64(vhostuser.ReqGetFeatures); err != nil {
				t.Fatalf("after a bad ring: %v", err)
			}
		})
	}
}

func TestHostileMessages(t *testing.T) {
	hdr := func(rt vhostuser.RequestType, flags uint32, size uint32) []byte {
		b, _ := vhostuser.Header{Request: uint32(rt), Flags: flags, Size: size}.MarshalBinary()
		return b
	}
	expectAck := func(t *testing.T, fx *fixture, rt vhostuser.RequestType, payload []byte, fds []int, wantOK bool) {
		t.Helper()
		err := fx.f.Ack(rt, payload, fds)
		if (err == nil) != wantOK {
			t.Fatalf("%v: ack err %v, want ok=%v", rt, err, wantOK)
		}
	}
	alive := func(t *testing.T, fx *fixture) {
		t.Helper()
		if _, err := fx.f.GetU64(vhostuser.ReqGetFeatures); err != nil {
			t.Fatalf("session no longer answers: %v", err)
		}
	}
	ended := func(t *testing.T, fx *fixture) {
		t.Helper()
		select {
		case <-fx.done:
			fx.done <- nil // for the cleanup
		case <-time.After(wait):
			t.Fatal("the server did not end the session")
		}
	}
	efd := func(t *testing.T) int {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	t.Run("unknown request with NEED_REPLY", func(t *testing.T) {
		fx := newFixture(t, &echoDev{})
		expectAck(t, fx, 99, []byte{1, 2, 3}, nil, false)
		alive(t, fx)
	})
	t.Run("unknown request without reply", func(t *testing.T) {
		fx := newFixture(t, &echoDev{})
		if err := fx.f.Send(1000, false, make([]byte, 40), nil); err != nil {
			t.Fatal(err)
		}
		alive(t, fx)
	})
	t.Run("unsupported request", func(t *testing.T) {
		fx := newFixture(t, &echoDev{})
		expectAck(t, fx, vhostuser.ReqSendRARP, make([]byte, 8), nil, false)
		p, _, err := fx.f.Call(vhostuser.ReqCheckDeviceState, false, nil, nil)
		if err != nil || len(p) != 8 || p[0] == 0 {
			t.Fatalf("CHECK_DEVICE_STATE: % x, %v; want a u64 failure", p, err)
		}
		alive(t, fx)
	})
	t.Run("fd on the wrong message", func(t *testing.T) {
		fx := newFixture(t, &echoDev{})
		expectAck(t, fx, vhostuser.ReqSetOwner, nil, []int{efd(t)}, false)
		expectAck(t, fx, vhostuser.ReqSetVringNum, frontend.State(0, 16), []int{efd(t)}, false)
		alive(t, fx)
	})
	t.Run("kick without fd and without the no-fd bit", func(t *testing.T) {
		fx := newFixture(t, &echoDev{})
		expectAck(t, fx, vhostuser.ReqSetVringKick, frontend.U64(0), nil, false)
		alive(t, fx)
	})
	t.Run("wrong payload size", func(t *testing.T) {
		fx := newFixture(t, &echoDev{})
		expectAck(t, fx, vhostuser.ReqSetVringNum, []byte{1, 2, 3, 4}, nil, false)
		expectAck(t, fx, vhostuser.ReqSetVringAddr, make([]byte, 41), nil, false)
		alive(t, fx)
	})
	t.Run("bad values", func(t *testing.T) {
		fx := newFixture(t, &echoDev{})
		expectAck(t, fx, vhostuser.ReqSetVringNum, frontend.State(5, 16), nil, false)
		expectAck(t, fx, vhostuser.ReqSetVringNum, frontend.State(0, 3), nil, false)
		expectAck(t, fx, vhostuser.ReqSetVringNum, frontend.State(0, 512), nil, false)
		expectAck(t, fx, vhostuser.ReqSetVringBase, frontend.State(0, 0x10000), nil, false)
		expectAck(t, fx, vhostuser.ReqSetVringEnable, frontend.State(0, 1), nil, false) // bit 30 not acked
		expectAck(t, fx, vhostuser.ReqSetFeatures, frontend.U64(1<<40), nil, false)
		expectAck(t, fx, vhostuser.ReqSetProtocolFeatures, frontend.U64(1<<60), nil, false)
		expectAck(t, fx, vhostuser.ReqSetVringNum, frontend.State(0, 16), nil, true)
		alive(t, fx)
	})
	t.Run("overlapping memory table", func(t *testing.T) {
		fx := newFixture(t, &echoDev{})
		r, _ := fx.f.AddRegion(0, 1<<16)
		mt, _ := vhostuser.MemTable{Regions: []vhostuser.MemRegion{r.MemRegion, {GPA: 0x8000, Size: 1 << 16, UserAddr: 1 << 40}}}.MarshalBinary()
		fd := int(r.File.Fd())
		expectAck(t, fx, vhostuser.ReqSetMemTable, mt, []int{fd, fd}, false)
		alive(t, fx)
	})
	t.Run("reply bit on a request", func(t *testing.T) {
		fx := newFixture(t, &echoDev{})
		if err := fx.f.WriteRaw(hdr(vhostuser.ReqSetOwner, vhostuser.ReplyFlags|vhostuser.FlagNeedReply, 0), nil); err != nil {
			t.Fatal(err)
		}
		h, p, _, err := frontend.ReadReply(fx.f.Conn, wait)
		if err != nil || h.Flags != vhostuser.ReplyFlags || len(p) != 8 || p[0] == 0 {
			t.Fatalf("reply %+v % x %v; want a failure ack", h, p, err)
		}
		alive(t, fx)
	})
	t.Run("payload on GET_FEATURES ends the session", func(t *testing.T) {
		fx := newFixture(t, &echoDev{})
		if err := fx.f.Send(vhostuser.ReqGetFeatures, false, make([]byte, 8), nil); err != nil {
			t.Fatal(err)
		}
		ended(t, fx)
	})
	t.Run("oversized", func(t *testing.T) {
		fx := newFixture(t, &echoDev{})
		if err := fx.f.WriteRaw(hdr(vhostuser.ReqSetFeatures, vhostuser.FlagVersion, 1<<20), nil); err != nil {
			t.Fatal(err)
		}
		ended(t, fx)
	})
	t.Run("truncated header", func(t *testing.T) {
		fx := newFixture(t, &echoDev{})
		fx.f.WriteRaw(hdr(vhostuser.ReqSetFeatures, vhostuser.FlagVersion, 8)[:6], nil)
		fx.f.Conn.CloseWrite()
		ended(t, fx)
	})
	t.Run("truncated payload", func(t *testing.T) {
		fx := newFixture(t, &echoDev{})
		fx.f.WriteRaw(append(hdr(vhostuser.ReqSetFeatures, vhostuser.FlagVersion, 8), 1, 2, 3), nil)
		fx.f.Conn.CloseWrite()
		ended(t, fx)
	})
}

func TestGetVringBaseDrains(t *testing.T) {
	dev := &echoDev{hold: make(chan struct{})}
	fx := newFixture(t, dev)
	fx.start(qemuProto)
	fx.submit(0, []byte("a"))
	fx.submit(1, []byte("b"))
	deadline := time.Now().Add(wait)
	for dev.handled.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	type res struct {
		p   []byte
		err error
	}
	got := make(chan res, 1)
	go func() {
		p, _, err := fx.f.Call(vhostuser.ReqGetVringBase, false, frontend.State(0, 0), nil)
		got <- res{p, err}
	}()
	select {
	case r := <-got:
		t.Fatalf("GET_VRING_BASE answered %v before the requests in flight completed", r)
	case <-time.After(100 * time.Millisecond):
	}
	close(dev.hold)
	r := <-got
	var st vhostuser.VringState
	if r.err != nil || st.UnmarshalBinary(r.p) != nil || st.Num != 2 {
		t.Fatalf("GET_VRING_BASE = % x, %v; want num 2", r.p, r.err)
	}
	if u := fx.vq.UsedIdx(); u != 2 {
		t.Fatalf("used idx %d after the drain, want 2", u)
	}
}

func TestNotificationSuppression(t *testing.T) {
	fx := newFixture(t, &echoDev{})
	fx.start(qemuProto)
	// used_event 5: the device must not signal for the first completions.
	fx.vq.SetUsedEvent(5)
	fx.submit(0, []byte("x"))
	if _, err := fx.vq.WaitUsed(1, wait); err != nil {
		t.Fatal(err)
	}
	if err := frontend.WaitEvent(fx.vq.Call, 50*time.Millisecond); err == nil {
		t.Fatal("device signalled although used_event said not yet")
	}
	fx.vq.SetUsedEvent(1)
	fx.submit(1, []byte("y"))
	if err := frontend.WaitEvent(fx.vq.Call, wait); err != nil {
		t.Fatalf("no call after used_event was reached: %v", err)
	}
}

// TestInflightResubmitAfterRestart: the back-end dies with requests in
// flight, a new back-end is started on the same socket, the front-end
// reconnects with the same inflight area, and the new back-end resubmits
// exactly the requests that were in flight, oldest first; the old
// back-end's late completions are dropped.
func TestInflightResubmitAfterRestart(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "vu.sock")
	serve := func(dev *echoDev) (*vhostuser.Server, chan error) {
		srv, err := vhostuser.NewServer(dev, quietLog())
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Listen(sock); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- srv.Serve(context.Background()) }()
		return srv, done
	}
	old := &echoDev{hold: make(chan struct{})}
	srv1, done1 := serve(old)
	f1, err := frontend.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	fx := &fixture{t: t, f: f1, dev: old}
	if fx.neg, err = f1.Realize(qemuProto, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := f1.AddRegion(ramGPA, ramSize); err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, r := range f1.Regions {
			r.Close()
		}
	}()
	// QEMU's start with an inflight area: GET_INFLIGHT_FD (first start
	// only), SET_INFLIGHT_FD, then SET_FEATURES, the memory table, rings.
	ip, _ := vhostuser.InflightPayload{NumQueues: 1, QueueSize: qsize}.MarshalBinary()
	p, fds, err := f1.Call(vhostuser.ReqGetInflightFd, false, ip, nil)
	if err != nil || len(fds) != 1 {
		t.Fatalf("GET_INFLIGHT_FD: %v, %d fds", err, len(fds))
	}
	inflightFd := fds[0]
	defer unix.Close(inflightFd)
	var inf vhostuser.InflightPayload
	if err := inf.UnmarshalBinary(p); err != nil || inf.MmapSize < vhostuser.InflightQueueRegionSize(qsize) {
		t.Fatalf("GET_INFLIGHT_FD reply %+v, %v", inf, err)
	}
	setInflight := func(f *frontend.Frontend) {
		if err := f.Ack(vhostuser.ReqSetInflightFd, p, []int{inflightFd}); err != nil {
			t.Fatalf("SET_INFLIGHT_FD: %v", err)
		}
	}
	setInflight(f1)
	fx.setFeatures()
	if err := f1.SetMemTable(); err != nil {
		t.Fatal(err)
	}
	fx.setupRing()
	defer fx.vq.Close()
	for i := uint16(0); i < 3; i++ {
		fx.submit(i, []byte{'r', byte('0' + i)})
	}
	deadline := time.Now().Add(wait)
	for old.handled.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if old.handled.Load() != 3 {
		t.Fatalf("old back-end saw %d requests", old.handled.Load())
	}
	// The back-end "crashes": its server goes away with 3 requests in flight.
	srv1.Close()
	<-done1
	f1.Conn.Close()

	fresh := &echoDev{}
	srv2, done2 := serve(fresh)
	defer func() { srv2.Close(); <-done2 }()
	f2, err := frontend.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer f2.Conn.Close()
	f2.Regions = f1.Regions
	fx.f, fx.dev = f2, fresh
	fx.vq.Rebind(f2)
	if fx.neg, err = f2.Realize(qemuProto, 1); err != nil {
		t.Fatal(err)
	}
	setInflight(f2)
	fx.setFeatures()
	if err := f2.SetMemTable(); err != nil {
		t.Fatal(err)
	}
	// QEMU restarts from the used index after a back-end crash.
	if err := f2.Ack(vhostuser.ReqSetVringNum, frontend.State(0, qsize), nil); err != nil {
		t.Fatal(err)
	}
	fx.setupRing()
	used, err := fx.vq.WaitUsed(3, wait)
	if err != nil {
		t.Fatalf("resubmission: %v", err)
	}
	fresh.mu.Lock()
	heads := slices.Clone(fresh.heads)
	fresh.mu.Unlock()
	if !slices.Equal(heads, []uint16{0, 2, 4}) {
		t.Fatalf("resubmitted heads %v, want [0 2 4] (oldest first)", heads)
	}
	for i, u := range used {
		if want := fx.f.Mem(outGPA+0x100*uint64(i), 2); want[0] != 'r' || want[1] != byte('0'+i) || u.Len != 2 {
			t.Fatalf("resubmitted request %d: used %+v, output %q", i, u, want)
		}
	}
	// The old back-end's late completions must not touch the ring.
	close(old.hold)
	time.Sleep(50 * time.Millisecond)
	if u := fx.vq.UsedIdx(); u != 3 {
		t.Fatalf("used idx %d after the old back-end's late completions, want 3", u)
	}
	fx.submit(3, []byte("new"))
	if _, err := fx.vq.WaitUsed(1, wait); err != nil {
		t.Fatalf("new request after resubmission: %v", err)
	}
}

// TestReconnect: the front-end goes away and comes back (QEMU's
// reconnect=N); the same server resets and serves the new connection,
// which renegotiates from scratch.
func TestReconnect(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "vu.sock")
	dev := &echoDev{}
	srv, err := vhostuser.NewServer(dev, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(sock); err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(sock); err == nil {
		t.Fatal("a second Listen on a live socket succeeded")
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background()) }()
	for round := 0; round < 3; round++ {
		f, err := frontend.Dial(sock)
		if err != nil {
			t.Fatal(err)
		}
		fx := &fixture{t: t, f: f, dev: dev}
		fx.start(qemuProto)
		fx.submit(0, []byte("hello"))
		if _, err := fx.vq.WaitUsed(1, wait); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		fx.vq.Close()
		f.Close()
	}
	srv.Close()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	// 3 front-ends plus the probe the refused second Listen made (it
	// dialled the live socket and was served as an empty session).
	if n := srv.Stats.Connections.Load(); n != 4 {
		t.Fatalf("%d connections served, want 4", n)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket left behind after Close: %v", err)
	}
}

// TestPollModeKick: SET_VRING_KICK with the no-fd bit makes the back-end
// poll the ring.
func TestPollModeKick(t *testing.T) {
	fx := newFixture(t, &echoDev{})
	var err error
	if fx.neg, err = fx.f.Realize(qemuProto, 1); err != nil {
		t.Fatal(err)
	}
	fx.f.AddRegion(ramGPA, ramSize)
	fx.setFeatures()
	if err := fx.f.SetMemTable(); err != nil {
		t.Fatal(err)
	}
	fx.setupRing()
	if err := fx.f.Ack(vhostuser.ReqSetVringKick, frontend.U64(vhostuser.VringNoFd), nil); err != nil {
		t.Fatal(err)
	}
	fx.vq.SetDesc(0, frontend.Desc{Addr: bufGPA, Len: 4, Flags: frontend.DescNext, Next: 1})
	fx.vq.SetDesc(1, frontend.Desc{Addr: outGPA, Len: 4, Flags: frontend.DescWrite})
	fx.vq.Publish(0) // no kick
	if _, err := fx.vq.WaitUsed(1, wait); err != nil {
		t.Fatalf("polled ring: %v", err)
	}
}

// TestHostileInflightArea: an inflight area that is too small for the
// ring, or full of garbage, is ignored (the ring runs from SET_VRING_BASE)
// and never read out of bounds.
func TestHostileInflightArea(t *testing.T) {
	for _, c := range []struct {
		name  string
		qsize uint16 // inflight area's queue size
		fill  func(b []byte)
	}{
		{"too small", 4, func([]byte) {}},
		{"garbage", qsize, func(b []byte) {
			for i := range b {
				b[i] = byte(i*7 + 1)
			}
			b[8], b[9] = 1, 0         // version 1
			b[10], b[11] = qsize, 0   // desc_num
			b[12], b[13] = 0xff, 0xff // last_batch_head out of range
			b[14], b[15] = 77, 0      // used_idx != used->idx
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			fx := newFixture(t, &echoDev{})
			var err error
			if fx.neg, err = fx.f.Realize(qemuProto, 1); err != nil {
				t.Fatal(err)
			}
			fx.f.AddRegion(ramGPA, ramSize)
			size := vhostuser.InflightQueueRegionSize(c.qsize)
			fd, err := unix.MemfdCreate("inflight", unix.MFD_CLOEXEC)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			unix.Ftruncate(fd, int64(size))
			m, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
			if err != nil {
				t.Fatal(err)
			}
			c.fill(m)
			unix.Munmap(m)
			p, _ := vhostuser.InflightPayload{MmapSize: size, NumQueues: 1, QueueSize: c.qsize}.MarshalBinary()
			if err := fx.f.Ack(vhostuser.ReqSetInflightFd, p, []int{fd}); err != nil {
				t.Fatal(err)
			}
			fx.setFeatures()
			if err := fx.f.SetMemTable(); err != nil {
				t.Fatal(err)
			}
			fx.setupRing()
			fx.submit(0, []byte("ok"))
			used, err := fx.vq.WaitUsed(1, wait)
			if err != nil {
				t.Fatal(err)
			}
			if used[0].ID != 0 || fx.dev.handled.Load() != 1 {
				t.Fatalf("used %+v, device saw %d requests; want only the new one", used, fx.dev.handled.Load())
			}
		})
	}
}
