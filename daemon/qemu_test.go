package daemon

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestQEMUDaemonEndToEnd(t *testing.T) {
	vm := startRealQEMU(t, "q35,nvdimm=on", "512M,slots=4,maxmem=4G", "-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1")
	stateDir := t.TempDir()
	rd := startRealDaemon(t, stateDir)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	bd := DefaultBackingDir(stateDir)

	if _, err := rd.c.Create(ctx, CreateRequest{Name: "pm0", Backing: bd + "/pm0.img", Size: 64 << 20, LabelSize: 128 << 10}); err != nil {
		t.Fatal(err)
	}
	if _, err := rd.c.Create(ctx, CreateRequest{Name: "vp0", Backing: bd + "/vp0.img", Size: 32 << 20}); err != nil {
		t.Fatal(err)
	}
	dv, err := rd.c.Attach(ctx, "pm0", AttachRequest{QMP: vm.daemonQMP, As: KindNVDIMM})
	if err != nil {
		t.Fatal(err)
	}
	if dv.Attached == nil || dv.Attached.Addr == 0 {
		t.Fatalf("attached %+v", dv.Attached)
	}
	if _, err := rd.c.Attach(ctx, "vp0", AttachRequest{QMP: vm.daemonQMP, As: KindVirtioPMEM, Bus: "rp1"}); err != nil {
		t.Fatal(err)
	}
	ids := vm.memoryDeviceIDs(t)
	if !contains(ids, "nvb-dev-pm0") || !contains(ids, "nvb-dev-vp0") {
		t.Fatalf("query-memory-devices: %v", ids)
	}
	// The backing is locked against other users while attached.
	if _, err := (MemfileBackings{}).Lock(bd+"/pm0.img", false); !errors.Is(err, ErrBackingLocked) {
		t.Fatalf("backing not locked: %v", err)
	}
	// Detach is refused with QEMU's reason.
	_, err = rd.c.Detach(ctx, "pm0")
	var re *RemoteError
	if !errors.As(err, &re) || re.Code != "qemu_refused" {
		t.Fatalf("detach: %v", err)
	}
	t.Logf("detach refused: %v", err)

	// Restart the daemon: same state, still attached, still locked.
	rd.stop()
	rd2 := startRealDaemon(t, stateDir)
	list, err := rd2.c.List(ctx)
	if err != nil || len(list) != 2 || list[0].Attached == nil || list[1].Attached == nil {
		t.Fatalf("after restart: %+v %v", list, err)
	}
	if _, err := (MemfileBackings{}).Lock(bd+"/pm0.img", false); !errors.Is(err, ErrBackingLocked) {
		t.Fatalf("backing not re-locked after restart: %v", err)
	}

	// The VM exits: both devices are released and unlocked.
	vm.quit(t, ctx)
	waitFor(t, func() bool {
		l, err := rd2.c.List(ctx)
		return err == nil && l[0].Attached == nil && l[1].Attached == nil
	})
	l, err := (MemfileBackings{}).Lock(bd+"/pm0.img", false)
	if err != nil {
		t.Fatalf("backing still locked after VM exit: %v", err)
	}
	l.Close()
}

