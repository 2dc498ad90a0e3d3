package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nvdimm-backend/nvdimm-backend/flushhint"
	"github.com/nvdimm-backend/nvdimm-backend/memfile"
	"github.com/nvdimm-backend/nvdimm-backend/vhostuser"
	"github.com/nvdimm-backend/nvdimm-backend/vhostuser/frontend"
	"github.com/nvdimm-backend/nvdimm-backend/vhostuser/pmem"
)

func TestPMemVhostUserServer(t *testing.T) {
	dir := t.TempDir()
	backing := filepath.Join(dir, "vu0.img")
	b, err := memfile.Create(backing, memfile.CreateOptions{Size: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	reg := NewRegistry()
	factory := PMemVhostUser(reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	sock := filepath.Join(dir, "vu0.sock")
	dev := Device{Name: "vu0", Backing: backing, Size: 4 << 20}
	srv, err := factory(dev, sock)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v %v", fi, err)
	}
	fe, err := frontend.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	feats, err := fe.GetU64(vhostuser.ReqGetFeatures)
	if err != nil {
		t.Fatal(err)
	}
	if feats&vhostuser.FeatureVersion1 == 0 || feats&pmem.FeatureShmemRegion == 0 {
		t.Fatalf("features %#x lack VERSION_1 or SHMEM_REGION", feats)
	}
	// The names the daemon has always exported, and the server's two
	// that pmem.Start adds.
	for _, name := range []string{"nvdimm_backend_vhost_connections_total", "nvdimm_backend_vhost_bad_chains_total",
		"nvdimm_backend_vhost_pmem_flushes_total", "nvdimm_backend_vhost_pmem_flush_failures_total",
		"nvdimm_backend_vhost_pmem_invalid_requests_total", vhostuser.MetricRequests, vhostuser.MetricShmemMaps} {
		if n := seriesCount(t, reg, name); n != 1 {
			t.Fatalf("%s: %d series, want 1", name, n)
		}
	}
	ps := srv.(*pmemServer)
	if err := ps.engine.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := seriesCount(t, reg, flushhint.MetricRequests); n != 1 {
		t.Fatalf("flush request metric series: %d", n)
	}
	fe.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket left after Close: %v", err)
	}
	if n := seriesCount(t, reg, "nvdimm_backend_vhost_connections_total") + seriesCount(t, reg, flushhint.MetricRequests); n != 0 {
		t.Fatalf("metrics not unregistered: %d series", n)
	}
	// A size QEMU cannot expose as a shared-memory region is refused.
	dev.Size = 3 << 20
	if _, err := factory(dev, sock); err == nil || !strings.Contains(err.Error(), "power of two") {
		t.Fatalf("3 MiB region: %v", err)
	}
	dev.Size, dev.ReadOnly = 4<<20, true
	if _, err := factory(dev, sock); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("read-only: %v", err)
	}
	// A backing with a label area is an nvdimm's, whether the device
	// record says so or only the backing does.
	labelled := filepath.Join(dir, "nv.img")
	lb, err := memfile.Create(labelled, memfile.CreateOptions{Size: 4 << 20, LabelSize: 128 << 10})
	if err != nil {
		t.Fatal(err)
	}
	lb.Close()
	for _, ls := range []uint64{128 << 10, 0} {
		nv := Device{Name: "nv", Backing: labelled, Size: 4 << 20, LabelSize: ls}
		if _, err := factory(nv, sock); err == nil || !strings.Contains(err.Error(), "128 KiB label area") {
			t.Fatalf("labelled backing (recorded label size %d): %v", ls, err)
		}
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket left after refusals: %v", err)
	}
}

func seriesCount(t *testing.T, g prometheus.Gatherer, name string) int {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return len(mf.GetMetric())
		}
	}
	return 0
}

