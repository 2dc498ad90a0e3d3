package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

const mib = 1 << 20

func (e *env) create(name string) Device {
	e.t.Helper()
	dv, err := e.d.Create(context.Background(), CreateRequest{
		Name: name, Backing: filepath.Join(e.backDir, name+".img"), Size: 64 * mib, LabelSize: 128 << 10,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return dv
}

// createPlain registers a label-less device, which virtio-pmem and
// vhost-user accept.
func (e *env) createPlain(name string) Device {
	e.t.Helper()
	dv, err := e.d.Create(context.Background(), CreateRequest{
		Name: name, Backing: filepath.Join(e.backDir, name+".img"), Size: 64 * mib,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return dv
}

func TestCreateListAndRestart(t *testing.T) {
	e := newEnv(t)
	dv := e.create("pm0")
	if !dv.Created || dv.BackingSize != 64*mib+128<<10 || dv.Size != 64*mib {
		t.Fatalf("created device = %+v", dv)
	}
	fi, err := os.Stat(dv.Backing)
	if err != nil || fi.Size() != int64(dv.BackingSize) {
		t.Fatalf("backing: %v %v", fi, err)
	}
	if _, err := e.d.Create(context.Background(), CreateRequest{Name: "pm0", Backing: filepath.Join(e.backDir, "x.img"), Size: mib}); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate name: %v", err)
	}
	if _, err := e.d.Create(context.Background(), CreateRequest{Name: "pm1", Backing: dv.Backing}); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate backing: %v", err)
	}
	st, err := os.Stat(e.d.StatePath())
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("state file: %v %v", st, err)
	}
	// A second daemon on the same state directory finds the same registry.
	_ = e.d.Close(context.Background())
	d2 := e.open()
	got := d2.List()
	if len(got) != 1 || got[0].Name != "pm0" || got[0].Backing != dv.Backing || got[0].BackingSize != dv.BackingSize {
		t.Fatalf("after restart: %+v", got)
	}
}

func TestCreateRefusesBadRequests(t *testing.T) {
	e := newEnv(t)
	cases := []struct {
		req  CreateRequest
		want string
	}{
		{CreateRequest{Name: "", Backing: e.backDir + "/a", Size: mib}, "1 to 64"},
		{CreateRequest{Name: "../x", Backing: e.backDir + "/a", Size: mib}, "not allowed"},
		{CreateRequest{Name: "a", Backing: "/etc/passwd", Size: mib}, "must resolve to a path under a backing directory"},
		{CreateRequest{Name: "a", Backing: e.backDir + "/../escape", Size: mib}, "must resolve"},
		{CreateRequest{Name: "a", Backing: "rel/path", Size: mib}, "must be absolute"},
		{CreateRequest{Name: "a", Backing: e.backDir + "/a", Size: mib, LabelSize: 4096}, "at least 128 KiB"},
		{CreateRequest{Name: "a", Backing: e.backDir + "/a", Size: mib, Mode: "bogus"}, "want fsdax"},
		{CreateRequest{Name: "a", Backing: e.backDir + "/a", Size: mib, Namespace: "ns", Mode: "fsdax"}, "needs a label area"},
	}
	for _, c := range cases {
		_, err := e.d.Create(context.Background(), c.req)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: err = %v, want %q", c.req, err, c.want)
		}
	}
	if n := len(e.d.List()); n != 0 {
		t.Fatalf("registry has %d devices after refusals", n)
	}
}

