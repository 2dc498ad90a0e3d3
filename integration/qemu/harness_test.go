//go:build integration

package qemu

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// bootGuestWith boots vm on the QEMU q (nil: the host's) with boot
// options o, sharing a fresh directory, waits for it and returns the
// result. It fails the test when QEMU or the boot fails; the script's exit
// code is left for the caller (see mustBoot). On failure of the test, the
// console log is saved under artifacts/<test>.log.
func bootGuestWith(t *testing.T, q *QEMU, vm *VM, o BootOptions) *Result {
	t.Helper()
	ctx := context.Background()
	kit, err := GetKit(ctx, t.Logf)
	if err != nil {
		t.Fatalf("guest kit: %v", err)
	}
	accel := Accel(ctx, kit, t.Logf)
	if vm.Name == "" {
		vm.Name = t.Name()
	}
	timeout := vm.Timeout
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	share := t.TempDir()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := BootWith(ctx, kit, q, accel, vm, share, o)
	if res != nil {
		saveConsoleOnFailure(t, vm.Name, res.Console)
		t.Logf("guest %s (%s): %s, script exit %d, %s", vm.Name, q, accel, res.ExitCode, res.Elapsed.Round(100*time.Millisecond))
	}
	if err != nil {
		t.Fatalf("guest %s: %v\n--- console tail ---\n%s", vm.Name, err, tail(resConsole(res), 80))
	}
	return res
}

// mustBoot is bootGuestWith on the host's QEMU that also requires the guest script to exit 0.
func mustBoot(t *testing.T, vm *VM) *Result {
	t.Helper()
	return mustBootWith(t, nil, vm, BootOptions{})
}

// mustBootWith is bootGuestWith that also requires the script to exit 0.
func mustBootWith(t *testing.T, q *QEMU, vm *VM, o BootOptions) *Result {
	t.Helper()
	res := bootGuestWith(t, q, vm, o)
	if res.ExitCode != 0 {
		t.Fatalf("guest %s: script exited %d\n--- guest output ---\n%s", vm.Name, res.ExitCode, tail(res.Output, 80))
	}
	return res
}

func resConsole(r *Result) string {
	if r == nil {
		return ""
	}
	return r.Console
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

func saveConsoleOnFailure(t *testing.T, name, console string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		dir := "artifacts"
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Logf("artifacts: %v", err)
			return
		}
		p := filepath.Join(dir, unsafeName.ReplaceAllString(t.Name()+"-"+filepath.Base(name), "_")+".log")
		if err := os.WriteFile(p, []byte(console), 0o644); err != nil {
			t.Logf("artifacts: %v", err)
			return
		}
		t.Logf("console log saved to integration/qemu/%s", p)
	})
}

var (
	binOnce sync.Once
	binPath string
	binDir  string // the temporary directory ourBinary built into; removed by TestMain
	binErr  error
	binOut  string
)

// TestMain removes what the package's helpers leave for the whole process
// (the binary ourBinary built), so repeated runs do not fill /tmp.
func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// ourBinary builds a static nvdimm-backend once per test process; the same
// binary runs on the host and inside guests. NVDIMM_BIN names a prebuilt
// static binary to use instead.
func ourBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		if p := os.Getenv("NVDIMM_BIN"); p != "" {
			binPath, binErr = filepath.Abs(p)
			return
		}
		root, err := repoRoot()
		if err != nil {
			binErr = err
			return
		}
		dir, err := os.MkdirTemp("", "nvdimm-backend-bin-")
		if err != nil {
			binErr = err
			return
		}
		binDir = dir
		binPath = filepath.Join(dir, "nvdimm-backend")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/nvdimm-backend")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		binOut = string(out)
		binErr = err
	})
	if binErr != nil {
		t.Fatalf("building nvdimm-backend: %v\n%s", binErr, binOut)
	}
	return binPath
}

// host runs our binary on the host and returns stdout; it fails the test on
// a non-zero exit.
func host(t *testing.T, args ...string) string {
	t.Helper()
	out, stderr, err := hostTry(t, args...)
	if err != nil {
		t.Fatalf("nvdimm-backend %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, stderr)
	}
	return out
}

// hostTry runs our binary on the host and returns stdout, stderr and the error.
func hostTry(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	cmd := exec.Command(ourBinary(t), args...)
	var o, e strings.Builder
	cmd.Stdout = &o
	cmd.Stderr = &e
	err := cmd.Run()
	return o.String(), e.String(), err
}

// hostJSON runs our binary with --json and decodes stdout into v.
func hostJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out := host(t, append([]string{"--json"}, args...)...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("nvdimm-backend --json %s: decoding %q: %v", strings.Join(args, " "), out, err)
	}
}

// sparseFile creates a file of the given size filled with zeros.
func sparseFile(t *testing.T, path string, size int64) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}
