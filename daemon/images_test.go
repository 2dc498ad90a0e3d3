package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

// imgEnv is a daemon with real memfile backings and a real image catalog,
// and any number of fake VMs (one per QMP socket path).
type imgEnv struct {
	t       *testing.T
	state   string
	cat     *memfile.Catalog
	vms     map[string]*fakeVM
	d       *Daemon
	outside string // a directory neither in the catalog nor a backing dir
}

// clearImmutable clears the immutable attribute of every file under dir
// when the test ends (after everything registered later), so that the
// temporary directories can be removed.
func clearImmutable(t *testing.T, dir string) {
	t.Cleanup(func() {
		_ = filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
			if err != nil || !de.Type().IsRegular() {
				return nil
			}
			f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NONBLOCK, 0)
			if err != nil {
				return nil
			}
			defer f.Close()
			if fl, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS); err == nil && fl&0x10 != 0 {
				_ = unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(fl&^0x10))
			}
			return nil
		})
	})
}

func newImgEnv(t *testing.T) *imgEnv {
	t.Helper()
	e := &imgEnv{t: t, state: t.TempDir(), vms: map[string]*fakeVM{}, outside: t.TempDir()}
	clearImmutable(t, e.state)
	clearImmutable(t, e.outside)
	cat, err := memfile.OpenCatalog(filepath.Join(e.state, "images"))
	if err != nil {
		t.Fatal(err)
	}
	e.cat = cat
	e.d = e.open()
	return e
}

func (e *imgEnv) open() *Daemon {
	e.t.Helper()
	d, err := New(Config{
		StateDir: e.state,
		Backings: MemfileBackings{},
		Images:   CatalogImages{Catalog: e.cat},
		DialQMP: func(ctx context.Context, path string) (QMPConn, error) {
			vm, ok := e.vms[path]
			if !ok {
				return nil, fmt.Errorf("no VM at %s", path)
			}
			return vm, nil
		},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = d.Close(context.Background()) })
	return d
}

// vm starts a fake VM and returns its QMP path.
func (e *imgEnv) vm(name string) (string, *fakeVM) {
	e.t.Helper()
	p := listenDummy(e.t, filepath.Join(e.t.TempDir(), name+".qmp"))
	v := newFakeVM()
	e.vms[p] = v
	return p, v
}

// addImage writes a raw image file of size bytes into dir and catalogues it.
func (e *imgEnv) addImage(name, dir string, size int) string {
	e.t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		e.t.Fatal(err)
	}
	p := filepath.Join(dir, name+".img")
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i/4096) ^ byte(len(name))
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.cat.Add(name, p, memfile.ImageOptions{}); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// argsOf returns the arguments of the VM's first call of cmd.
func argsOf(v *fakeVM, cmd string) map[string]any {
	v.mu.Lock()
	defer v.mu.Unlock()
	for i, c := range v.calls {
		if c == cmd {
			return v.args[i]
		}
	}
	return nil
}