func TestAttachNVDIMMAndRelease(t *testing.T) {
	e := newEnv(t)
	e.create("pm0")
	dv, err := e.d.Attach(context.Background(), "pm0", AttachRequest{QMP: e.qmpPath, As: KindNVDIMM})
	if err != nil {
		t.Fatal(err)
	}
	if dv.Attached == nil || dv.Attached.DeviceID != "nvb-dev-pm0" || dv.Attached.Addr != 4<<30 || dv.Kind != KindNVDIMM {
		t.Fatalf("attached = %+v", dv.Attached)
	}
	if got, want := e.vm.callList(), []string{"object-add", "device_add", "query-memory-devices"}; !slices.Equal(got, want) {
		t.Fatalf("QMP calls %v, want %v", got, want)
	}
	obj, dev := e.vm.args[0], e.vm.args[1]
	if obj["qom-type"] != "memory-backend-file" || obj["share"] != true || obj["size"] != float64(dv.BackingSize) || obj["mem-path"] != dv.Backing || obj["align"] != float64(2<<20) {
		t.Errorf("object-add args %v", obj)
	}
	if dev["driver"] != "nvdimm" || dev["label-size"] != float64(128<<10) || dev["memdev"] != "nvb-mem-pm0" || dev["unarmed"] != nil {
		t.Errorf("device_add args %v", dev)
	}
	// The backing is locked while attached.
	if _, err := (fileBackings{}).Lock(dv.Backing, false); !errors.Is(err, ErrBackingLocked) {
		t.Fatalf("backing not locked while attached: %v", err)
	}
	// Attached devices cannot be deleted or attached again.
	if err := e.d.Delete(context.Background(), "pm0", false); !errors.Is(err, ErrConflict) {
		t.Fatalf("delete attached: %v", err)
	}
	if _, err := e.d.Attach(context.Background(), "pm0", AttachRequest{QMP: e.qmpPath, As: KindNVDIMM}); !errors.Is(err, ErrConflict) {
		t.Fatalf("second attach: %v", err)
	}
	// Detach is refused with QEMU's reason and changes nothing.
	err = e.d.Detach(context.Background(), "pm0")
	var qe *QEMUError
	if !errors.As(err, &qe) || !strings.Contains(qe.Desc, "hot unplug is not supported") || qe.Command != "device_del" {
		t.Fatalf("detach: %v", err)
	}
	if g, _ := e.d.Get("pm0"); g.Attached == nil {
		t.Fatal("detach refusal cleared the attachment")
	}
	// The VM exits: the device is released and its lock dropped.
	e.vm.exit()
	waitFor(t, func() bool { g, _ := e.d.Get("pm0"); return g.Attached == nil })
	l, err := (fileBackings{}).Lock(dv.Backing, false)
	if err != nil {
		t.Fatalf("backing still locked after release: %v", err)
	}
	l.Close()
	d2 := e.open() // persisted
	if g, _ := d2.Get("pm0"); g.Attached != nil || g.Kind != KindNVDIMM {
		t.Fatalf("after release and reopen: %+v", g)
	}
}

