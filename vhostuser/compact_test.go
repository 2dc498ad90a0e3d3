package vhostuser_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvdimm-backend/nvdimm-backend/vhostuser"
	"github.com/nvdimm-backend/nvdimm-backend/vhostuser/frontend"
)

const (
	ram2GPA  = 0x200000 // a second region, added with ADD_MEM_REG
	ram2Size = 0x100000
)

// keptServer is a server on sock whose connections are kept by an
// in-process keeper at sock + ".keeper".
type keptServer struct {
	srv  *vhostuser.Server
	done chan error
}

func startKeeper(t *testing.T, path string) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- vhostuser.RunKeeper(path, quietLog()) }()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if f, err := frontend.Dial(path); err == nil {
			f.Conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("keeper did not listen")
		}
	}
	t.Cleanup(func() {
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("keeper: %v", err)
			}
		case <-time.After(wait):
			t.Error("keeper did not exit after the front-end hung up")
		}
	})
}

func serveKept(t *testing.T, dev vhostuser.Backend, sock string, limit int) *keptServer {
	t.Helper()
	srv, err := vhostuser.NewServer(dev, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	srv.SetKeeper(vhostuser.Keeper{Path: sock + ".keeper", JournalLimit: limit})
	if err := srv.Listen(sock); err != nil {
		t.Fatal(err)
	}
	ks := &keptServer{srv: srv, done: make(chan error, 1)}
	go func() { ks.done <- srv.Serve(context.Background()) }()
	return ks
}

func (ks *keptServer) stop(t *testing.T, detach bool) {
	t.Helper()
	if detach {
		ks.srv.Detach()
	} else {
		ks.srv.Close()
	}
	select {
	case err := <-ks.done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(wait):
		t.Fatal("Serve did not return")
	}
}

// stopRing is QEMU's stop of ring 0: GET_VRING_BASE; it returns the base.
func (fx *fixture) stopRing() uint16 {
	fx.t.Helper()
	p, _, err := fx.f.Call(vhostuser.ReqGetVringBase, false, frontend.State(0, 0), nil)
	if err != nil {
		fx.t.Fatalf("GET_VRING_BASE: %v", err)
	}
	var st vhostuser.VringState
	if err := st.UnmarshalBinary(p); err != nil {
		fx.t.Fatal(err)
	}
	return uint16(st.Num)
}

// reboot is a guest reboot as QEMU sends it: stop, then features, memory
// table and ring set-up from the base the back-end answered.
func (fx *fixture) reboot() {
	fx.t.Helper()
	base := fx.stopRing()
	fx.setFeatures()
	if err := fx.f.SetMemTable(); err != nil {
		fx.t.Fatalf("SET_MEM_TABLE: %v", err)
	}
	if err := fx.vq.Setup(base, true); err != nil {
		fx.t.Fatalf("ring setup: %v", err)
	}
}

func (fx *fixture) addRegion2() {
	fx.t.Helper()
	r, err := frontend.NewRegion(ram2GPA, ram2Size)
	if err != nil {
		fx.t.Fatal(err)
	}
	fx.f.Regions = append(fx.f.Regions, r)
	p, _ := vhostuser.SingleMemRegion{Region: r.MemRegion}.MarshalBinary()
	if err := fx.f.Ack(vhostuser.ReqAddMemReg, p, []int{int(r.File.Fd())}); err != nil {
		fx.t.Fatalf("ADD_MEM_REG: %v", err)
	}
}

// roundTrip submits request i reading data from the second region and
// writing into the first, and checks the echo: both regions are mapped
// where the front-end put them.
func (fx *fixture) roundTrip(i uint16, data []byte) {
	fx.t.Helper()
	in, out := ram2GPA+0x100*uint64(i), outGPA+0x100*uint64(i)
	if err := fx.f.Write(out, make([]byte, len(data))); err != nil {
		fx.t.Fatal(err)
	}
	fx.submitAt(i, data, in, out)
	if _, err := fx.vq.WaitUsed(1, wait); err != nil {
		fx.t.Fatalf("request %d not answered: %v", i, err)
	}
	got, err := fx.f.Read(out, uint64(len(data)))
	if err != nil || !bytes.Equal(got, data) {
		fx.t.Fatalf("request %d echoed %q (%v), want %q", i, got, err, data)
	}
}

// TestJournalSnapshotExact: at each stage of a device's life (realize,
// start with an inflight area, requests, a second memory region, stop,
// region removal, restart, poll-mode kick, status), replaying the
// snapshot of the state the journal leads to gives the same state,
// descriptors included, as replaying the journal; and the comparison does
// see a difference when the journal's last record is left out.
func TestJournalSnapshotExact(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "vu.sock")
	startKeeper(t, sock+".keeper")
	dev := &echoDev{}
	ks := serveKept(t, dev, sock, 1<<20) // never compacts by itself
	f, err := frontend.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	fx := &fixture{t: t, f: f, dev: dev}
	defer func() {
		f.Close()
		if fx.vq != nil {
			fx.vq.Close()
		}
		ks.stop(t, false)
	}()
	check := func(stage string, control bool) {
		t.Helper()
		var ab, ac []string
		var n, m int
		var err error
		// The keeper reads the server's channel on its own goroutine:
		// wait until it has the journal up to the last message.
		for deadline := time.Now().Add(wait); ; time.Sleep(10 * time.Millisecond) {
			ab, ac, n, m, err = vhostuser.SnapshotCheck(ks.srv, sock+".keeper")
			if errors.Is(err, vhostuser.ErrNoKcmp) {
				t.Skip(err)
			}
			if err != nil {
				// The keeper may not have read the connection yet.
				if time.Now().After(deadline) {
					t.Fatalf("%s: %v", stage, err)
				}
				continue
			}
			if (len(ab) == 0 && (!control || len(ac) > 0)) || time.Now().After(deadline) {
				break
			}
		}
		if len(ab) != 0 {
			t.Fatalf("%s: snapshot (%d records) of the journal (%d) differs:\n%s", stage, m, n, ab)
		}
		if control && len(ac) == 0 {
			t.Fatalf("%s: leaving out the journal's last record made no difference; the check sees nothing", stage)
		}
		t.Logf("%s: journal %d records, snapshot %d", stage, n, m)
	}
	if fx.neg, err = f.Realize(qemuProto, 1); err != nil {
		t.Fatal(err)
	}
	check("realize", true)
	if _, err := f.AddRegion(ramGPA, ramSize); err != nil {
		t.Fatal(err)
	}
	fx.setFeatures()
	if err := f.SetMemTable(); err != nil {
		t.Fatal(err)
	}
	ip, _ := vhostuser.InflightPayload{NumQueues: 1, QueueSize: qsize}.MarshalBinary()
	rp, rfds, err := f.Call(vhostuser.ReqGetInflightFd, false, ip, nil)
	if err != nil || len(rfds) != 1 {
		t.Fatalf("GET_INFLIGHT_FD: %v (%d fds)", err, len(rfds))
	}
	if err := f.Ack(vhostuser.ReqSetInflightFd, rp, rfds); err != nil {
		t.Fatalf("SET_INFLIGHT_FD: %v", err)
	}
	unix.Close(rfds[0])
	fx.setupRing()
	check("started", true)
	fx.addRegion2()
	check("second region", true)
	fx.roundTrip(0, []byte("one"))
	check("after a request", false)
	base := fx.stopRing()
	check("stopped", true)
	p, _ := vhostuser.SingleMemRegion{Region: f.Regions[1].MemRegion}.MarshalBinary()
	if err := f.Ack(vhostuser.ReqRemMemReg, p, nil); err != nil {
		t.Fatalf("REM_MEM_REG: %v", err)
	}
	check("region removed", true)
	fx.setFeatures()
	if err := fx.vq.Setup(base, true); err != nil {
		t.Fatal(err)
	}
	check("restarted", true)
	if err := f.Ack(vhostuser.ReqSetVringKick, frontend.U64(vhostuser.VringNoFd), nil); err != nil {
		t.Fatalf("poll-mode kick: %v", err)
	}
	check("poll mode", true)
	if err := f.Ack(vhostuser.ReqSetStatus, frontend.U64(0xf), nil); err != nil {
		t.Fatal(err)
	}
	check("status", true)
	// Keeper request numbers from the front-end are refused and not
	// journalled: the keeper neither drops the connection (0xff03) nor
	// starts a replacement journal that never ends (0xff04).
	before, _, err := vhostuser.KeeperJournalStats(sock + ".keeper")
	if err != nil {
		t.Fatal(err)
	}
	for _, rt := range []vhostuser.RequestType{0xff04, 0xff03} {
		if err := f.Ack(rt, nil, nil); err == nil {
			t.Fatalf("request %#x acknowledged", uint32(rt))
		}
	}
	if err := f.Ack(vhostuser.ReqSetStatus, frontend.U64(0x7), nil); err != nil {
		t.Fatal(err)
	}
	check("after keeper request numbers", true)
	if after, _, err := vhostuser.KeeperJournalStats(sock + ".keeper"); err != nil || after != before+1 {
		t.Fatalf("journal %d records (%v) after refused requests and SET_STATUS, want %d", after, err, before+1)
	}
}

