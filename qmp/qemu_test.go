package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// qemuVM is a paused QEMU (TCG, no devices) with a QMP socket.
type qemuVM struct {
	cmd  *exec.Cmd
	qmp  string
	dir  string
	c    *Client
	exit chan error
}

const qemuBinary = "qemu-system-x86_64"

// startQEMU starts QEMU paused, under a 2-minute limit, killed at cleanup.
func startQEMU(t *testing.T, machine string, extra ...string) *qemuVM {
	t.Helper()
	bin, err := exec.LookPath(qemuBinary)
	if err != nil {
		t.Skipf("%s not found: %v", qemuBinary, err)
	}
	dir := t.TempDir()
	vm := &qemuVM{qmp: filepath.Join(dir, "qmp.sock"), dir: dir, exit: make(chan error, 1)}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	args := []string{
		"-machine", machine, "-accel", "tcg",
		"-m", "512M,slots=4,maxmem=4G",
		"-S", "-display", "none", "-nodefaults", "-no-user-config",
		"-qmp", "unix:" + vm.qmp + ",server=on,wait=off",
	}
	vm.cmd = exec.CommandContext(ctx, bin, append(args, extra...)...)
	var stderr strings.Builder
	vm.cmd.Stderr = &stderr
	if err := vm.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting %s: %v", bin, err)
	}
	go func() { vm.exit <- vm.cmd.Wait() }()
	t.Cleanup(func() {
		if vm.c != nil {
			vm.c.Close()
		}
		vm.cmd.Process.Kill()
		<-vm.exit
		cancel()
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := Dial(dctx, vm.qmp)
		dcancel()
		if err == nil {
			vm.c = c
			return vm
		}
		select {
		case werr := <-vm.exit:
			vm.exit <- werr
			t.Fatalf("QEMU exited before QMP was up: %v; stderr:\n%s", werr, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("QMP socket %s never answered: %v", vm.qmp, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

const q35NVDIMM = "q35,nvdimm=on"

func tctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// backingFile makes a sparse file of size bytes.
func backingFile(t *testing.T, dir, name string, size int64) string {
	t.Helper()
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

func TestQEMUHotAddNVDIMM(t *testing.T) {
	vm := startQEMU(t, q35NVDIMM)
	ctx := tctx(t)
	c := vm.c
	v, err := c.QueryVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v.QEMU != c.Greeting().Version.QEMU {
		t.Errorf("query-version %v, greeting %v", v.QEMU, c.Greeting().Version.QEMU)
	}
	const size, label = 128 << 20, 128 << 10
	p := backingFile(t, vm.dir, "nv0.img", size+label)
	if err := c.ObjectAddMemoryBackendFile(ctx, MemoryBackendFile{ID: "mb0", MemPath: p, Size: size + label, Share: true, Align: 2 << 20}); err != nil {
		t.Fatal(err)
	}
	if err := c.DeviceAdd(ctx, NVDIMMDevice{ID: "nv0", Memdev: "mb0", LabelSize: label}); err != nil {
		t.Fatal(err)
	}
	ds, err := c.QueryMemoryDevices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d, ok := FindMemoryDevice(ds, "nv0")
	if !ok || d.Type != "nvdimm" || d.NVDIMM == nil {
		t.Fatalf("nv0 not in query-memory-devices as nvdimm: %+v", ds)
	}
	if d.NVDIMM.Size != size || d.NVDIMM.Memdev != "/objects/mb0" || !d.NVDIMM.Hotplugged || d.NVDIMM.Addr == 0 {
		t.Errorf("nv0 = %+v, want size %d, memdev /objects/mb0, hotplugged, an address", *d.NVDIMM, size)
	}
	var got uint64
	if err := c.QOMGet(ctx, "/objects/mb0", "size", &got); err != nil || got != size+label {
		t.Errorf("qom-get mb0 size = %d, %v; want %d", got, err, size+label)
	}
	// QEMU refuses to unplug an nvdimm and to delete a backend in use;
	// both keep QEMU's class and description.
	var qe *Error
	if err := c.DeviceDel(ctx, "nv0"); !errors.As(err, &qe) || qe.Desc == "" {
		t.Errorf("device_del nv0: %v, want a QEMU refusal", err)
	} else {
		t.Logf("device_del refused: %v", err)
	}
	if err := c.ObjectDel(ctx, "mb0"); !errors.As(err, &qe) || qe.Class != "GenericError" {
		t.Errorf("object-del of a backend in use: %v, want GenericError", err)
	}
	// A second read-only device, unarmed, in an explicit slot.
	p2 := backingFile(t, vm.dir, "nv1.img", size+label)
	if err := c.ObjectAddMemoryBackendFile(ctx, MemoryBackendFile{ID: "mb1", MemPath: p2, Size: size + label, Share: true, Align: 2 << 20, ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	slot := 3
	if err := c.DeviceAdd(ctx, NVDIMMDevice{ID: "nv1", Memdev: "mb1", LabelSize: label, Unarmed: true, Slot: &slot}); err != nil {
		t.Fatal(err)
	}
	ds, err = c.QueryMemoryDevices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d, ok := FindMemoryDevice(ds, "nv1"); !ok || d.NVDIMM == nil || d.NVDIMM.Slot != 3 {
		t.Errorf("nv1 not in slot 3: %+v", ds)
	}
}

func TestQEMUHotAddVirtioPMEM(t *testing.T) {
	vm := startQEMU(t, q35NVDIMM, "-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1")
	ctx := tctx(t)
	c := vm.c
	const size = 64 << 20
	p := backingFile(t, vm.dir, "vp0.img", size)
	if err := c.ObjectAddMemoryBackendFile(ctx, MemoryBackendFile{ID: "mbv", MemPath: p, Size: size, Share: true}); err != nil {
		t.Fatal(err)
	}
	if err := c.DeviceAdd(ctx, VirtioPMEMPCIDevice{ID: "vp0", Memdev: "mbv", Bus: "rp1"}); err != nil {
		t.Fatal(err)
	}
	ds, err := c.QueryMemoryDevices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d, ok := FindMemoryDevice(ds, "vp0")
	if !ok || d.VirtioPMEM == nil {
		t.Fatalf("vp0 not in query-memory-devices as virtio-pmem: %+v", ds)
	}
	if d.VirtioPMEM.Size != size || d.VirtioPMEM.Memdev != "/objects/mbv" || d.VirtioPMEM.MemAddr == 0 {
		t.Errorf("vp0 = %+v", *d.VirtioPMEM)
	}
	buses, err := c.QueryPCI(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Paused before firmware ran, the root port has no secondary bus
	// number yet, so query-pci shows the port but not what is behind it.
	pd, ok := FindPCIDevice(buses, "rp1")
	if !ok {
		t.Fatalf("rp1 not in query-pci: %+v", buses)
	}
	if pd.ID.Vendor != 0x1b36 || pd.ID.Device != 0x000c || pd.Bridge == nil {
		t.Errorf("rp1 = %04x:%04x bridge %v, want a 1b36:000c bridge", pd.ID.Vendor, pd.ID.Device, pd.Bridge)
	}
	var typ string
	if err := c.QOMGet(ctx, "/machine/peripheral/vp0", "type", &typ); err != nil || typ != "virtio-pmem-pci" {
		t.Errorf("qom-get vp0 type = %q, %v", typ, err)
	}
}

func TestQEMULargeReplies(t *testing.T) {
	vm := startQEMU(t, q35NVDIMM)
	ctx := tctx(t)
	// query-qmp-schema: about 230 KiB in QEMU 10.0, several times the
	// 64 KiB that breaks older Go clients.
	var schema json.RawMessage
	if err := vm.c.Execute(ctx, "query-qmp-schema", nil, &schema); err != nil {
		t.Fatal(err)
	}
	var entries []map[string]any
	if err := json.Unmarshal(schema, &entries); err != nil || len(entries) < 100 || len(schema) < 128<<10 {
		t.Fatalf("schema: %d bytes, %d entries, %v", len(schema), len(entries), err)
	}
	// A command over 64 KiB: a 70 KiB secret read back with qom-get. QEMU
	// reads QMP input one byte per main-loop turn, so a big command costs
	// seconds per MiB (over 20 s for 1 MiB on a loaded machine); the reply
	// over 1 MiB comes from a small command instead.
	secret := strings.Repeat("0123456789abcdef", (70<<10)/16)
	if err := vm.c.Execute(ctx, "object-add", map[string]any{"qom-type": "secret", "id": "big", "data": secret}, nil); err != nil {
		t.Fatal(err)
	}
	var got string
	if err := vm.c.QOMGet(ctx, "/objects/big", "data", &got); err != nil {
		t.Fatal(err)
	}
	if got != secret {
		t.Fatalf("qom-get returned %d bytes, want the %d sent", len(got), len(secret))
	}
	// A reply over 1 MiB: HMP dumps 384 KiB of guest memory (zeros, two
	// 8-byte words per line of 57 bytes: about 1.3 MiB of text).
	const words = 48000
	var dump string
	if err := vm.c.Execute(ctx, "human-monitor-command", map[string]any{"command-line": fmt.Sprintf("xp /%dxg 0", words)}, &dump); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(dump, "\r\n"), "\n")
	if len(dump) <= 1<<20 || len(lines) != words/2 {
		t.Fatalf("xp reply: %d bytes, %d lines; want over 1 MiB in %d lines", len(dump), len(lines), words/2)
	}
	last := fmt.Sprintf("%016x: 0x0000000000000000 0x0000000000000000", (words-2)*8)
	if l := strings.TrimRight(lines[len(lines)-1], "\r"); l != last {
		t.Fatalf("xp reply ends with %q, want %q", l, last)
	}
}

func TestQEMUConcurrentCommands(t *testing.T) {
	vm := startQEMU(t, q35NVDIMM)
	ctx := tctx(t)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 32 {
		wg.Go(func() {
			switch i % 3 {
			case 0:
				v, err := vm.c.QueryVersion(ctx)
				if err == nil && v.QEMU.Major < 6 {
					err = errors.New("implausible version " + v.QEMU.String())
				}
				errs <- err
			case 1:
				s, err := vm.c.QueryStatus(ctx)
				if err == nil && s.Status != "prelaunch" {
					err = errors.New("status " + s.Status + ", want prelaunch")
				}
				errs <- err
			case 2:
				var schema json.RawMessage
				err := vm.c.Execute(ctx, "query-qmp-schema", nil, &schema)
				if err == nil && len(schema) < 128<<10 {
					err = errors.New("short schema")
				}
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func TestQEMUSubscriberNeverReads(t *testing.T) {
	vm := startQEMU(t, q35NVDIMM)
	ctx := tctx(t)
	c := vm.c
	stuck := c.Subscribe(1) // never read until the end
	reader := c.Subscribe(64, "STOP")
	const rounds = 10
	for i := range rounds {
		if err := c.Execute(ctx, "cont", nil, nil); err != nil {
			t.Fatalf("cont %d: %v", i, err)
		}
		if err := c.Execute(ctx, "stop", nil, nil); err != nil {
			t.Fatalf("stop %d: %v", i, err)
		}
		select {
		case ev := <-reader.Events():
			if ev.Name != "STOP" || ev.Time.IsZero() {
				t.Errorf("filtered subscriber got %+v", ev)
			}
		case <-ctx.Done():
			t.Fatal("no STOP event")
		}
	}
	// 2 events per round (RESUME, STOP); one fits in the buffer.
	if got, want := stuck.Dropped(), uint64(2*rounds-1); got != want {
		t.Errorf("stuck subscriber dropped %d, want %d", got, want)
	}
	if ev := <-stuck.Events(); ev.Name != "RESUME" || ev.Dropped != 0 {
		t.Errorf("first buffered event %+v, want RESUME", ev)
	}
	if err := c.Execute(ctx, "cont", nil, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-stuck.Events():
		if ev.Name != "RESUME" || ev.Dropped != 2*rounds-1 {
			t.Errorf("event after the gap: %+v, want RESUME with Dropped %d", ev, 2*rounds-1)
		}
	case <-ctx.Done():
		t.Fatal("no event after draining")
	}
	if reader.Dropped() != 0 {
		t.Errorf("reading subscriber lost %d events", reader.Dropped())
	}
}

func TestQEMUKilledMidCommand(t *testing.T) {
	vm := startQEMU(t, q35NVDIMM)
	ctx := tctx(t)
	c := vm.c
	results := make(chan error, 4)
	started := make(chan struct{}, 4)
	for range 4 {
		go func() {
			for {
				var schema json.RawMessage
				if err := c.Execute(ctx, "query-qmp-schema", nil, &schema); err != nil {
					results <- err
					return
				}
				started <- struct{}{}
			}
		}()
	}
	<-started
	killed := time.Now()
	vm.cmd.Process.Kill()
	for range 4 {
		select {
		case err := <-results:
			if !errors.Is(err, ErrClosed) {
				t.Errorf("command after kill: %v, want ErrClosed", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a pending command did not fail after QEMU was killed")
		}
		for len(started) > 0 {
			<-started
		}
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed")
	}
	t.Logf("all pending commands failed %v after the kill: %v", time.Since(killed), c.Err())
	if err := c.Execute(ctx, "query-status", nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("command after close: %v", err)
	}
}

func TestQEMURefusals(t *testing.T) {
	t.Run("no_nvdimm_on", func(t *testing.T) {
		vm := startQEMU(t, "q35")
		ctx := tctx(t)
		p := backingFile(t, vm.dir, "a.img", 64<<20)
		if err := vm.c.ObjectAddMemoryBackendFile(ctx, MemoryBackendFile{ID: "mb0", MemPath: p, Size: 64 << 20, Share: true}); err != nil {
			t.Fatal(err)
		}
		err := vm.c.DeviceAdd(ctx, NVDIMMDevice{ID: "nv0", Memdev: "mb0"})
		var qe *Error
		if !errors.As(err, &qe) || qe.Class != "GenericError" || !strings.Contains(qe.Desc, "nvdimm") {
			t.Fatalf("device_add without nvdimm=on: %v", err)
		}
		t.Logf("refused: %v", err)
		if err := vm.c.ObjectDel(ctx, "mb0"); err != nil {
			t.Errorf("rollback object-del: %v", err)
		}
	})
	t.Run("slot_out_of_range", func(t *testing.T) {
		vm := startQEMU(t, q35NVDIMM)
		ctx := tctx(t)
		slot := 4 // slots=4: valid slots are 0-3
		p := backingFile(t, vm.dir, "a.img", 64<<20)
		if err := vm.c.ObjectAddMemoryBackendFile(ctx, MemoryBackendFile{ID: "mb0", MemPath: p, Size: 64 << 20, Share: true}); err != nil {
			t.Fatal(err)
		}
		err := vm.c.DeviceAdd(ctx, NVDIMMDevice{ID: "nv0", Memdev: "mb0", Slot: &slot})
		var qe *Error
		if !errors.As(err, &qe) || !strings.Contains(qe.Desc, "slot") {
			t.Fatalf("device_add in slot 4 of 4: %v", err)
		}
		t.Logf("refused: %v", err)
		if err := vm.c.ObjectDel(ctx, "mb0"); err != nil {
			t.Errorf("rollback object-del: %v", err)
		}
	})
	t.Run("no_free_slot", func(t *testing.T) {
		vm := startQEMU(t, q35NVDIMM)
		ctx := tctx(t)
		for i := range 5 {
			id := fmt.Sprintf("%d", i)
			p := backingFile(t, vm.dir, "n"+id+".img", 8<<20)
			if err := vm.c.ObjectAddMemoryBackendFile(ctx, MemoryBackendFile{ID: "mb" + id, MemPath: p, Size: 8 << 20, Share: true}); err != nil {
				t.Fatal(err)
			}
			err := vm.c.DeviceAdd(ctx, NVDIMMDevice{ID: "nv" + id, Memdev: "mb" + id})
			if i < 4 {
				if err != nil {
					t.Fatalf("nvdimm %d of 4: %v", i, err)
				}
				continue
			}
			var qe *Error
			if !errors.As(err, &qe) || !strings.Contains(qe.Desc, "slot") {
				t.Fatalf("fifth nvdimm with 4 slots: %v", err)
			}
			t.Logf("refused: %v", err)
			if err := vm.c.ObjectDel(ctx, "mb4"); err != nil {
				t.Errorf("rollback object-del: %v", err)
			}
		}
		ds, err := vm.c.QueryMemoryDevices(ctx)
		if err != nil || len(ds) != 4 {
			t.Errorf("after the refusal: %d memory devices, %v; want 4", len(ds), err)
		}
	})
	t.Run("missing_mem_path", func(t *testing.T) {
		vm := startQEMU(t, q35NVDIMM)
		err := vm.c.ObjectAddMemoryBackendFile(tctx(t), MemoryBackendFile{ID: "mb0", MemPath: filepath.Join(vm.dir, "nope", "x.img"), Size: 64 << 20, Share: true})
		var qe *Error
		if !errors.As(err, &qe) {
			t.Fatalf("object-add of a missing file: %v", err)
		}
	})
	t.Run("unknown_command", func(t *testing.T) {
		vm := startQEMU(t, q35NVDIMM)
		err := vm.c.Execute(tctx(t), "no-such-command", nil, nil)
		var qe *Error
		if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
			t.Fatalf("unknown command: %v", err)
		}
	})
}

func TestQEMUFDPassingAndQOM(t *testing.T) {
	vm := startQEMU(t, q35NVDIMM)
	ctx := tctx(t)
	c := vm.c
	f, err := os.Create(filepath.Join(vm.dir, "passed"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := c.GetFD(ctx, "fd0", f); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseFD(ctx, "fd0"); err != nil {
		t.Errorf("closefd of a passed fd: %v", err)
	}
	var qe *Error
	if err := c.CloseFD(ctx, "fd0"); !errors.As(err, &qe) {
		t.Errorf("closefd twice: %v, want a QEMU error", err)
	}
	info, err := c.AddFD(ctx, nil, f, "test")
	if err != nil {
		t.Fatal(err)
	}
	var sets []struct {
		ID  int `json:"fdset-id"`
		FDs []struct {
			FD     int    `json:"fd"`
			Opaque string `json:"opaque"`
		} `json:"fds"`
	}
	if err := c.Execute(ctx, "query-fdsets", nil, &sets); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range sets {
		for _, d := range s.FDs {
			found = found || (s.ID == info.FDSetID && d.FD == info.FD && d.Opaque == "test")
		}
	}
	if !found {
		t.Errorf("add-fd %+v not in query-fdsets %+v", info, sets)
	}
	if err := c.RemoveFD(ctx, info.FDSetID, &info.FD); err != nil {
		t.Error(err)
	}

	if err := c.Execute(ctx, "object-add", map[string]any{"qom-type": "iothread", "id": "io0"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.QOMSet(ctx, "/objects/io0", "poll-max-ns", 12345); err != nil {
		t.Fatal(err)
	}
	var ns int
	if err := c.QOMGet(ctx, "/objects/io0", "poll-max-ns", &ns); err != nil || ns != 12345 {
		t.Errorf("qom-get poll-max-ns = %d, %v", ns, err)
	}
}

func TestQEMUChardevUnixSocket(t *testing.T) {
	vm := startQEMU(t, q35NVDIMM)
	ctx := tctx(t)
	sock := filepath.Join(vm.dir, "vu.sock")
	if err := vm.c.ChardevAddUnixSocket(ctx, ChardevSocket{ID: "chs", Path: sock, Server: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); err != nil {
		t.Errorf("server chardev did not create its socket: %v", err)
	}
	// A client chardev with reconnect to the listening one.
	if err := vm.c.ChardevAddUnixSocket(ctx, ChardevSocket{ID: "chc", Path: sock, ReconnectMs: 500}); err != nil {
		t.Fatal(err)
	}
	var chardevs []struct {
		Label string `json:"label"`
	}
	if err := vm.c.Execute(ctx, "query-chardev", nil, &chardevs); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, ch := range chardevs {
		if ch.Label == "chs" || ch.Label == "chc" {
			n++
		}
	}
	if n != 2 {
		t.Errorf("query-chardev %+v lacks chs and chc", chardevs)
	}
	for _, id := range []string{"chc", "chs"} {
		if err := vm.c.ChardevRemove(ctx, id); err != nil {
			t.Error(err)
		}
	}
}

func TestQEMUDeviceDelWait(t *testing.T) {
	vm := startQEMU(t, q35NVDIMM, "-device", "qemu-xhci,id=xhci")
	ctx := tctx(t)
	if err := vm.c.DeviceAdd(ctx, GenericDevice{Driver: "usb-tablet", ID: "tab0"}); err != nil {
		t.Fatal(err)
	}
	if err := vm.c.DeviceDelWait(ctx, "tab0"); err != nil {
		t.Fatal(err)
	}
	var qe *Error
	if err := vm.c.DeviceDelWait(ctx, "tab0"); !errors.As(err, &qe) || qe.Class != "DeviceNotFound" {
		t.Errorf("second device_del: %v, want DeviceNotFound", err)
	}
}

// QEMU before 10.2 has no user-creatable generic vhost-user device: the
// refusal is clean and the chardev can be rolled back.
func TestQEMUVhostUserTestDeviceRefusedBefore10_2(t *testing.T) {
	vm := startQEMU(t, q35NVDIMM, "-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1")
	if vm.c.Greeting().Version.QEMU.AtLeast(10, 2) {
		t.Skipf("QEMU %v has vhost-user-test-device-pci; covered by the daemon's end-to-end tests", vm.c.Greeting().Version.QEMU)
	}
	ctx := tctx(t)
	sock := filepath.Join(vm.dir, "vu.sock")
	if err := vm.c.ChardevAddUnixSocket(ctx, ChardevSocket{ID: "vuch", Path: sock, Server: true}); err != nil {
		t.Fatal(err)
	}
	err := vm.c.DeviceAdd(ctx, VhostUserTestDevicePCI{ID: "vu0", Chardev: "vuch", VirtioID: VirtioIDPMEM, NumVQs: 1, ConfigSize: 16, Bus: "rp1"})
	var qe *Error
	if !errors.As(err, &qe) || !strings.Contains(qe.Desc, "vhost-user-test-device-pci") {
		t.Fatalf("device_add vhost-user-test-device-pci on %v: %v", vm.c.Greeting().Version.QEMU, err)
	}
	t.Logf("refused: %v", err)
	if err := vm.c.ChardevRemove(ctx, "vuch"); err != nil {
		t.Errorf("rollback chardev-remove: %v", err)
	}
}

// QEMU serves one client per QMP socket: a second one connects but gets
// no greeting until the first leaves.
func TestQEMUSecondClientWaits(t *testing.T) {
	vm := startQEMU(t, q35NVDIMM)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	c2, err := Dial(ctx, vm.qmp)
	if err == nil {
		c2.Close()
		t.Fatal("a second client got a greeting while the first is connected")
	}
	if !strings.Contains(err.Error(), "another client") {
		t.Errorf("second client: %v", err)
	}
	vm.c.Close()
	vm.c = nil
	c3, err := Dial(tctx(t), vm.qmp)
	if err != nil {
		t.Fatalf("after the first client left: %v", err)
	}
	defer c3.Close()
	if _, err := c3.QueryStatus(tctx(t)); err != nil {
		t.Error(err)
	}
}