func TestAttachReadOnlyIsUnarmed(t *testing.T) {
	e := newEnv(t)
	if _, err := e.d.Create(context.Background(), CreateRequest{Name: "ro", Backing: e.backDir + "/ro.img", Size: 32 * mib, ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.Attach(context.Background(), "ro", AttachRequest{QMP: e.qmpPath, As: KindNVDIMM}); err != nil {
		t.Fatal(err)
	}
	if e.vm.args[0]["readonly"] != true || e.vm.args[1]["unarmed"] != true || e.vm.args[1]["label-size"] != nil {
		t.Fatalf("args %v / %v", e.vm.args[0], e.vm.args[1])
	}
}

func TestAttachUsesLabelSlot(t *testing.T) {
	e := newEnv(t)
	slot := 2
	if _, err := e.d.Create(context.Background(), CreateRequest{Name: "ns", Backing: e.backDir + "/ns.img", Size: 32 * mib, LabelSize: 128 << 10, Namespace: "ns0", Mode: "fsdax", Slot: &slot}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.Attach(context.Background(), "ns", AttachRequest{QMP: e.qmpPath, As: KindNVDIMM}); err != nil {
		t.Fatal(err)
	}
	if e.vm.args[1]["slot"] != float64(2) {
		t.Fatalf("device_add args %v", e.vm.args[1])
	}
	bad := 300
	if _, err := e.d.Create(context.Background(), CreateRequest{Name: "x", Backing: e.backDir + "/x.img", Size: 32 * mib, LabelSize: 128 << 10, Namespace: "n", Mode: "raw", Slot: &bad}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("slot 300: %v", err)
	}
}

func TestAttachRollsBackOnRefusal(t *testing.T) {
	e := newEnv(t)
	dv := e.create("pm0")
	e.vm.refuse["device_add"] = &QEMUError{Class: "GenericError", Desc: "nvdimm is not enabled: add 'nvdimm=on' to '-M'"}
	_, err := e.d.Attach(context.Background(), "pm0", AttachRequest{QMP: e.qmpPath, As: KindNVDIMM})
	var qe *QEMUError
	if !errors.As(err, &qe) || !strings.Contains(err.Error(), "nvdimm=on") || qe.Command != "device_add" {
		t.Fatalf("attach: %v", err)
	}
	if got, want := e.vm.callList(), []string{"object-add", "device_add", "object-del"}; !slices.Equal(got, want) {
		t.Fatalf("calls %v, want %v", got, want)
	}
	if len(e.vm.objects) != 0 {
		t.Fatalf("objects left in QEMU: %v", e.vm.objects)
	}
	assertUnlocked(t, dv.Backing)
	if g, _ := e.d.Get("pm0"); g.Attached != nil {
		t.Fatal("attachment recorded after failure")
	}
}

func TestAttachRollsBackWhenNotConfirmed(t *testing.T) {
	e := newEnv(t)
	dv := e.createPlain("pm0")
	e.vm.hideDevs = true
	_, err := e.d.Attach(context.Background(), "pm0", AttachRequest{QMP: e.qmpPath, As: KindVirtioPMEM, Bus: "rp1"})
	if err == nil || !strings.Contains(err.Error(), "not in query-memory-devices") {
		t.Fatalf("attach: %v", err)
	}
	calls := e.vm.callList()
	if !slices.Equal(calls, []string{"object-add", "device_add", "query-memory-devices", "device_del", "object-del"}) {
		t.Fatalf("calls %v", calls)
	}
	if e.vm.args[1]["driver"] != "virtio-pmem-pci" || e.vm.args[1]["bus"] != "rp1" {
		t.Fatalf("device_add args %v", e.vm.args[1])
	}
	assertUnlocked(t, dv.Backing)
}

func TestAttachLockedBacking(t *testing.T) {
	e := newEnv(t)
	dv := e.create("pm0")
	l, err := (fileBackings{}).Lock(dv.Backing, false)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = e.d.Attach(context.Background(), "pm0", AttachRequest{QMP: e.qmpPath, As: KindNVDIMM})
	if !errors.Is(err, ErrBackingLocked) {
		t.Fatalf("attach: %v", err)
	}
	if n := len(e.vm.callList()); n != 0 {
		t.Fatalf("%d QMP commands sent for a locked backing", n)
	}
}

func TestAttachBadQMPAndKinds(t *testing.T) {
	e := newEnv(t)
	e.create("pm0")
	plain := filepath.Join(t.TempDir(), "notasocket")
	os.WriteFile(plain, nil, 0o600)
	cases := []struct {
		req  AttachRequest
		want string
	}{
		{AttachRequest{QMP: "/nonexistent/vm.qmp", As: KindNVDIMM}, "no such file"},
		{AttachRequest{QMP: plain, As: KindNVDIMM}, "not a Unix socket"},
		{AttachRequest{QMP: "vm.qmp", As: KindNVDIMM}, "absolute"},
		{AttachRequest{QMP: e.qmpPath, As: "dimm"}, "want nvdimm"},
		{AttachRequest{QMP: e.qmpPath, As: KindVirtioPMEM, Bus: "a,b=c"}, "not a QEMU id"},
	}
	for _, c := range cases {
		if _, err := e.d.Attach(context.Background(), "pm0", c.req); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.req, err, c.want)
		}
	}
	if _, err := e.d.Attach(context.Background(), "nope", AttachRequest{QMP: e.qmpPath, As: KindNVDIMM}); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown device: %v", err)
	}
}