// A daemon restart while the VM runs: the vhost-user server comes back on
// the same socket, so QEMU's reconnecting chardev finds it again.
func TestVhostUserServerSurvivesRestart(t *testing.T) {
	w := newWireQMP(t)
	stateDir := t.TempDir()
	open := func() *Daemon {
		reg := NewRegistry()
		d, err := New(Config{StateDir: stateDir, Backings: MemfileBackings{}, DialQMP: DialQMP, Registry: reg,
			VhostUser: PMemVhostUser(reg, slog.New(slog.NewTextHandler(io.Discard, nil))),
			Logger:    slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	ctx := context.Background()
	d := open()
	if _, err := d.Create(ctx, CreateRequest{Name: "vu0", Backing: DefaultBackingDir(stateDir) + "/vu0.img", Size: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	dv, err := d.Attach(ctx, "vu0", AttachRequest{QMP: w.path, As: KindVhostUser})
	if err != nil {
		t.Fatal(err)
	}
	fe, err := frontend.Dial(dv.VhostUserSocket)
	if err != nil {
		t.Fatal(err)
	}
	fe.Close()
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := frontend.Dial(dv.VhostUserSocket); err == nil {
		t.Fatal("server still up after daemon close")
	}
	d2 := open()
	defer d2.Close(ctx)
	d2.Recover(ctx)
	g, err := d2.Get("vu0")
	if err != nil || g.Attached == nil {
		t.Fatalf("after restart: %+v %v", g, err)
	}
	fe, err = frontend.Dial(dv.VhostUserSocket)
	if err != nil {
		t.Fatalf("front-end cannot reconnect after restart: %v", err)
	}
	if _, err := fe.GetU64(vhostuser.ReqGetFeatures); err != nil {
		t.Fatal(err)
	}
	fe.Close()
}

func TestMemfileBackingsPrepare(t *testing.T) {
	dir := t.TempDir()
	mb := MemfileBackings{}
	ctx := context.Background()
	p := filepath.Join(dir, "sub", "deeper", "a.img")
	info, err := mb.Prepare(ctx, BackingSpec{Path: p, Size: 16 << 20, LabelSize: 128 << 10, Slot: -1})
	if err != nil {
		t.Fatal(err)
	}
	if !info.Created || info.Size != 16<<20 || info.LabelSize != 128<<10 || info.BackingSize < info.Size+info.LabelSize {
		t.Fatalf("created %+v", info)
	}
	// Adopting checks the requested sizes against what is there.
	again, err := mb.Prepare(ctx, BackingSpec{Path: p, Slot: -1})
	if err != nil || again.Created || again.Size != info.Size {
		t.Fatalf("adopt: %+v %v", again, err)
	}
	if _, err := mb.Prepare(ctx, BackingSpec{Path: p, Size: 32 << 20, Slot: -1}); err == nil || !strings.Contains(err.Error(), "not the requested") {
		t.Fatalf("adopt with another size: %v", err)
	}
	if _, err := mb.Prepare(ctx, BackingSpec{Path: filepath.Join(dir, "missing.img"), Slot: -1}); err == nil || !strings.Contains(err.Error(), "no size") {
		t.Fatalf("missing without size: %v", err)
	}
	// A namespace is provisioned through package label/backing by default.
	nsPath := filepath.Join(dir, "ns.img")
	if _, err := mb.Prepare(ctx, BackingSpec{Path: nsPath, Size: 16 << 20, LabelSize: 128 << 10, Namespace: "ns0", Mode: "fsdax", Slot: -1}); err != nil {
		t.Fatalf("namespace with the default provisioner: %v", err)
	}
	if m, err := memfile.ReadMeta(nsPath); err != nil || m.Namespace != "ns0" || m.Mode != "fsdax" || m.UUID == "" {
		t.Fatalf("provisioned namespace not recorded: %+v %v", m, err)
	}
	// Locks: exclusive for writers, shared for readers.
	l, err := mb.Lock(p, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mb.Lock(p, true); !errors.Is(err, ErrBackingLocked) {
		t.Fatalf("reader while a writer holds it: %v", err)
	}
	l.Close()
	r1, err := mb.Lock(p, true)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := mb.Lock(p, true)
	if err != nil {
		t.Fatalf("second reader: %v", err)
	}
	r1.Close()
	r2.Close()
	if err := mb.Remove(p); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Fatal("backing not removed")
	}
}

func TestFileWriteback(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "nv.img")
	b, err := memfile.Create(p, memfile.CreateOptions{Size: 4 << 20, LabelSize: 128 << 10})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	reg := NewRegistry()
	wb := FileWriteback(reg, 20*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)))
	c, err := wb(Device{Name: "nv", Backing: p})
	if err != nil || c == nil {
		t.Fatalf("writeback: %v %v", c, err)
	}
	waitFor(t, func() bool { return seriesCount(t, reg, flushhint.MetricSyncs) == 1 })
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if n := seriesCount(t, reg, flushhint.MetricSyncs); n != 0 {
		t.Fatalf("metrics left after close: %d", n)
	}
	if c, err := wb(Device{Name: "ro", Backing: p, ReadOnly: true}); c != nil || err != nil {
		t.Fatalf("read-only device got writeback: %v %v", c, err)
	}
	if c, err := FileWriteback(reg, 0, nil)(Device{Name: "off", Backing: p}); c != nil || err != nil {
		t.Fatalf("interval 0 got writeback: %v %v", c, err)
	}
}