func TestImageDeviceSharedByTwoVMs(t *testing.T) {
	e := newImgEnv(t)
	ctx := context.Background()
	p := e.addImage("base", e.cat.Dir(), 4<<20)
	q1, vm1 := e.vm("vm1")
	q2, vm2 := e.vm("vm2")

	var devs []Device
	for _, n := range []string{"base-vm1", "base-vm2"} {
		dv, err := e.d.Create(ctx, CreateRequest{Name: n, Image: "base"})
		if err != nil {
			t.Fatal(err)
		}
		if dv.Image != "base" || dv.Backing != p || !dv.ReadOnly || dv.Created || dv.BackingSize != 4<<20 || dv.Size != 4<<20 || dv.LabelSize != 0 || dv.Align != 2<<20 {
			t.Fatalf("image device %+v", dv)
		}
		devs = append(devs, dv)
	}
	for i, q := range []string{q1, q2} {
		dv, err := e.d.Attach(ctx, devs[i].Name, AttachRequest{QMP: q, As: KindNVDIMM})
		if err != nil {
			t.Fatalf("attach %s: %v", devs[i].Name, err)
		}
		if dv.Attached == nil || dv.Attached.QMP != q {
			t.Fatalf("attached %+v", dv.Attached)
		}
	}
	// Each VM got the read-only attach the catalog prescribes.
	for _, v := range []*fakeVM{vm1, vm2} {
		obj, dev := argsOf(v, "object-add"), argsOf(v, "device_add")
		if obj["readonly"] != true || obj["share"] != true || obj["mem-path"] != p || obj["size"] != float64(4<<20) {
			t.Errorf("object-add %v: want readonly, share, the image and its size", obj)
		}
		if dev["driver"] != "nvdimm" || dev["unarmed"] != true || dev["label-size"] != nil {
			t.Errorf("device_add %v: want a label-less unarmed nvdimm", dev)
		}
	}
	st, err := e.cat.Status("base")
	if err != nil || st.LockedBy != "shared" {
		t.Fatalf("image lock while two VMs use it: %+v %v", st.LockedBy, err)
	}
	// image rm is refused while VMs hold it; the image stays catalogued.
	if _, err := e.cat.Remove("base", false); !errors.Is(err, memfile.ErrLocked) {
		t.Fatalf("image rm while attached: %v, want ErrLocked", err)
	}
	if _, err := e.cat.Get("base"); err != nil {
		t.Fatalf("image gone after a refused rm: %v", err)
	}
	// Nobody gets the image writable meanwhile.
	if l, err := (MemfileBackings{}).Lock(p, false); err == nil {
		l.Close()
		t.Fatal("exclusive lock on an attached image")
	}

	// VM 1 exits: its device is released, the image is still held by VM 2.
	vm1.exit()
	waitFor(t, func() bool { dv, _ := e.d.Get("base-vm1"); return dv.Attached == nil })
	if st, _ := e.cat.Status("base"); st.LockedBy != "shared" {
		t.Fatalf("image lock after one VM exited: %s", st.LockedBy)
	}
	if _, err := e.cat.Remove("base", false); !errors.Is(err, memfile.ErrLocked) {
		t.Fatalf("image rm with one VM left: %v", err)
	}
	// The released device attaches again, to another VM.
	q3, _ := e.vm("vm3")
	if _, err := e.d.Attach(ctx, "base-vm1", AttachRequest{QMP: q3, As: KindNVDIMM}); err != nil {
		t.Fatalf("re-attach: %v", err)
	}
	// Restart: the daemon re-takes the shared locks of attached image devices.
	_ = e.d.Close(ctx)
	if st, _ := e.cat.Status("base"); st.LockedBy != "none" {
		t.Fatalf("lock after daemon close: %s", st.LockedBy)
	}
	e.d = e.open()
	e.d.Recover(ctx)
	if dv, _ := e.d.Get("base-vm2"); dv.Attached == nil {
		t.Fatal("image device not recovered")
	}
	if st, _ := e.cat.Status("base"); st.LockedBy != "shared" {
		t.Fatalf("lock after recovery: %s", st.LockedBy)
	}
	vm2.exit()
	e.vms[q3].exit()
	waitFor(t, func() bool {
		a, _ := e.d.Get("base-vm1")
		b, _ := e.d.Get("base-vm2")
		return a.Attached == nil && b.Attached == nil
	})
	// Delete with purge never removes an image file.
	if err := e.d.Delete(ctx, "base-vm1", true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("image file removed by device delete --purge: %v", err)
	}
	// With every VM gone, image rm succeeds.
	if _, err := e.cat.Remove("base", true); err != nil {
		t.Fatalf("image rm after the VMs exited: %v", err)
	}
	// The remaining device's image is gone: attach says so.
	q4, _ := e.vm("vm4")
	if _, err := e.d.Attach(ctx, "base-vm2", AttachRequest{QMP: q4, As: KindNVDIMM}); !errors.Is(err, memfile.ErrImageNotFound) {
		t.Fatalf("attach of a removed image: %v", err)
	}
}