func TestAttachVhostUser(t *testing.T) {
	e := newEnv(t)
	e.createPlain("vu0")
	dv, err := e.d.Attach(context.Background(), "vu0", AttachRequest{QMP: e.qmpPath, As: KindVhostUser})
	if err != nil {
		t.Fatal(err)
	}
	// device_add waits until the chardev has connected (the fake reports
	// it disconnected on the first query).
	if got := e.vm.callList(); !slices.Equal(got, []string{"chardev-add", "query-chardev", "query-chardev", "device_add", "qom-get"}) {
		t.Fatalf("calls %v", got)
	}
	chr := e.vm.args[0]
	be := chr["backend"].(map[string]any)
	data := be["data"].(map[string]any)
	addr := data["addr"].(map[string]any)["data"].(map[string]any)
	if be["type"] != "socket" || data["server"] != false || addr["path"] != e.d.VhostSocketPath("vu0") {
		t.Fatalf("chardev-add %v", chr)
	}
	dev := e.vm.args[3]
	if dev["driver"] != "vhost-user-test-device-pci" || dev["virtio-id"] != float64(27) || dev["num_vqs"] != float64(1) || dev["config_size"] != float64(16) || dev["chardev"] != "nvb-chr-vu0" {
		t.Fatalf("device_add %v", dev)
	}
	if dv.VhostUserSocket == "" || len(e.servers) != 1 {
		t.Fatalf("server not started: %+v", dv)
	}
	e.vm.exit()
	waitFor(t, e.servers[0].isClosed)
}

func TestAttachVhostUserRollback(t *testing.T) {
	e := newEnv(t)
	dv := e.createPlain("vu0")
	e.vm.refuse["device_add"] = &QEMUError{Class: "GenericError", Desc: "'vhost-user-test-device-pci' is not a valid device model name"}
	_, err := e.d.Attach(context.Background(), "vu0", AttachRequest{QMP: e.qmpPath, As: KindVhostUser})
	if err == nil || !strings.Contains(err.Error(), "not a valid device model name") {
		t.Fatalf("attach: %v", err)
	}
	if got := e.vm.callList(); !slices.Equal(got, []string{"chardev-add", "query-chardev", "query-chardev", "device_add", "chardev-remove"}) {
		t.Fatalf("calls %v", got)
	}
	if len(e.vm.chardevs) != 0 || !e.servers[0].isClosed() {
		t.Fatalf("residue: chardevs %v, server closed %v", e.vm.chardevs, e.servers[0].isClosed())
	}
	assertUnlocked(t, dv.Backing)
}

// TestAttachVhostUserChardevNeverConnects: when QEMU's chardev never
// connects to the server, no device_add is sent; the attach fails within
// its timeout naming the chardev and rolls back.
func TestAttachVhostUserChardevNeverConnects(t *testing.T) {
	e := newEnv(t)
	dv := e.createPlain("vu0")
	e.vm.neverConnect = true
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := e.d.Attach(ctx, "vu0", AttachRequest{QMP: e.qmpPath, As: KindVhostUser})
	if err == nil || !strings.Contains(err.Error(), "nvb-chr-vu0 did not connect") {
		t.Fatalf("attach: %v", err)
	}
	calls := e.vm.callList()
	if slices.Contains(calls, "device_add") || calls[len(calls)-1] != "chardev-remove" {
		t.Fatalf("calls %v: want no device_add and a chardev-remove last", calls)
	}
	if len(e.vm.chardevs) != 0 || !e.servers[0].isClosed() {
		t.Fatalf("residue: chardevs %v, server closed %v", e.vm.chardevs, e.servers[0].isClosed())
	}
	assertUnlocked(t, dv.Backing)
}

