package daemon

// Real-QEMU test set-up shared by qemu_test.go and image_qemu_test.go:
// a paused TCG QEMU with two QMP monitors, and a daemon serving its
// control API on the production backings and QMP dialer. Tests that use
// it skip when qemu-system-x86_64 is not installed.

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nvdimm-backend/nvdimm-backend/memfile"
	"github.com/nvdimm-backend/nvdimm-backend/qmp"
)

// realVM is a paused TCG QEMU with two QMP monitors: one for the daemon,
// one the test uses to look at what the daemon did.
type realVM struct {
	daemonQMP string
	mon       *qmp.Client
	exit      chan error
	pid       int
}

func startRealQEMU(t *testing.T, machine, mem string, extra ...string) *realVM {
	t.Helper()
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skipf("qemu-system-x86_64 not installed: %v", err)
	}
	dir := t.TempDir()
	vm := &realVM{daemonQMP: filepath.Join(dir, "daemon.qmp"), exit: make(chan error, 1)}
	testQMP := filepath.Join(dir, "test.qmp")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	args := append([]string{
		"-machine", machine, "-accel", "tcg", "-m", mem,
		"-S", "-display", "none", "-nodefaults", "-no-user-config",
		"-qmp", "unix:" + vm.daemonQMP + ",server=on,wait=off",
		"-qmp", "unix:" + testQMP + ",server=on,wait=off",
	}, extra...)
	cmd := exec.CommandContext(ctx, bin, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting QEMU: %v", err)
	}
	vm.pid = cmd.Process.Pid
	go func() { vm.exit <- cmd.Wait() }()
	t.Cleanup(func() {
		if vm.mon != nil {
			vm.mon.Close()
		}
		cmd.Process.Kill()
		<-vm.exit
		cancel()
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := qmp.Dial(dctx, testQMP)
		dcancel()
		if err == nil {
			vm.mon = c
			return vm
		}
		if time.Now().After(deadline) {
			t.Fatalf("QEMU QMP never answered: %v; stderr:\n%s", err, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (vm *realVM) memoryDeviceIDs(t *testing.T) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ds, err := vm.mon.QueryMemoryDevices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, d := range ds {
		ids = append(ids, d.ID())
	}
	return ids
}

// objects lists the daemon's objects under /objects.
func (vm *realVM) ourObjects(t *testing.T) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var props []struct {
		Name string `json:"name"`
	}
	if err := vm.mon.Execute(ctx, "qom-list", map[string]any{"path": "/objects"}, &props); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range props {
		if strings.HasPrefix(p.Name, "nvb-") {
			out = append(out, p.Name)
		}
	}
	return out
}

type realDaemon struct {
	d      *Daemon
	c      *Client
	cancel context.CancelFunc
	done   chan error
}

// startRealDaemon runs a daemon on stateDir with the production backings
// and QMP dialer, recovered and serving its control API; opts adjust its
// Config (an image catalog, a vhost-user factory).
func startRealDaemon(t *testing.T, stateDir string, opts ...func(*Config)) *realDaemon {
	t.Helper()
	cfg := Config{
		StateDir: stateDir, Backings: MemfileBackings{}, DialQMP: DialQMP,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Timeout: 20 * time.Second,
	}
	for _, o := range opts {
		o(&cfg)
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d.Recover(context.Background())
	sock := filepath.Join(stateDir, "control.sock")
	l, err := ListenControl(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rd := &realDaemon{d: d, c: NewClient(sock), cancel: cancel, done: make(chan error, 1)}
	go func() { rd.done <- d.Serve(ctx, l) }()
	t.Cleanup(rd.stop)
	return rd
}

// withImages gives the daemon the image catalog cat.
func withImages(cat *memfile.Catalog) func(*Config) {
	return func(c *Config) { c.Images = CatalogImages{Catalog: cat} }
}

func (rd *realDaemon) stop() {
	if rd.cancel != nil {
		rd.cancel()
		<-rd.done
		rd.cancel = nil
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// quit asks QEMU to exit (the VM's exit is what the daemon reacts to).
func (vm *realVM) quit(t *testing.T, ctx context.Context) {
	t.Helper()
	if err := vm.mon.Execute(ctx, "quit", nil, nil); err != nil && !errors.Is(err, qmp.ErrClosed) {
		t.Logf("quit: %v", err)
	}
}

func assertMemfileUnlocked(t *testing.T, p string) {
	t.Helper()
	l, err := (MemfileBackings{}).Lock(p, false)
	if err != nil {
		t.Fatalf("%s still locked: %v", p, err)
	}
	l.Close()
}