func TestImageDeviceRefusals(t *testing.T) {
	e := newImgEnv(t)
	ctx := context.Background()
	p := e.addImage("base", e.cat.Dir(), 4<<20)
	q1, vm1 := e.vm("vm1")
	if _, err := e.d.Create(ctx, CreateRequest{Name: "img", Image: "base"}); err != nil {
		t.Fatal(err)
	}

	// Writable routes to the image: every one is refused, naming why.
	_, err := e.d.Attach(ctx, "img", AttachRequest{QMP: q1, As: KindVirtioPMEM})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "virtio-pmem has no read-only mode") {
		t.Errorf("attach image as virtio-pmem: %v", err)
	}
	_, err = e.d.Attach(ctx, "img", AttachRequest{QMP: q1, As: KindVhostUser})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "only as an nvdimm") {
		t.Errorf("attach image as vhost-user: %v", err)
	}
	if calls := vm1.callList(); len(calls) != 0 {
		t.Errorf("refused attaches reached QEMU: %v", calls)
	}
	var ce *ConfinementError
	_, err = e.d.Create(ctx, CreateRequest{Name: "w", Backing: p})
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "--image") {
		t.Errorf("image file in the catalog as a backing: %v", err)
	}
	_, err = e.d.Create(ctx, CreateRequest{Name: "w", Backing: p, ReadOnly: true})
	if !errors.As(err, &ce) {
		t.Errorf("image file in the catalog as a read-only backing: %v", err)
	}
	// An image catalogued in place inside a backing directory.
	bp := e.addImage("inback", DefaultBackingDir(e.state), 2<<20)
	_, err = e.d.Create(ctx, CreateRequest{Name: "w", Backing: bp})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `image "inback"`) || !strings.Contains(err.Error(), "--image inback") {
		t.Errorf("image file in a backing dir as a backing: %v", err)
	}
	// The memfile adapter alone names the image from its metadata record.
	_, err = (MemfileBackings{}).Prepare(ctx, BackingSpec{Path: bp, Slot: -1})
	if err == nil || !strings.Contains(err.Error(), `image "inback"`) {
		t.Errorf("MemfileBackings writable adopt of an image: %v", err)
	}
	// That image works as an image.
	if _, err := e.d.Create(ctx, CreateRequest{Name: "inback", Image: "inback"}); err != nil {
		t.Errorf("image in a backing dir: %v", err)
	}

	// Unknown image, and image requests that carry backing fields.
	_, err = e.d.Create(ctx, CreateRequest{Name: "x", Image: "nope"})
	if !errors.Is(err, memfile.ErrImageNotFound) || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("unknown image: %v", err)
	}
	for _, req := range []CreateRequest{
		{Name: "x", Image: "base", Backing: p},
		{Name: "x", Image: "base", Size: 4 << 20},
		{Name: "x", Image: "base", LabelSize: 128 << 10},
		{Name: "x", Image: "base", Namespace: "ns", Mode: "fsdax"},
	} {
		if _, err := e.d.Create(ctx, req); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "do not give") {
			t.Errorf("%+v: %v", req, err)
		}
	}
	// An image whose file lies outside the catalog and the backing dirs.
	e.addImage("stray", e.outside, 2<<20)
	if _, err := e.d.Create(ctx, CreateRequest{Name: "stray", Image: "stray"}); !errors.As(err, &ce) || !strings.Contains(err.Error(), "image catalog") {
		t.Errorf("image outside the confined directories: %v", err)
	}
	// Duplicate device name.
	if _, err := e.d.Create(ctx, CreateRequest{Name: "img", Image: "base"}); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate name: %v", err)
	}
	// The same device cannot be attached to two VMs: a second device is.
	if _, err := e.d.Attach(ctx, "img", AttachRequest{QMP: q1, As: KindNVDIMM}); err != nil {
		t.Fatal(err)
	}
	q2, _ := e.vm("vm2")
	if _, err := e.d.Attach(ctx, "img", AttachRequest{QMP: q2, As: KindNVDIMM}); !errors.Is(err, ErrConflict) {
		t.Errorf("second attach of one device: %v", err)
	}
	if got := len(e.d.List()); got != 2 {
		t.Errorf("registry has %d devices after refusals, want 2", got)
	}
}

// TestImageReplacedUnderName: an image removed and catalogued again under
// the same name but from another file is not attached through a device
// made from the old one.
func TestImageReplacedUnderName(t *testing.T) {
	e := newImgEnv(t)
	ctx := context.Background()
	e.addImage("base", e.cat.Dir(), 4<<20)
	if _, err := e.d.Create(ctx, CreateRequest{Name: "img", Image: "base"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.cat.Remove("base", true); err != nil {
		t.Fatal(err)
	}
	e.addImage("base", filepath.Join(e.cat.Dir(), "v2"), 2<<20)
	q, vm := e.vm("vm1")
	_, err := e.d.Attach(ctx, "img", AttachRequest{QMP: q, As: KindNVDIMM})
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "create it again") {
		t.Fatalf("attach after the image changed: %v", err)
	}
	if len(vm.callList()) != 0 {
		t.Errorf("QEMU was asked: %v", vm.callList())
	}
}

func TestImageDeviceWithoutCatalog(t *testing.T) {
	e := newEnv(t)
	_, err := e.d.Create(context.Background(), CreateRequest{Name: "x", Image: "base"})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "no image catalog") {
		t.Fatalf("image device on a daemon without a catalog: %v", err)
	}
}

