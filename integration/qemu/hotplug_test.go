//go:build integration

package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// startDaemon runs `nvdimm-backend serve` in dir and returns its control
// socket; the process is killed when the test ends.
func startDaemon(t *testing.T, dir string) string {
	t.Helper()
	sock := filepath.Join(dir, "control.sock")
	backings := filepath.Join(dir, "backings")
	if err := os.MkdirAll(backings, 0o755); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "daemon.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(ourBinary(t), "serve", "--state-dir", filepath.Join(dir, "state"),
		"--control-socket", sock, "--backing-dir", backings)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Killed with the test process too (a timed-out or interrupted run
	// must not leave daemons behind).
	cmd.SysProcAttr = &unix.SysProcAttr{Pdeathsig: unix.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }() //nolint:errcheck
	t.Cleanup(func() {
		cmd.Process.Kill() //nolint:errcheck
		<-exited
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("daemon log:\n%s", tail(string(b), 40))
		}
	})
	for deadline := time.Now().Add(60 * time.Second); ; {
		if _, err := os.Stat(sock); err == nil {
			return sock
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("daemon exited at start:\n%s", b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("daemon control socket did not appear within 60 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitFile waits for path to exist.
func waitFile(ctx context.Context, path string) error {
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", path, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// startBareQEMU starts a paused QEMU without a guest (a second "VM" that
// only answers QMP), for refusal checks; it is killed when the test ends.
func startBareQEMU(t *testing.T, qmpSock string) {
	t.Helper()
	cmd := exec.Command("qemu-system-x86_64", "-machine", "q35,nvdimm=on", "-accel", "tcg", "-m", "256M,slots=4,maxmem=4G",
		"-nodefaults", "-no-user-config", "-display", "none", "-S", "-qmp", "unix:"+qmpSock+",server=on,wait=off")
	out, err := os.CreateTemp(t.TempDir(), "bare-qemu-*.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &unix.SysProcAttr{Pdeathsig: unix.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); out.Close() }) //nolint:errcheck
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := waitFile(ctx, qmpSock); err != nil {
		t.Fatal(err)
	}
}

const hotplugGuestScript = `
n0=$(ls /sys/bus/nd/devices | grep -c '^nmem' || true)
echo "$n0" > /host/ready
i=0
while [ ! -e /host/attached ]; do sleep 0.1; i=$((i+1)); [ $i -lt 3000 ]; done
t0=$(cut -d' ' -f1 /proc/uptime)
ok=0; i=0
while [ $i -lt 300 ]; do
  nm=$(ls /sys/bus/nd/devices | grep -c '^nmem' || true)
  vp=$(ls /sys/bus/virtio/drivers/virtio_pmem 2>/dev/null | grep -c '^virtio' || true)
  if [ "$nm" -gt "$n0" ] && [ "$vp" -ge 1 ]; then ok=1; break; fi
  sleep 0.1; i=$((i+1))
done
t1=$(cut -d' ' -f1 /proc/uptime)
echo "$t0 $t1 $ok $nm $vp" > /host/seen
ndctl list -RDi > /host/after.json || true
ls /dev/pmem* > /host/pmem.txt 2>&1 || true
# The hot-added DIMM carries a host-provisioned fsdax namespace "hot".
i=0
while ! ndctl list -N | grep -q '"name":"hot"'; do sleep 0.2; i=$((i+1)); [ $i -lt 100 ]; done
ndctl list -Nv > /host/ns.json
dev=/dev/$(ndctl list -N | grep -B20 '"name":"hot"' | sed -n 's/.*"blockdev":"\([^"]*\)".*/\1/p' | tail -1)
/usr/local/sbin/mke2fs -q -t ext4 -b 4096 -F "$dev"
mount -t ext4 -o dax "$dev" /mnt
grep /mnt /proc/mounts > /host/mounts.txt
umount /mnt
i=0
while [ ! -e /host/done ]; do sleep 0.1; i=$((i+1)); [ $i -lt 3000 ]; done
[ $ok = 1 ]
`

// TestHotplug: the daemon hot-adds an nvdimm and a virtio-pmem-pci to a
// running guest over QMP; the guest sees both within 2 s of the attach
// returning; detach is refused cleanly; a second VM asking for the attached
// backing is refused.
func TestHotplug(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctl := startDaemon(t, dir)
	cs := []string{"--control-socket", ctl}
	host(t, append([]string{"device", "create", "nv", "--backing", filepath.Join(dir, "backings", "nv.img"), "--size", "256M", "--label-size", "128K",
		"--namespace", "hot", "--mode", "fsdax", "--slot", "1"}, cs...)...)
	host(t, append([]string{"device", "create", "vp", "--backing", filepath.Join(dir, "backings", "vp.img"), "--size", "256M"}, cs...)...)

	cold := sparseFile(t, filepath.Join(dir, "cold.img"), 256<<20+labelSize)
	vm := &VM{
		QMPSocket: filepath.Join(dir, "qmp.sock"),
		NVDIMMs:   []NVDIMM{{Path: cold, LabelSize: labelSize, Slot: 0}},
		ExtraArgs: []string{"-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1"},
		Script:    hotplugGuestScript,
	}
	var refusals []string
	vm.Started = func(ctx context.Context, vm *VM) error {
		if err := waitFile(ctx, filepath.Join(vm.Share, "ready")); err != nil {
			return err
		}
		var errs []error
		defer os.WriteFile(filepath.Join(vm.Share, "done"), nil, 0o644) //nolint:errcheck
		if o, e, err := hostTry(t, append([]string{"device", "attach", "nv", "--qmp", vm.QMPSocket, "--as", "nvdimm"}, cs...)...); err != nil {
			return fmt.Errorf("device attach nv: %v\n%s%s", err, o, e)
		}
		if o, e, err := hostTry(t, append([]string{"device", "attach", "vp", "--qmp", vm.QMPSocket, "--as", "virtio-pmem", "--bus", "rp1"}, cs...)...); err != nil {
			return fmt.Errorf("device attach vp: %v\n%s%s", err, o, e)
		}
		if err := os.WriteFile(filepath.Join(vm.Share, "attached"), nil, 0o644); err != nil {
			return err
		}
		// Detach is refused by QEMU for both kinds; the CLI must say so.
		for _, d := range []string{"nv", "vp"} {
			o, e, err := hostTry(t, append([]string{"device", "detach", d}, cs...)...)
			if err == nil {
				errs = append(errs, fmt.Errorf("device detach %s succeeded (%s); QEMU refuses unplug of nvdimm/virtio-pmem", d, o))
			} else if strings.TrimSpace(e) == "" || strings.Contains(e, "panic") || strings.Contains(e, "unknown flag") {
				errs = append(errs, fmt.Errorf("device detach %s: unclear refusal %q", d, e))
			} else {
				refusals = append(refusals, "detach "+d+": "+strings.TrimSpace(e))
			}
		}
		// A second VM asking for the backing attached writable is refused.
		other := filepath.Join(dir, "other.sock")
		startBareQEMU(t, other)
		o, e, err := hostTry(t, append([]string{"device", "attach", "nv", "--qmp", other, "--as", "nvdimm"}, cs...)...)
		if err == nil {
			errs = append(errs, fmt.Errorf("attaching nv to a second VM succeeded: %s", o))
		} else {
			refusals = append(refusals, "second VM: "+strings.TrimSpace(e))
		}
		// The daemon is still healthy and still lists both devices.
		if o, e, err := hostTry(t, append([]string{"device", "list"}, cs...)...); err != nil || !strings.Contains(o, "nv") || !strings.Contains(o, "vp") {
			errs = append(errs, fmt.Errorf("device list after refusals: %v %s%s", err, o, e))
		}
		return errors.Join(errs...)
	}
	res := mustBoot(t, vm)
	for _, r := range refusals {
		t.Logf("refused as expected: %s", r)
	}
	seen, err := res.Read("seen")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(seen))
	if len(f) != 5 || f[2] != "1" {
		t.Fatalf("guest did not see both devices: %q", seen)
	}
	t0, _ := strconv.ParseFloat(f[0], 64)
	t1, _ := strconv.ParseFloat(f[1], 64)
	// The target: 2 s, under TCG too (0.24-0.77 s measured on a
	// loaded 2-core machine).
	limit := 2.0
	if d := t1 - t0; d > limit {
		t.Errorf("guest saw the hot-added devices %.1f s after the attach returned, want within %.0f s (%s)", d, limit, res.Accel)
	} else {
		t.Logf("guest saw both devices %.2f s after the attach returned", d)
	}
	ns := onlyNamespace(t, mustRead(t, res, "ns.json"), "hot")
	if ns.Mode != "fsdax" {
		t.Errorf("hot-added namespace %+v, want fsdax", ns)
	}
	if m := string(mustRead(t, res, "mounts.txt")); !strings.Contains(m, "dax") {
		t.Errorf("hot-added namespace not mounted with dax: %q", m)
	}
	pm, _ := res.Read("pmem.txt")
	if !strings.Contains(string(pm), "/dev/pmem") {
		t.Errorf("no /dev/pmem* in the guest after hot-adding virtio-pmem: %s", pm)
	}
}