func TestQEMUAttachFailuresLeaveNoResidue(t *testing.T) {
	stateDir := t.TempDir()
	rd := startRealDaemon(t, stateDir)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	bd := DefaultBackingDir(stateDir)
	for _, n := range []string{"a", "b", "c"} {
		if _, err := rd.c.Create(ctx, CreateRequest{Name: n, Backing: bd + "/" + n + ".img", Size: 32 << 20, LabelSize: 128 << 10}); err != nil {
			t.Fatal(err)
		}
	}
	// QEMU refuses the nvdimm (no nvdimm=on): the backend object is
	// removed again and the backing unlocked.
	vm := startRealQEMU(t, "q35", "512M,slots=1,maxmem=4G")
	_, err := rd.c.Attach(ctx, "a", AttachRequest{QMP: vm.daemonQMP, As: KindNVDIMM})
	var re *RemoteError
	if !errors.As(err, &re) || re.Code != "qemu_refused" {
		t.Fatalf("attach without nvdimm=on: %v", err)
	}
	t.Logf("refused: %v", err)
	if objs := vm.ourObjects(t); len(objs) != 0 {
		t.Fatalf("objects left in QEMU: %v", objs)
	}
	assertMemfileUnlocked(t, bd+"/a.img")

	// No free slot: the first nvdimm takes the only slot.
	vm2 := startRealQEMU(t, "q35,nvdimm=on", "512M,slots=1,maxmem=4G")
	if _, err := rd.c.Attach(ctx, "b", AttachRequest{QMP: vm2.daemonQMP, As: KindNVDIMM}); err != nil {
		t.Fatal(err)
	}
	_, err = rd.c.Attach(ctx, "c", AttachRequest{QMP: vm2.daemonQMP, As: KindNVDIMM})
	if !errors.As(err, &re) || re.Code != "qemu_refused" {
		t.Fatalf("attach with no free slot: %v", err)
	}
	t.Logf("refused: %v", err)
	if objs := vm2.ourObjects(t); len(objs) != 1 || objs[0] != "nvb-mem-b" {
		t.Fatalf("objects in QEMU: %v", objs)
	}
	assertMemfileUnlocked(t, bd+"/c.img")

	// A backing locked by another user (another VM's manager).
	other, err := (MemfileBackings{}).Lock(bd+"/c.img", false)
	if err != nil {
		t.Fatal(err)
	}
	_, err = rd.c.Attach(ctx, "c", AttachRequest{QMP: vm.daemonQMP, As: KindNVDIMM})
	if !errors.As(err, &re) || re.Code != "locked" {
		t.Fatalf("attach of a locked backing: %v", err)
	}
	other.Close()

	// A socket that does not speak QMP.
	notQMP := filepath.Join(t.TempDir(), "not.qmp")
	ln, err := net.Listen("unix", notQMP)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("SSH-2.0-OpenSSH_9.2\r\n"))
			time.Sleep(100 * time.Millisecond)
			c.Close()
		}
	}()
	_, err = rd.c.Attach(ctx, "c", AttachRequest{QMP: notQMP, As: KindNVDIMM})
	if err == nil || !strings.Contains(err.Error(), notQMP) {
		t.Fatalf("attach to a non-QMP socket: %v", err)
	}
	t.Logf("not QMP: %v", err)
	assertMemfileUnlocked(t, bd+"/c.img")
	if g, _ := rd.c.Get(ctx, "c"); g.Attached != nil {
		t.Fatal("c recorded as attached")
	}
}

// QEMU 10.0 has no user-creatable vhost-user-test-device-pci: the
// chardev-add is accepted (QEMU connects to the daemon's socket), the
// device_add refused, and the rollback removes the chardev and stops the
// server.
func TestQEMUVhostUserRefusedOn10(t *testing.T) {
	vm := startRealQEMU(t, "q35,nvdimm=on", "512M,slots=4,maxmem=4G")
	vctx, vcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer vcancel()
	ver, err := vm.mon.QueryVersion(vctx)
	if err != nil {
		t.Fatal(err)
	}
	if ver.QEMU.AtLeast(10, 2) {
		t.Skipf("QEMU %s has vhost-user-test-device-pci; this test covers older QEMU", ver.QEMU)
	}
	stateDir := t.TempDir()
	closed := make(chan struct{}, 1)
	d := startRealDaemon(t, stateDir, func(c *Config) {
		c.VhostUser = func(dev Device, sock string) (VhostUserServer, error) {
			ln, err := net.Listen("unix", sock)
			if err != nil {
				return nil, err
			}
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() { io.Copy(io.Discard, c); c.Close() }()
				}
			}()
			return closeNotify{ln, closed}, nil
		}
	}).d
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dv, err := d.Create(ctx, CreateRequest{Name: "vu0", Backing: DefaultBackingDir(stateDir) + "/vu0.img", Size: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.Attach(ctx, "vu0", AttachRequest{QMP: vm.daemonQMP, As: KindVhostUser})
	var qe *QEMUError
	if !errors.As(err, &qe) || qe.Command != "device_add" {
		t.Fatalf("attach: %v", err)
	}
	t.Logf("refused: %v", err)
	var chardevs []struct {
		Label string `json:"label"`
	}
	if err := vm.mon.Execute(ctx, "query-chardev", nil, &chardevs); err != nil {
		t.Fatal(err)
	}
	for _, c := range chardevs {
		if strings.HasPrefix(c.Label, "nvb-") {
			t.Fatalf("chardev %s left in QEMU", c.Label)
		}
	}
	select {
	case <-closed:
	default:
		t.Fatal("vhost-user server not stopped")
	}
	assertMemfileUnlocked(t, dv.Backing)
}