func TestImageCatalogInsideBackingDirRefused(t *testing.T) {
	state := t.TempDir()
	cat, err := memfile.OpenCatalog(state)
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(Config{StateDir: state, Backings: MemfileBackings{}, Images: CatalogImages{Catalog: cat},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil || !strings.Contains(err.Error(), "inside the image catalog") {
		t.Fatalf("catalog containing the backing dir: %v", err)
	}
}

func TestImageAPI(t *testing.T) {
	e := newImgEnv(t)
	e.addImage("base", e.cat.Dir(), 2<<20)
	env := &env{t: t, d: e.d}
	c, _ := env.serve()
	ctx := context.Background()
	dv, err := c.Create(ctx, CreateRequest{Name: "img", Image: "base"})
	if err != nil || dv.Image != "base" || !dv.ReadOnly {
		t.Fatalf("create over the API: %+v %v", dv, err)
	}
	var re *RemoteError
	_, err = c.Create(ctx, CreateRequest{Name: "x", Image: "nope"})
	if !errors.As(err, &re) || re.Code != "not_found" {
		t.Errorf("unknown image over the API: %v", err)
	}
	q, _ := e.vm("vm1")
	_, err = c.Attach(ctx, "img", AttachRequest{QMP: q, As: KindVirtioPMEM})
	if !errors.As(err, &re) || re.Code != "invalid" || !strings.Contains(re.Error(), "read-only") {
		t.Errorf("virtio-pmem attach of an image over the API: %v", err)
	}
	_, err = c.Create(ctx, CreateRequest{Name: "y", Backing: filepath.Join(e.cat.Dir(), "base.img")})
	if !errors.As(err, &re) || re.Code != "confinement" {
		t.Errorf("catalog file as a backing over the API: %v", err)
	}
}

func TestImageInfoFromArgs(t *testing.T) {
	good := memfile.QEMUArgs{
		Object: "memory-backend-file,id=mem-nv0,mem-path=/i/a,,b.img,size=4M,share=on,align=2M,readonly=on",
		Device: "nvdimm,id=nv0,memdev=mem-nv0,unarmed=on",
	}
	info, err := imageInfoFromArgs(good)
	if err != nil || info.BackingSize != 4<<20 || info.Align != 2<<20 || info.PMem {
		t.Fatalf("good args: %+v %v", info, err)
	}
	if typ, props := splitQEMUOpts(good.Object); typ != "memory-backend-file" || props["mem-path"] != "/i/a,b.img" {
		t.Errorf("split: %s %v", typ, props)
	}
	bad := map[string]memfile.QEMUArgs{
		"readonly=on":    {Object: strings.Replace(good.Object, ",readonly=on", "", 1), Device: good.Device},
		"share=on":       {Object: strings.Replace(good.Object, "share=on", "share=off", 1), Device: good.Device},
		"unarmed=on":     {Object: good.Object, Device: "nvdimm,id=nv0,memdev=mem-nv0"},
		"label area":     {Object: good.Object, Device: good.Device + ",label-size=128K"},
		"want an nvdimm": {Object: good.Object, Device: "virtio-pmem-pci,id=nv0"},
		"size":           {Object: strings.Replace(good.Object, "size=4M", "size=lots", 1), Device: good.Device},
	}
	for want, a := range bad {
		if _, err := imageInfoFromArgs(a); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", a.Object+" "+a.Device, err, want)
		}
	}
}

// FuzzImageInfoFromArgs: any -object/-device pair is either refused or
// yields a read-only nvdimm description; nothing panics.
func FuzzImageInfoFromArgs(f *testing.F) {
	f.Add("memory-backend-file,id=mem-nv0,mem-path=/i/a,,b.img,size=4M,share=on,align=2M,readonly=on", "nvdimm,id=nv0,memdev=mem-nv0,unarmed=on")
	f.Add("memory-backend-file,id=mem-nv0,mem-path=/i/a.img,size=1048704K,share=on,align=2M,pmem=on,readonly=on", "nvdimm,id=nv0,memdev=mem-nv0,unarmed=on,slot=1")
	f.Add("", "")
	f.Add(",,,,=,", "nvdimm,,unarmed=on")
	f.Fuzz(func(t *testing.T, obj, dev string) {
		info, err := imageInfoFromArgs(memfile.QEMUArgs{Object: obj, Device: dev})
		if err != nil {
			return
		}
		_, o := splitQEMUOpts(obj)
		_, d := splitQEMUOpts(dev)
		if o["readonly"] != "on" || o["share"] != "on" || d["unarmed"] != "on" {
			t.Fatalf("accepted a writable attach: %q %q", obj, dev)
		}
		if info.LabelSize != 0 || info.Created {
			t.Fatalf("image info %+v", info)
		}
	})
}
