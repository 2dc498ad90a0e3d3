package pmem_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nvdimm-backend/nvdimm-backend/vhostuser"
	"github.com/nvdimm-backend/nvdimm-backend/vhostuser/frontend"
	"github.com/nvdimm-backend/nvdimm-backend/vhostuser/pmem"
)

func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "device" && l.GetValue() == "pm0" {
					out[mf.GetName()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

// connectAndFlush connects a front-end to the service at sock, realizes
// the device with one ring and starts it, checks the SHMEM_MAP that comes
// with the start (one descriptor), and has one flush (descriptor 0, avail
// index 0) answered OK. The front-end and its ring are closed when the
// test ends.
func connectAndFlush(t *testing.T, sock string, svc *pmem.Service) *rig {
	t.Helper()
	f, err := frontend.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, dev: svc.Device, srv: svc.Server, f: f}
	t.Cleanup(func() {
		f.Close()
		if r.vq != nil {
			r.vq.Close()
		}
	})
	if r.neg, err = f.Realize(proto, 1); err != nil {
		t.Fatal(err)
	}
	f.AddRegion(ramGPA, ramSize)
	if r.vq, err = f.NewVring(0, 64, ramGPA); err != nil {
		t.Fatal(err)
	}
	r.start()
	if m, err := f.ReadBackendRequest(0); err != nil || vhostuser.BackendRequestType(m.Header.Request) != vhostuser.BackendShmemMap || len(m.Fds) != 1 {
		t.Fatalf("SHMEM_MAP: %+v %v", m, err)
	}
	r.flushReq(0, pmem.ReqTypeFlush)
	r.vq.Publish(0)
	r.vq.Kicked()
	if _, err := r.vq.WaitUsed(1, wait); err != nil || r.ret(0) != pmem.RespOK {
		t.Fatalf("first flush: ret %d %v", r.ret(0), err)
	}
	return r
}

// TestServiceUnmapConfigChangeAndMetrics runs the Service on a real
// socket: a flush, SHMEM_UNMAP and CONFIG_CHANGE_MSG sent from outside
// the message loop, metrics registered and unregistered on Close.
func TestServiceUnmapConfigChangeAndMetrics(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "pm0.sock")
	reg := prometheus.NewRegistry()
	backing := memfdFile(t, 1<<21)
	svc, err := pmem.Start(pmem.ServiceOptions{Socket: sock, Name: "pm0", Registerer: reg, Log: quietLog()},
		pmem.Options{Flusher: &countingFlusher{}, File: backing, Size: 1 << 21, Shmem: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pmem.Start(pmem.ServiceOptions{Socket: sock, Name: "pm0", Log: quietLog()},
		pmem.Options{Flusher: &countingFlusher{}, File: backing, Size: 1 << 21, Shmem: true}); err == nil {
		t.Fatal("a second service on a live socket started")
	}
	if err := svc.Server.NotifyConfigChange(); err == nil {
		t.Fatal("CONFIG_CHANGE_MSG without a front-end succeeded")
	}
	r := connectAndFlush(t, sock, svc)
	f := r.f

	errc := make(chan error, 1)
	go func() {
		errc <- svc.Server.UnmapShmem(svc.Device.ShmemMappings()[0])
	}()
	um, err := f.ReadBackendRequest(0)
	if err != nil || vhostuser.BackendRequestType(um.Header.Request) != vhostuser.BackendShmemUnmap || len(um.Fds) != 0 || um.Req.Len != 1<<21 {
		t.Fatalf("SHMEM_UNMAP: %+v, %v", um, err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("UnmapShmem: %v", err)
	}
	go func() { errc <- svc.Server.NotifyConfigChange() }()
	cm, err := f.ReadBackendRequest(0)
	if err != nil || vhostuser.BackendRequestType(cm.Header.Request) != vhostuser.BackendConfigChangeMsg {
		t.Fatalf("CONFIG_CHANGE_MSG: %+v, %v", cm, err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("NotifyConfigChange: %v", err)
	}
	// A failure answered by the front-end is reported.
	go func() { errc <- svc.Server.UnmapShmem(svc.Device.ShmemMappings()[0]) }()
	if _, err := f.ReadBackendRequest(1); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err == nil {
		t.Fatal("UnmapShmem ignored the front-end's failure")
	}

	for deadline := time.Now().Add(wait); svc.Server.Stats.ShmemMaps.Load() < 1 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	got := gather(t, reg)
	want := map[string]float64{
		pmem.MetricFlushes: 1, pmem.MetricFailures: 0, vhostuser.MetricRequests: 1,
		// 2 connections: ours and the probe of the refused second Start.
		vhostuser.MetricShmemMaps: 1, vhostuser.MetricConnections: 2,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
	if err := svc.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := gather(t, reg); len(got) != 0 {
		t.Fatalf("metrics left after Close: %v", got)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket left after Close: %v", err)
	}
}

// TestServiceDetachTakeover is the daemon's restart with a keeper: a
// Service keeps its front-end in a keeper, Detach leaves the connection
// there, and a Service started again on the same socket and keeper takes
// the session over from the compacted journal: flushes are answered by
// the new device, the shared-memory region is not mapped a second time
// (QEMU still has it), and Close then lets the front-end go.
func TestServiceDetachTakeover(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "pm0.sock")
	kpath := sock + ".keeper"
	kdone := make(chan error, 1)
	go func() { kdone <- vhostuser.RunKeeper(kpath, quietLog()) }()
	for deadline := time.Now().Add(wait); ; time.Sleep(5 * time.Millisecond) {
		if f, err := frontend.Dial(kpath); err == nil {
			f.Conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("keeper did not listen")
		}
	}
	backing := memfdFile(t, 1<<21)
	start := func(fl pmem.Flusher) *pmem.Service {
		svc, err := pmem.Start(pmem.ServiceOptions{Socket: sock, Name: "pm0", Log: quietLog(), Keeper: vhostuser.Keeper{Path: kpath, JournalLimit: 16}},
			pmem.Options{Flusher: fl, File: backing, Size: 1 << 21, Shmem: true})
		if err != nil {
			t.Fatal(err)
		}
		return svc
	}
	svc := start(&countingFlusher{})
	r := connectAndFlush(t, sock, svc)
	f := r.f
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := svc.Detach(ctx); err != nil {
		t.Fatal(err)
	}
	fl2 := &countingFlusher{}
	svc2 := start(fl2)
	r.flushReq(1, pmem.ReqTypeFlush)
	r.vq.Publish(2)
	r.vq.Kicked()
	if _, err := r.vq.WaitUsed(1, wait); err != nil || r.ret(1) != pmem.RespOK {
		t.Fatalf("flush after the takeover: ret %d %v", r.ret(1), err)
	}
	if svc2.Device.Stats.Flushes.Load() != 1 {
		t.Fatalf("the new device answered %d flushes, want 1", svc2.Device.Stats.Flushes.Load())
	}
	f.Timeout = 200 * time.Millisecond
	if m, err := f.ReadBackendRequest(0); err == nil {
		t.Fatalf("the new server sent %#x on the back-end channel; the region is still mapped", m.Header.Request)
	}
	if err := svc2.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-kdone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait):
		t.Fatal("the keeper still holds the front-end after Close")
	}
}
