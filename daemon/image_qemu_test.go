package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

// mappingPerms returns the permissions of QEMU's mappings of path, from
// /proc/PID/maps ("r--s" is a read-only shared mapping).
func mappingPerms(t *testing.T, pid int, path string) []string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	var perms []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 6 && strings.Join(f[5:], " ") == path {
			perms = append(perms, f[1])
		}
	}
	return perms
}

// TestQEMUImageSharedByTwoVMs: two paused QEMU 10 VMs attach the same
// catalogued image through the daemon. Both list their nvdimm in
// query-memory-devices, QEMU maps the file read-only and shared with the
// backend readonly and the nvdimm unarmed, the image cannot be removed
// from the catalog meanwhile, and each VM's exit releases its device.
func TestQEMUImageSharedByTwoVMs(t *testing.T) {
	vm1 := startRealQEMU(t, "q35,nvdimm=on", "256M,slots=2,maxmem=2G")
	vm2 := startRealQEMU(t, "q35,nvdimm=on", "256M,slots=2,maxmem=2G")
	stateDir := t.TempDir()
	clearImmutable(t, stateDir)
	cat, err := memfile.OpenCatalog(filepath.Join(stateDir, "images"))
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(cat.Dir(), "base.img")
	data := make([]byte, 16<<20)
	for i := range data {
		data[i] = byte(i >> 12)
	}
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := cat.Add("base", img, memfile.ImageOptions{}); err != nil {
		t.Fatal(err)
	}
	rd := startRealDaemon(t, stateDir, withImages(cat))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	vms := map[string]*realVM{"base-vm1": vm1, "base-vm2": vm2}
	for name, vm := range vms {
		if _, err := rd.c.Create(ctx, CreateRequest{Name: name, Image: "base"}); err != nil {
			t.Fatal(err)
		}
		dv, err := rd.c.Attach(ctx, name, AttachRequest{QMP: vm.daemonQMP, As: KindNVDIMM})
		if err != nil {
			t.Fatalf("attach %s: %v", name, err)
		}
		if dv.Attached == nil || dv.Attached.Addr == 0 || !dv.ReadOnly || dv.Image != "base" {
			t.Fatalf("attached %+v / %+v", dv, dv.Attached)
		}
	}
	for name, vm := range vms {
		if ids := vm.memoryDeviceIDs(t); !contains(ids, "nvb-dev-"+name) {
			t.Errorf("%s: query-memory-devices lists %v", name, ids)
		}
		var ro, share, unarmed bool
		if err := vm.mon.QOMGet(ctx, "/objects/nvb-mem-"+name, "readonly", &ro); err != nil {
			t.Fatal(err)
		}
		if err := vm.mon.QOMGet(ctx, "/objects/nvb-mem-"+name, "share", &share); err != nil {
			t.Fatal(err)
		}
		if err := vm.mon.QOMGet(ctx, "/machine/peripheral/nvb-dev-"+name, "unarmed", &unarmed); err != nil {
			t.Fatal(err)
		}
		if !ro || !share || !unarmed {
			t.Errorf("%s: readonly=%v share=%v unarmed=%v, want all on", name, ro, share, unarmed)
		}
		perms := mappingPerms(t, vm.pid, img)
		if len(perms) == 0 {
			t.Errorf("%s: QEMU has no mapping of %s", name, img)
		}
		for _, p := range perms {
			if p != "r--s" {
				t.Errorf("%s: QEMU maps the image %s, want r--s", name, p)
			}
		}
	}
	st, err := cat.Status("base")
	if err != nil || st.LockedBy != "shared" {
		t.Fatalf("image lock: %q %v", st.LockedBy, err)
	}
	if _, err := cat.Remove("base", false); !errors.Is(err, memfile.ErrLocked) {
		t.Fatalf("image rm while two VMs use it: %v", err)
	}
	var re *RemoteError
	if _, err := rd.c.Create(ctx, CreateRequest{Name: "rw", Backing: img}); !errors.As(err, &re) || re.Code != "confinement" {
		t.Fatalf("image file as a writable backing: %v", err)
	}

	// VM 1 exits: its device is released; VM 2 still holds the image.
	vm1.quit(t, ctx)
	waitFor(t, func() bool { dv, err := rd.c.Get(ctx, "base-vm1"); return err == nil && dv.Attached == nil })
	if dv, _ := rd.c.Get(ctx, "base-vm2"); dv.Attached == nil {
		t.Fatal("base-vm2 released with VM 1")
	}
	if st, _ := cat.Status("base"); st.LockedBy != "shared" {
		t.Fatalf("image lock with VM 2 left: %q", st.LockedBy)
	}
	vm2.quit(t, ctx)
	waitFor(t, func() bool { dv, err := rd.c.Get(ctx, "base-vm2"); return err == nil && dv.Attached == nil })
	if st, _ := cat.Status("base"); st.LockedBy != "none" {
		t.Fatalf("image lock after both VMs exited: %q", st.LockedBy)
	}
	if v, err := cat.Verify("base", nil); err != nil || !v.OK {
		t.Fatalf("image changed: %+v %v", v, err)
	}
	if _, err := cat.Remove("base", false); err != nil {
		t.Fatalf("image rm after the VMs exited: %v", err)
	}
}