// TestKeeperJournalBounded runs many guest reboots against a server with
// a small journal limit: the keeper's journal (records and descriptors)
// stays under the limit plus one snapshot, where it would otherwise grow
// with every reboot. Then the server is stopped as for a restart and a
// new one takes the connection over from the compacted journal: it
// compacts again at once, answers requests through both memory regions
// and keeps answering messages.
func TestKeeperJournalBounded(t *testing.T) {
	const (
		limit   = 24
		maxSnap = 16 // a one-queue snapshot is about 12 records, 8 fds
		reboots = 30
	)
	sock := filepath.Join(t.TempDir(), "vu.sock")
	kpath := sock + ".keeper"
	startKeeper(t, kpath)
	dev := &echoDev{}
	ks := serveKept(t, dev, sock, limit)
	f, err := frontend.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	fx := &fixture{t: t, f: f, dev: dev}
	defer func() {
		f.Close()
		if fx.vq != nil {
			fx.vq.Close()
		}
	}()
	fx.start(qemuProto)
	fx.addRegion2()
	fx.roundTrip(0, []byte("first"))
	shrank, peak := false, 0
	prev := 0
	for i := 1; i <= reboots; i++ {
		fx.reboot()
		fx.roundTrip(uint16(i%8), []byte(fmt.Sprintf("boot %d", i)))
		n, nfds, err := vhostuser.KeeperJournalStats(kpath)
		if err != nil {
			t.Fatal(err)
		}
		if n > limit+maxSnap || nfds > limit+maxSnap {
			t.Fatalf("reboot %d: journal of %d records with %d fds exceeds %d", i, n, nfds, limit+maxSnap)
		}
		shrank = shrank || n < prev
		prev, peak = n, max(peak, n)
	}
	// Each reboot sends 11 messages: without compaction the journal
	// would hold over 300 records.
	if !shrank {
		t.Fatalf("the journal never shrank (peak %d records)", peak)
	}

	// A restart: the connection stays with the keeper.
	ks.stop(t, true)
	dev2 := &echoDev{}
	ks2 := serveKept(t, dev2, sock, limit)
	defer ks2.stop(t, false)
	// The new server compacts right after the takeover.
	for deadline := time.Now().Add(wait); ; time.Sleep(10 * time.Millisecond) {
		n, _, err := vhostuser.KeeperJournalStats(kpath)
		if err != nil {
			t.Fatal(err)
		}
		if n <= maxSnap {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("journal of %d records after the takeover, want a snapshot of at most %d", n, maxSnap)
		}
	}
	fx.roundTrip(3, []byte("after the takeover"))
	if dev2.handled.Load() != 1 {
		t.Fatalf("the new server handled %d requests, want 1", dev2.handled.Load())
	}
	if _, err := f.GetU64(vhostuser.ReqGetFeatures); err != nil {
		t.Fatalf("GET_FEATURES after the takeover: %v", err)
	}
	// And the taken-over session reboots and compacts like the first.
	for i := 0; i < 5; i++ {
		fx.reboot()
		fx.roundTrip(uint16(4+i%4), []byte(fmt.Sprintf("reboot %d after the takeover", i)))
	}
	if n, _, err := vhostuser.KeeperJournalStats(kpath); err != nil || n > limit+maxSnap {
		t.Fatalf("journal after reboots on the new server: %d records, %v", n, err)
	}
}