func TestRecoverAfterRestart(t *testing.T) {
	e := newEnv(t)
	e.create("pm0")
	e.create("pm1")
	if _, err := e.d.Attach(context.Background(), "pm0", AttachRequest{QMP: e.qmpPath, As: KindNVDIMM}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.Attach(context.Background(), "pm1", AttachRequest{QMP: e.qmpPath, As: KindNVDIMM}); err != nil {
		t.Fatal(err)
	}
	_ = e.d.Close(context.Background())
	// While the daemon was down, pm1 vanished from the VM.
	delete(e.vm.devices, "nvb-dev-pm1")
	d2 := e.open()
	d2.Recover(context.Background())
	g0, _ := d2.Get("pm0")
	g1, _ := d2.Get("pm1")
	if g0.Attached == nil || g1.Attached != nil {
		t.Fatalf("recovered pm0=%+v pm1=%+v", g0.Attached, g1.Attached)
	}
	if _, err := (fileBackings{}).Lock(g0.Backing, false); !errors.Is(err, ErrBackingLocked) {
		t.Fatalf("pm0 backing not re-locked: %v", err)
	}
	// A VM that is gone at recovery releases its devices.
	e.qmpPath = "/nonexistent.qmp"
	_ = d2.Close(context.Background())
	d3 := e.open()
	d3.Recover(context.Background())
	if g, _ := d3.Get("pm0"); g.Attached != nil {
		t.Fatalf("pm0 still attached to a gone VM: %+v", g.Attached)
	}
}

func TestDeletePurge(t *testing.T) {
	e := newEnv(t)
	dv := e.create("pm0")
	if err := e.d.Delete(context.Background(), "pm0", true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dv.Backing); !os.IsNotExist(err) {
		t.Fatalf("backing not purged: %v", err)
	}
	// Adopted backings are kept even with purge.
	p := filepath.Join(e.backDir, "adopt.img")
	os.WriteFile(p, make([]byte, 4*mib), 0o600)
	if _, err := e.d.Create(context.Background(), CreateRequest{Name: "ad", Backing: p}); err != nil {
		t.Fatal(err)
	}
	if err := e.d.Delete(context.Background(), "ad", true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("adopted backing removed: %v", err)
	}
	if err := e.d.Delete(context.Background(), "ad", false); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

func assertUnlocked(t *testing.T, path string) {
	t.Helper()
	l, err := (fileBackings{}).Lock(path, false)
	if err != nil {
		t.Fatalf("backing %s still locked: %v", path, err)
	}
	l.Close()
}

// A failed attach drops its fresh QMP session; that session's watcher must
// not release a device attached later through a new session to the VM.
func TestDroppedSessionDoesNotReleaseLaterAttach(t *testing.T) {
	e := newEnv(t)
	e.create("a")
	e.create("b")
	vms := []*fakeVM{newFakeVM(), newFakeVM()}
	n := 0
	e.d.cfg.DialQMP = func(ctx context.Context, path string) (QMPConn, error) {
		v := vms[n]
		n++
		return v, nil
	}
	vms[0].refuse["device_add"] = &QEMUError{Class: "GenericError", Desc: "no"}
	if _, err := e.d.Attach(context.Background(), "a", AttachRequest{QMP: e.qmpPath, As: KindNVDIMM}); err == nil {
		t.Fatal("attach a succeeded")
	}
	if _, err := e.d.Attach(context.Background(), "b", AttachRequest{QMP: e.qmpPath, As: KindNVDIMM}); err != nil {
		t.Fatal(err)
	}
	vms[0].exit() // the dropped session's connection ends
	time.Sleep(50 * time.Millisecond)
	if g, _ := e.d.Get("b"); g.Attached == nil {
		t.Fatal("b released by the watcher of a dropped session")
	}
	vms[1].exit()
	waitFor(t, func() bool { g, _ := e.d.Get("b"); return g.Attached == nil })
}

// Where QEMU can unplug (a vhost-user PCI device), detach waits for the
// device to go, then removes the chardev and releases the backing.
func TestDetachAcceptedReleases(t *testing.T) {
	e := newEnv(t)
	dv := e.createPlain("vu0")
	if _, err := e.d.Attach(context.Background(), "vu0", AttachRequest{QMP: e.qmpPath, As: KindVhostUser}); err != nil {
		t.Fatal(err)
	}
	e.vm.allowDel = true
	if err := e.d.Detach(context.Background(), "vu0"); err != nil {
		t.Fatal(err)
	}
	calls := e.vm.callList()
	if !slices.Equal(calls[len(calls)-3:], []string{"device_del", "qom-get", "chardev-remove"}) {
		t.Fatalf("calls %v", calls)
	}
	if g, _ := e.d.Get("vu0"); g.Attached != nil {
		t.Fatal("still attached")
	}
	if !e.servers[0].isClosed() {
		t.Fatal("vhost-user server not stopped")
	}
	assertUnlocked(t, dv.Backing)
}

type recCloser struct {
	mu sync.Mutex
	// +checklocks:mu
	closed bool
}

func (r *recCloser) Close() error { r.mu.Lock(); r.closed = true; r.mu.Unlock(); return nil }
func (r *recCloser) isClosed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closed
}

func TestNVDIMMWritebackLifecycle(t *testing.T) {
	e := newEnv(t)
	e.create("pm0")
	e.createPlain("vp0")
	var started []string
	var wbs []*recCloser
	e.d.cfg.Writeback = func(dev Device) (io.Closer, error) {
		started = append(started, dev.Name)
		r := &recCloser{}
		wbs = append(wbs, r)
		return r, nil
	}
	if _, err := e.d.Attach(context.Background(), "pm0", AttachRequest{QMP: e.qmpPath, As: KindNVDIMM}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.Attach(context.Background(), "vp0", AttachRequest{QMP: e.qmpPath, As: KindVirtioPMEM}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(started, []string{"pm0"}) {
		t.Fatalf("writeback started for %v, want only the nvdimm", started)
	}
	e.vm.exit()
	waitFor(t, func() bool { g, _ := e.d.Get("pm0"); return g.Attached == nil })
	if !wbs[0].isClosed() {
		t.Fatal("writeback not stopped on release")
	}
}

// TestAttachVirtioRefusals: a virtio-pmem or vhost-user attach of a device
// memfile.CheckVirtioPMEM refuses (a label area, read-only) or of a
// vhost-user region size QEMU cannot expose is refused with ErrInvalid
// and the reason before anything is sent to QEMU or a vhost-user server
// is started; the device stays detached and unlocked, and a labelled one
// still attaches as an nvdimm.
func TestAttachVirtioRefusals(t *testing.T) {
	e := newEnv(t)
	labelled := e.create("lab")
	ro, err := e.d.Create(context.Background(), CreateRequest{Name: "ro", Backing: filepath.Join(e.backDir, "ro.img"), Size: 64 * mib, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	odd, err := e.d.Create(context.Background(), CreateRequest{Name: "odd", Backing: filepath.Join(e.backDir, "odd.img"), Size: 48 * mib})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		dev  Device
		as   string
		want []string
	}{
		{labelled, KindVirtioPMEM, []string{labelled.Backing, "has a 128 KiB label area", "attach it as an nvdimm"}},
		{labelled, KindVhostUser, []string{labelled.Backing, "has a 128 KiB label area", "attach it as an nvdimm"}},
		{ro, KindVirtioPMEM, []string{ro.Backing, "no read-only mode"}},
		{ro, KindVhostUser, []string{ro.Backing, "no read-only mode"}},
		{odd, KindVhostUser, []string{odd.Backing, "not a power of two"}},
	}
	for _, c := range cases {
		_, err := e.d.Attach(context.Background(), c.dev.Name, AttachRequest{QMP: e.qmpPath, As: c.as})
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s as %s: %v, want ErrInvalid", c.dev.Name, c.as, err)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s as %s: %q lacks %q", c.dev.Name, c.as, err, w)
			}
		}
		if calls := e.vm.callList(); len(calls) != 0 {
			t.Fatalf("%s as %s: QMP commands sent: %v", c.dev.Name, c.as, calls)
		}
		if len(e.servers) != 0 {
			t.Fatalf("%s as %s: a vhost-user server was started", c.dev.Name, c.as)
		}
		if g, _ := e.d.Get(c.dev.Name); g.Attached != nil || g.Kind != "" {
			t.Fatalf("%s as %s: device changed: %+v", c.dev.Name, c.as, g)
		}
		assertUnlocked(t, c.dev.Backing)
	}
	// The same refusal over the control API is a 400 "invalid".
	w := e.do("POST", "/v1/devices/lab/attach", fmt.Sprintf(`{"qmp":%q,"as":"virtio-pmem"}`, e.qmpPath))
	if w.Code != 400 || !strings.Contains(w.Body.String(), `"code": "invalid"`) || !strings.Contains(w.Body.String(), "label area") {
		t.Fatalf("API: %d %s", w.Code, w.Body)
	}
	if calls := e.vm.callList(); len(calls) != 0 {
		t.Fatalf("QMP commands sent: %v", calls)
	}
	dv, err := e.d.Attach(context.Background(), "lab", AttachRequest{QMP: e.qmpPath, As: KindNVDIMM})
	if err != nil || dv.Attached == nil || dv.Kind != KindNVDIMM {
		t.Fatalf("nvdimm attach after the refusals: %+v %v", dv, err)
	}
	if calls := e.vm.callList(); calls[0] != "object-add" || e.vm.args[1]["driver"] != "nvdimm" {
		t.Fatalf("nvdimm attach: calls %v", calls)
	}
}
