package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nvdimm-backend/nvdimm-backend/daemon"
	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

func runCLI(t *testing.T, stdin string, args ...string) (string, string, error) {
	t.Helper()
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), errOut.String(), err
}

// startServe runs the serve verb in the background until the test ends.
// No other command may be built while it runs (the CLI's flags are
// package globals), so the test talks to it with daemon.Client.
func startServe(t *testing.T, state, sock string, extra ...string) {
	t.Helper()
	root := newRootCmd()
	root.SetArgs(append([]string{"serve", "--state-dir", state, "--control-socket", sock, "--log-level", "error"}, extra...))
	root.SetErr(&bytes.Buffer{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("control socket never came up: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCLIServe(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	sock := filepath.Join(dir, "run", "control.sock")
	startServe(t, state, sock)
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket: %v %v", fi, err)
	}
	c := daemon.NewClient(sock)
	ctx := context.Background()
	if h, err := c.Health(ctx); err != nil || h.Status != "ok" {
		t.Fatalf("healthz: %+v %v", h, err)
	}
	dv, err := c.Create(ctx, daemon.CreateRequest{Name: "pm0", Backing: filepath.Join(state, "backings", "pm0.img"), Size: 32 << 20, LabelSize: 128 << 10})
	if err != nil || !dv.Created || dv.BackingSize != 32<<20+128<<10 {
		t.Fatalf("create through serve: %+v %v", dv, err)
	}
}

// TestCLIDeviceVerbs runs the client verbs against a daemon started
// in-process.
func TestCLIDeviceVerbs(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	sock := filepath.Join(dir, "control.sock")
	d, err := daemon.New(daemon.Config{StateDir: state, Backings: daemon.MemfileBackings{}, DialQMP: daemon.DialQMP,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	l, err := daemon.ListenControl(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-done })
	t.Setenv(daemon.SocketEnv, sock)

	backing := filepath.Join(state, "backings", "pm0.img")
	out, _, err := runCLI(t, "", "device", "create", "pm0", "--backing", backing, "--size", "32M", "--label-size", "128K", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var dv daemon.Device
	if err := json.Unmarshal([]byte(out), &dv); err != nil || dv.Name != "pm0" || dv.Size != 32<<20 || !dv.Created {
		t.Fatalf("create --json: %v %s", err, out)
	}
	out, _, err = runCLI(t, "", "device", "list")
	if err != nil || !strings.Contains(out, "pm0") || !strings.Contains(out, "32 MiB") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	out, _, err = runCLI(t, "", "device", "show", "pm0")
	if err != nil || !strings.Contains(out, "attached:") || !strings.Contains(out, backing) {
		t.Fatalf("show: %v\n%s", err, out)
	}
	_, _, err = runCLI(t, "", "device", "show", "nope")
	if err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("show unknown: %v", err)
	}
	_, _, err = runCLI(t, "", "device", "create", "x", "--backing", "/etc/hostname", "--size", "2M")
	if err == nil || !strings.Contains(err.Error(), "must resolve to a path under a backing directory") {
		t.Fatalf("create outside: %v", err)
	}
	_, _, err = runCLI(t, "", "device", "attach", "pm0", "--qmp", filepath.Join(dir, "none.qmp"), "--as", "nvdimm")
	if err == nil || !strings.Contains(err.Error(), "none.qmp") {
		t.Fatalf("attach to missing QMP: %v", err)
	}
	out, _, err = runCLI(t, "", "device", "delete", "pm0", "--purge", "--json")
	if err != nil || !strings.Contains(out, `"purged": true`) {
		t.Fatalf("delete: %v %s", err, out)
	}
	if _, err := os.Stat(backing); !os.IsNotExist(err) {
		t.Fatalf("backing not purged: %v", err)
	}
}

// writeImage writes a 4 MiB raw image file at p.
func writeImage(t *testing.T, p string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4<<20)
	for i := range b {
		b[i] = byte(i >> 12)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestCLIServeCatalog: serve --catalog DIR makes devices from that
// catalog's images, and refuses its files as backings.
func TestCLIServeCatalog(t *testing.T) {
	dir := t.TempDir()
	clearImmutable(t, dir)
	state := filepath.Join(dir, "state")
	catDir := filepath.Join(dir, "catalog")
	cat, err := memfile.OpenCatalog(catDir)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(catDir, "base.img")
	writeImage(t, img)
	if _, err := cat.Add("base", img, memfile.ImageOptions{}); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "control.sock")
	startServe(t, state, sock, "--catalog", catDir)
	c := daemon.NewClient(sock)
	ctx := context.Background()
	dv, err := c.Create(ctx, daemon.CreateRequest{Name: "img", Image: "base"})
	if err != nil || dv.Image != "base" || !dv.ReadOnly || dv.Backing != img || dv.BackingSize != 4<<20 {
		t.Fatalf("image device through serve --catalog: %+v %v", dv, err)
	}
	var re *daemon.RemoteError
	if _, err := c.Create(ctx, daemon.CreateRequest{Name: "rw", Backing: img}); !errors.As(err, &re) || re.Code != "confinement" || !strings.Contains(err.Error(), "--image") {
		t.Fatalf("catalog file as a backing: %v", err)
	}
}

// TestCLIDeviceImage runs device create --image and its refusals against
// a daemon started in-process with a catalog.
func TestCLIDeviceImage(t *testing.T) {
	dir := t.TempDir()
	clearImmutable(t, dir)
	state := filepath.Join(dir, "state")
	catDir := filepath.Join(state, "images")
	img := filepath.Join(catDir, "base.img")
	writeImage(t, img)
	if _, _, err := runCLI(t, "", "image", "--catalog", catDir, "add", "base", img); err != nil {
		t.Fatal(err)
	}
	cat, err := memfile.OpenCatalog(catDir)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "control.sock")
	d, err := daemon.New(daemon.Config{StateDir: state, Backings: daemon.MemfileBackings{}, Images: daemon.CatalogImages{Catalog: cat},
		DialQMP: daemon.DialQMP, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	l, err := daemon.ListenControl(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-done })
	t.Setenv(daemon.SocketEnv, sock)

	out, _, err := runCLI(t, "", "device", "create", "img", "--image", "base", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var dv daemon.Device
	if err := json.Unmarshal([]byte(out), &dv); err != nil || dv.Image != "base" || !dv.ReadOnly || dv.Created || dv.Backing != img {
		t.Fatalf("create --image --json: %v %s", err, out)
	}
	if !strings.Contains(out, `"image": "base"`) {
		t.Errorf("JSON lacks the image field: %s", out)
	}
	out, _, err = runCLI(t, "", "device", "show", "img")
	if err != nil || !strings.Contains(out, "image:") || !strings.Contains(out, "base") || !regexp.MustCompile(`read-only:\s+true`).MatchString(out) {
		t.Fatalf("show: %v\n%s", err, out)
	}
	out, _, err = runCLI(t, "", "device", "list")
	if err != nil || !strings.Contains(out, "image base: "+img) {
		t.Fatalf("list: %v\n%s", err, out)
	}
	refusals := []struct {
		args []string
		want string
	}{
		{[]string{"device", "create", "w", "--image", "base", "--readonly=false"}, "images are shared read-only"},
		{[]string{"device", "create", "w", "--image", "base", "--backing", img}, "exactly one of --backing"},
		{[]string{"device", "create", "w"}, "exactly one of --backing"},
		{[]string{"device", "create", "w", "--image", "nope"}, `"nope"`},
		{[]string{"device", "create", "w", "--image", "base", "--size", "4M"}, "do not give a size"},
		{[]string{"device", "create", "w", "--backing", img, "--readonly"}, "--image NAME"},
		{[]string{"device", "attach", "img", "--qmp", filepath.Join(dir, "vm.qmp"), "--as", "virtio-pmem"}, "virtio-pmem has no read-only mode"},
	}
	for _, r := range refusals {
		if _, _, err := runCLI(t, "", r.args...); err == nil || !strings.Contains(err.Error(), r.want) {
			t.Errorf("%v: %v, want %q", r.args, err, r.want)
		}
	}
	if devs := d.List(); len(devs) != 1 {
		t.Errorf("registry after refusals: %+v", devs)
	}
}

func TestCLILibvirtHook(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	bd := filepath.Join(dir, "backings")
	p := filepath.Join(bd, "vm1.img")
	xml := `<domain type='kvm'><name>vm1</name><maxMemory slots='4' unit='GiB'>8</maxMemory><devices>
<memory model='nvdimm' access='shared'><source><path>` + p + `</path><alignsize unit='MiB'>2</alignsize></source>
<target><size unit='KiB'>131200</size><label><size unit='KiB'>128</size></label></target></memory></devices></domain>`
	if _, _, err := runCLI(t, xml, "libvirt-hook", "--state-dir", state, "--backing-dir", bd, "vm1", "prepare", "begin", "-"); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Size() != 131200<<10 {
		t.Fatalf("backing: %v %v", fi, err)
	}
	bad := strings.Replace(xml, "<size unit='KiB'>128</size>", "<size unit='KiB'>64</size>", 1)
	_, _, err := runCLI(t, bad, "libvirt-hook", "--state-dir", state, "--backing-dir", bd, "vm1", "prepare", "begin", "-")
	if err == nil || !strings.Contains(err.Error(), "128 KiB") {
		t.Fatalf("bad label size: %v", err)
	}
	if _, _, err := runCLI(t, "", "libvirt-hook", "--state-dir", state, "--backing-dir", bd, "vm1", "release", "end", "-"); err != nil {
		t.Fatal(err)
	}
}
