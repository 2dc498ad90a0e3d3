//go:build integration

package qemu

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nvdimm-backend/nvdimm-backend/daemon"
	"github.com/nvdimm-backend/nvdimm-backend/qmp"
)

// needQEMU11 returns QEMU 11.1 from the cached forky root, building the
// root on first use. The scenarios need it: no earlier QEMU has both the
// user-creatable generic vhost-user device and the SHMEM protocol.
func needQEMU11(t *testing.T) *QEMU {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	q, err := GetQEMU11(ctx, t.Logf)
	if err != nil {
		if os.Geteuid() != 0 {
			t.Skipf("QEMU 11.1: %v", err)
		}
		t.Fatalf("QEMU 11.1: %v", err)
	}
	return q
}

// daemonProc is an `nvdimm-backend serve` process that a test can kill
// with SIGKILL and start again on the same state directory.
type daemonProc struct {
	t      *testing.T
	dir    string
	ctl    string
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	log    *os.File
	starts int
}

func newDaemonProc(t *testing.T, dir string) *daemonProc {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "backings"), 0o755); err != nil {
		t.Fatal(err)
	}
	lf, err := os.Create(filepath.Join(dir, "daemon.log"))
	if err != nil {
		t.Fatal(err)
	}
	d := &daemonProc{t: t, dir: dir, ctl: filepath.Join(dir, "control.sock"), log: lf}
	t.Cleanup(func() {
		d.kill()
		lf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(lf.Name())
			t.Logf("daemon log:\n%s", tail(string(b), 60))
		}
	})
	if err := d.start(); err != nil {
		t.Fatal(err)
	}
	return d
}

// start runs the daemon and waits for its control socket to answer.
func (d *daemonProc) start() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.starts++
	fmt.Fprintf(d.log, "=== start %d at %s\n", d.starts, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(ourBinary(d.t), "--log-level", "debug", "serve", "--state-dir", filepath.Join(d.dir, "state"),
		"--control-socket", d.ctl, "--backing-dir", filepath.Join(d.dir, "backings"))
	cmd.Stdout, cmd.Stderr = d.log, d.log
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }() //nolint:errcheck
	d.cmd, d.exited = cmd, exited
	c := daemon.NewClient(d.ctl)
	for deadline := time.Now().Add(20 * time.Second); ; {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Health(ctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("daemon exited at start (see daemon.log): %w", err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("daemon control socket did not answer within 20 s: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (d *daemonProc) kill() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil {
		return
	}
	d.cmd.Process.Kill() //nolint:errcheck
	<-d.exited
	fmt.Fprintf(d.log, "=== killed at %s\n", time.Now().Format(time.RFC3339Nano))
	d.cmd = nil
}

// term sends SIGTERM (a graceful shutdown) and waits for the process to
// be gone; after a minute it kills it and reports that.
func (d *daemonProc) term() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil {
		return nil
	}
	d.cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck
	var err error
	select {
	case <-d.exited:
	case <-time.After(time.Minute):
		d.cmd.Process.Kill() //nolint:errcheck
		<-d.exited
		err = errors.New("the daemon did not exit within a minute of SIGTERM")
	}
	fmt.Fprintf(d.log, "=== stopped with SIGTERM at %s\n", time.Now().Format(time.RFC3339Nano))
	d.cmd = nil
	return err
}

func (d *daemonProc) cli(args ...string) (string, error) {
	cmd := exec.Command(ourBinary(d.t), append(args, "--control-socket", d.ctl)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		return o.String(), fmt.Errorf("nvdimm-backend %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(e.String()))
	}
	return o.String(), nil
}

var metricLineRE = regexp.MustCompile(`(?m)^([a-z_]+)\{device="([^"]+)"\} (\S+)$`)

// metrics returns the daemon's per-device series (name -> device ->
// value; histograms as their _sum and _count), or nil when the daemon
// does not answer.
func (d *daemonProc) metrics() map[string]map[string]float64 {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	m, err := daemon.NewClient(d.ctl).Metrics(ctx)
	if err != nil {
		return nil
	}
	out := map[string]map[string]float64{}
	for _, sm := range metricLineRE.FindAllStringSubmatch(m, -1) {
		v, err := strconv.ParseFloat(sm[3], 64)
		if err != nil {
			continue
		}
		if out[sm[1]] == nil {
			out[sm[1]] = map[string]float64{}
		}
		out[sm[1]][sm[2]] = v
	}
	return out
}

// flushes returns the daemon's flush counter for device name (-1 when
// the daemon or the device's server does not report one).
func (d *daemonProc) flushes(name string) float64 {
	if v, ok := d.metrics()["nvdimm_backend_vhost_pmem_flushes_total"][name]; ok {
		return v
	}
	return -1
}

// vhostVM is the QEMU 11.1 set-up for virtio-pmem over vhost-user: guest
// RAM on a shared memfd (the back-end maps it), a PCIe root port for the
// device, QEMU paused (-S) until the daemon has attached the device, and a
// second QMP monitor for the test itself.
func vhostVM(dir, mem string) *VM {
	return &VM{
		Memory:    mem,
		QMPSocket: filepath.Join(dir, "qmp-daemon.sock"),
		ExtraArgs: []string{
			"-object", "memory-backend-memfd,id=ram,size=" + mem + ",share=on",
			"-machine", "memory-backend=ram",
			"-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1",
			"-device", "pcie-root-port,id=rp2,bus=pcie.0,chassis=2",
			"-device", "pcie-root-port,id=rp3,bus=pcie.0,chassis=3",
			"-device", "pcie-root-port,id=rp4,bus=pcie.0,chassis=4",
			"-qmp", "unix:" + filepath.Join(dir, "qmp-test.sock") + ",server=on,wait=off",
			"-S",
		},
	}
}

// attachAndStart attaches the daemon's devices (name -> root port) to the
// paused VM, then lets it run. It returns the test's QMP connection.
func attachAndStart(ctx context.Context, d *daemonProc, vm *VM, devs map[string]string) (*qmp.Client, error) {
	if err := waitFile(ctx, vm.QMPSocket); err != nil {
		return nil, err
	}
	for name, bus := range devs {
		if _, err := d.cli("device", "attach", name, "--qmp", vm.QMPSocket, "--as", "vhost-user", "--bus", bus); err != nil {
			return nil, err
		}
	}
	ctl := filepath.Join(filepath.Dir(vm.QMPSocket), "qmp-test.sock")
	if err := waitFile(ctx, ctl); err != nil {
		return nil, err
	}
	c, err := qmp.Dial(ctx, ctl)
	if err != nil {
		return nil, err
	}
	if err := c.Execute(ctx, "cont", nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// randomPattern writes n random bytes after a recognisable header to a
// file in dir and returns its path and contents.
func randomPattern(t *testing.T, dir, name string, n int) (string, []byte) {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	copy(b, "NVDIMM-PATTERN-"+name+"-")
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p, b
}

const waitPmemFn = `
waitpmem() { i=0; while [ ! -b /dev/pmem0 ]; do sleep 0.1; i=$((i+1)); if [ $i -ge 600 ]; then echo "no /dev/pmem0"; dmesg | tail -30; return 1; fi; done; }
vdev() { ls /sys/bus/virtio/drivers/virtio_pmem | grep '^virtio' | head -1; }
`

// seqlogScript runs guestbench's write+fsync record loop on an ext4 DAX
// filesystem on /dev/pmem0 until /host/stop appears, for the restart
// tests (checkSeqlogDurable reads what it leaves in /host).
const seqlogScript = waitPmemFn + `
waitpmem
/usr/local/sbin/mke2fs -q -t ext4 -b 4096 -F /dev/pmem0
mount -t ext4 -o dax /dev/pmem0 /mnt
guestbench seqlog -file /mnt/data -ack /host/acked -stop /host/stop > /host/seqlog.json
umount /mnt
dmesg | grep -iE 'I/O error|EXT4-fs error|virtio_pmem' > /host/dmesg.txt || true
`

// vhostScript: phase 1 checks the device (features, size), makes an ext4
// DAX filesystem, writes pattern 1 with fsync, unbinds and rebinds the
// driver, reads pattern 1 back and writes pattern 2, then reboots; phase 2
// (after the reboot) reads both back and writes pattern 3.
const vhostScript = waitPmemFn + `
if [ ! -e /host/phase2 ]; then
  touch /host/phase2
  waitpmem
  v=$(vdev)
  cat /sys/bus/virtio/devices/$v/features > /host/features
  cat /sys/bus/virtio/devices/$v/device > /host/virtio-id
  blockdev --getsize64 /dev/pmem0 > /host/size
  /usr/local/sbin/mke2fs -q -t ext4 -b 4096 -F /dev/pmem0
  mount -t ext4 -o dax /dev/pmem0 /mnt
  grep ' /mnt ' /proc/mounts > /host/mounts
  dd if=/host/pattern1 of=/mnt/p1 bs=64k conv=fsync
  umount /mnt
  echo "$v" > /sys/bus/virtio/drivers/virtio_pmem/unbind
  [ ! -b /dev/pmem0 ]
  echo "$v" > /sys/bus/virtio/drivers/virtio_pmem/bind
  waitpmem
  mount -t ext4 -o dax /dev/pmem0 /mnt
  cmp /mnt/p1 /host/pattern1
  dd if=/host/pattern2 of=/mnt/p2 bs=64k conv=fsync
  umount /mnt
  echo rebind-ok > /host/rebind
  sync
  reboot -f
fi
waitpmem
blockdev --getsize64 /dev/pmem0 > /host/size2
mount -t ext4 -o dax /dev/pmem0 /mnt
cmp /mnt/p1 /host/pattern1
cmp /mnt/p2 /host/pattern2
dd if=/host/pattern3 of=/mnt/p3 bs=64k conv=fsync
umount /mnt
echo reboot-ok > /host/reboot
`

// TestVhostUserPMEM: the daemon serves a 256 MiB virtio-pmem device over
// vhost-user to QEMU 11.1's vhost-user-test-device-pci; the guest's
// virtio_pmem takes shared-memory region 0, /dev/pmem0 has the backing's
// size, ext4 mounts with -o dax, fsynced patterns are in the host file,
// the daemon counts the flushes, and both a driver unbind/rebind and a
// guest reboot keep working (the region is mapped again on every start).
func TestVhostUserPMEM(t *testing.T) {
	t.Parallel()
	q := needQEMU11(t)
	dir := t.TempDir()
	d := newDaemonProc(t, dir)
	const size = 256 << 20
	backing := filepath.Join(dir, "backings", "vu.img")
	if _, err := d.cli("device", "create", "vu", "--backing", backing, "--size", "256M"); err != nil {
		t.Fatal(err)
	}
	vm := vhostVM(dir, "512M")
	vm.Script = vhostScript
	vm.Files = map[string]string{}
	var patterns [][]byte
	for i := 1; i <= 3; i++ {
		p, b := randomPattern(t, dir, fmt.Sprintf("pattern%d", i), 512<<10)
		vm.Files[filepath.Base(p)] = p
		patterns = append(patterns, b)
	}
	var maxFlushes float64 = -1
	vm.Started = func(ctx context.Context, vm *VM) error {
		c, err := attachAndStart(ctx, d, vm, map[string]string{"vu": "rp1"})
		if err != nil {
			return err
		}
		defer c.Close()
		// The server's counters disappear when QEMU exits (the daemon
		// releases the device), so sample them while the guest runs.
		tk := time.NewTicker(250 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-c.Done():
				return nil
			case <-ctx.Done():
				return nil
			case <-tk.C:
				if f := d.flushes("vu"); f > maxFlushes {
					maxFlushes = f
				}
			}
		}
	}
	res := mustBootWith(t, q, vm, BootOptions{AllowReboot: true})

	feat, _ := res.Read("features")
	if len(feat) == 0 || feat[0] != '1' {
		t.Errorf("guest virtio_pmem features %q: bit 0 (SHMEM_REGION) not negotiated", strings.TrimSpace(string(feat)))
	}
	for _, f := range []string{"size", "size2"} {
		b, _ := res.Read(f)
		if got, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); got != size {
			t.Errorf("guest /dev/pmem0 size (%s) = %q, want %d", f, strings.TrimSpace(string(b)), size)
		}
	}
	if m, _ := res.Read("mounts"); !strings.Contains(string(m), "dax") {
		t.Errorf("guest mount is not DAX: %q", m)
	}
	for _, f := range []string{"rebind", "reboot"} {
		if _, err := res.Read(f); err != nil {
			t.Errorf("guest did not get through the %s step: %v", f, err)
		}
	}
	host, err := os.ReadFile(backing)
	if err != nil {
		t.Fatal(err)
	}
	// ext4 places a file's blocks where it likes: look for every 4 KiB
	// block of each pattern among the backing's 4 KiB-aligned blocks.
	blocks := map[[sha256.Size]byte]bool{}
	for off := 0; off+4096 <= len(host); off += 4096 {
		blocks[sha256.Sum256(host[off:off+4096])] = true
	}
	for i, p := range patterns {
		missing := 0
		for off := 0; off < len(p); off += 4096 {
			if !blocks[sha256.Sum256(p[off:off+4096])] {
				missing++
			}
		}
		if missing > 0 {
			t.Errorf("pattern %d (512 KiB, written and fsynced in the guest): %d of its %d blocks are not in the host backing %s (%s)",
				i+1, missing, len(p)/4096, backing, describeBacking(host, p))
		}
	}
	if maxFlushes < 3 {
		t.Errorf("daemon counted %v flushes for the device, want at least one per fsynced pattern (3)", maxFlushes)
	} else {
		t.Logf("daemon counted %v flushes", maxFlushes)
	}
}

// guestRecord is guestbench's Record: 4 KiB, magic, le64 seq, filler.
func guestRecord(seq uint64) []byte {
	b := make([]byte, 4096)
	copy(b, "NVREC001")
	binary.LittleEndian.PutUint64(b[8:], seq)
	x := seq*0x9E3779B97F4A7C15 + 1
	for i := 16; i < 4096; i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(b[i:], x)
	}
	return b
}

// scanRecords returns, for every 4 KiB block of the file that starts with
// the record magic and is intact, its sequence number.
func scanRecords(path string) (map[uint64]bool, int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	found := map[uint64]bool{}
	torn := 0
	r := bufio.NewReaderSize(f, 1<<20)
	buf := make([]byte, 4096)
	for {
		if _, err := io.ReadFull(r, buf); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return found, torn, nil
			}
			return nil, 0, err
		}
		if !bytes.Equal(buf[:8], []byte("NVREC001")) {
			continue
		}
		seq := binary.LittleEndian.Uint64(buf[8:])
		if bytes.Equal(buf, guestRecord(seq)) {
			found[seq] = true
		} else {
			torn++
		}
	}
}

// guestbenchInitrd returns the kit's initramfs with a static guestbench
// appended as a second cpio archive (/usr/local/bin/guestbench); the
// kernel unpacks concatenated archives in order. The program is built
// once per process, the initramfs once per kit.
var (
	gbMu     sync.Mutex
	gbBin    string
	gbInitrd = map[string]string{}
)

func guestbenchInitrd(t *testing.T, kit *Kit) string {
	t.Helper()
	gbMu.Lock()
	defer gbMu.Unlock()
	if p, ok := gbInitrd[kit.Initrd]; ok {
		return p
	}
	if gbBin == "" {
		root, err := repoRoot()
		if err != nil {
			t.Fatal(err)
		}
		dir, err := os.MkdirTemp("", "nvdimm-guestbench-")
		if err != nil {
			t.Fatal(err)
		}
		tree := filepath.Join(dir, "tree")
		bin := filepath.Join(tree, "usr", "local", "bin", "guestbench")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "./integration/qemu/guestbench")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("building guestbench: %v\n%s", err, out)
		}
		gbBin = tree
	}
	base, err := os.ReadFile(kit.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	var extra bytes.Buffer
	if err := writeCpio(&extra, gbBin); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(filepath.Dir(gbBin), fmt.Sprintf("initrd-%d.cpio", len(gbInitrd)))
	if err := os.WriteFile(p, append(base, extra.Bytes()...), 0o644); err != nil {
		t.Fatal(err)
	}
	gbInitrd[kit.Initrd] = p
	return p
}

// seqlogResult is guestbench seqlog's final line.
type seqlogResult struct {
	Records  uint64  `json:"records"`
	P50us    float64 `json:"p50_us"`
	MaxUs    float64 `json:"max_us"`
	MaxAtSeq uint64  `json:"max_at_seq"`
}

// countLines returns the number of complete lines in path (0 if absent).
func countLines(path string) int {
	b, _ := os.ReadFile(path)
	return bytes.Count(b, []byte("\n"))
}

// waitLines waits until path has at least n lines.
func waitLines(ctx context.Context, path string, n int) error {
	for countLines(path) < n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d lines in %s (have %d): %w", n, filepath.Base(path), countLines(path), ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// errQEMUDied is returned by the restart scenario's hook when QEMU exits
// after the back-end came back.
var errQEMUDied = errors.New("QEMU exited after the back-end was killed and restarted")

func resExit(r *Result) int {
	if r == nil {
		return -1
	}
	return r.ExitCode
}

// TestVhostUserDaemonRestart: while the guest runs a write+fsync loop on a
// DAX file, the daemon is killed with SIGKILL and started again. The guest
// loop must go on without an I/O error, every record whose fsync returned
// in the guest must be in the host backing, and the stall is reported.
func TestVhostUserDaemonRestart(t *testing.T) {
	t.Parallel()
	q := needQEMU11(t)
	kit, err := GetKit(context.Background(), t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	initrd := guestbenchInitrd(t, kit)
	dir := t.TempDir()
	d := newDaemonProc(t, dir)
	backing := filepath.Join(dir, "backings", "vr.img")
	if _, err := d.cli("device", "create", "vr", "--backing", backing, "--size", "128M"); err != nil {
		t.Fatal(err)
	}
	vm := vhostVM(dir, "512M")
	vm.Script = seqlogScript
	var killedAt, restartedAt time.Time
	var ackAtKill, ackAtRestart int
	var flushesAfter float64 = -1
	vm.Started = func(ctx context.Context, vm *VM) error {
		c, err := attachAndStart(ctx, d, vm, map[string]string{"vr": "rp1"})
		if err != nil {
			return err
		}
		defer c.Close()
		acked := filepath.Join(vm.Share, "acked")
		if err := waitLines(ctx, acked, 40); err != nil {
			return err
		}
		ackAtKill = countLines(acked)
		killedAt = time.Now()
		d.kill()
		time.Sleep(2 * time.Second) // a real outage, not a blip
		if err := d.start(); err != nil {
			return fmt.Errorf("restarting the daemon: %w", err)
		}
		restartedAt = time.Now()
		ackAtRestart = countLines(acked)
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		go func() {
			select {
			case <-c.Done(): // QEMU exited: stop waiting at once
				cancel()
			case <-wctx.Done():
			}
		}()
		err = waitLines(wctx, acked, ackAtRestart+40)
		cancel()
		if err == nil {
			// A graceful restart (SIGTERM, as a service manager stops
			// it) must be just as invisible: the daemon leaves QEMU's
			// connection with the keeper instead of letting it go.
			if terr := d.term(); terr != nil {
				return terr
			}
			if err := d.start(); err != nil {
				return fmt.Errorf("starting the daemon after SIGTERM: %w", err)
			}
			ackAtTerm := countLines(acked)
			wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			go func() {
				select {
				case <-c.Done():
					cancel()
				case <-wctx.Done():
				}
			}()
			err = waitLines(wctx, acked, ackAtTerm+40)
			cancel()
			if err != nil {
				err = fmt.Errorf("after a SIGTERM restart: %w", err)
			}
		}
		flushesAfter = d.flushes("vr")
		os.WriteFile(filepath.Join(vm.Share, "stop"), nil, 0o644) //nolint:errcheck
		if err != nil {
			select {
			case <-c.Done():
				return errQEMUDied
			default:
			}
			return fmt.Errorf("guest loop did not continue after the daemon restart: %w", err)
		}
		<-c.Done()
		return nil
	}
	bctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := BootWith(bctx, kit, q, Accel(bctx, kit, t.Logf), vm, t.TempDir(), BootOptions{Initrd: initrd})
	if res != nil {
		saveConsoleOnFailure(t, t.Name(), res.Console)
	}
	if errors.Is(err, errQEMUDied) {
		// The VM is gone. What was acknowledged before the kill must
		// still be durable; then report how QEMU died.
		ab, _ := res.Read("acked")
		var lost, n int
		found, _, serr := scanRecords(backing)
		for _, l := range strings.Split(strings.TrimSpace(string(ab)), "\n") {
			if f := strings.Fields(l); len(f) == 2 {
				s, _ := strconv.ParseUint(f[0], 10, 64)
				n++
				if !found[s] {
					lost++
				}
			}
		}
		t.Logf("before the kill the guest acknowledged %d records; %d of them are missing from the host backing (scan error: %v)", n, lost, serr)
		if lost > 0 {
			t.Errorf("%d acknowledged records are not in the host backing", lost)
		}
		t.Fatalf("QEMU exited when the killed back-end was restarted: the guest and its loop are gone (stall: unbounded). QEMU said:\n%s", qemuSaid(res.Console))
	}
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("guest: %v (script exit %d)\n%s", err, resExit(res), tail(resConsole(res), 60))
	}

	sr, acked, lost := checkSeqlogDurable(t, res, backing)
	// The stall: the longest write+fsync, which spans the outage.
	stall := time.Duration(sr.MaxUs) * time.Microsecond
	outage := restartedAt.Sub(killedAt)
	t.Logf("daemon restart: %d records acknowledged (%d before the kill, %d by the restart), %d of them in the host backing; guest stalled %s in one write+fsync (record %d; p50 %.0f us), daemon down %s; flushes counted by the new daemon: %v",
		len(acked), ackAtKill, ackAtRestart, len(acked)-len(lost), stall.Round(time.Millisecond), sr.MaxAtSeq, sr.P50us, outage.Round(time.Millisecond), flushesAfter)
	if flushesAfter <= 0 {
		t.Errorf("the restarted daemon counted no flushes (%v): the guest's fsyncs did not reach it", flushesAfter)
	}
	if stall < outage/2 {
		// The guest cannot have flushed while nothing served the queue.
		t.Errorf("longest guest write+fsync %s is shorter than the daemon's outage %s: a flush completed without a back-end?", stall, outage)
	}
}

// checkSeqlogDurable reads a guestbench seqlog run's results from the
// guest's share (its summary, the host-side ack log, dmesg) and checks
// that every record the guest acknowledged after fsync is intact in the
// host backing. It returns the summary, the acknowledged sequence numbers
// and those missing from the backing (each already reported).
func checkSeqlogDurable(t *testing.T, res *Result, backing string) (sr seqlogResult, acked, lost []uint64) {
	t.Helper()
	b, _ := res.Read("seqlog.json")
	if err := json.Unmarshal(b, &sr); err != nil {
		t.Fatalf("guest seqlog result %q: %v", b, err)
	}
	if dm, _ := res.Read("dmesg.txt"); bytes.Contains(bytes.ToLower(dm), []byte("error")) {
		t.Errorf("guest kernel reported errors:\n%s", dm)
	}
	ab, _ := res.Read("acked")
	for _, l := range strings.Split(strings.TrimSpace(string(ab)), "\n") {
		f := strings.Fields(l)
		if len(f) != 2 {
			continue
		}
		s, _ := strconv.ParseUint(f[0], 10, 64)
		acked = append(acked, s)
	}
	if uint64(len(acked)) != sr.Records || len(acked) == 0 {
		t.Fatalf("ack log has %d records, guest reports %d", len(acked), sr.Records)
	}
	found, torn, err := scanRecords(backing)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range acked {
		if !found[s] {
			lost = append(lost, s)
		}
	}
	if len(lost) > 0 {
		t.Errorf("%d of %d acknowledged records are not in the host backing (first: %v); torn blocks: %d",
			len(lost), len(acked), lost[:min(10, len(lost))], torn)
	}
	return sr, acked, lost
}

// qemuSaid returns the lines QEMU itself printed on the console.
func qemuSaid(console string) string {
	var said []string
	for _, l := range strings.Split(console, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "qemu-system-x86_64: ") {
			said = append(said, strings.TrimSpace(l))
		}
	}
	return strings.Join(said, "\n")
}

// describeBacking says what a backing holds, for a failure message: its
// size, whether an ext4 superblock is at offset 1024 and where the
// pattern's first 4 KiB are, if anywhere.
func describeBacking(host, pattern []byte) string {
	var nz int
	for _, c := range host {
		if c != 0 {
			nz++
		}
	}
	ext4 := len(host) > 1082 && host[1080] == 0x53 && host[1081] == 0xef
	at := bytes.Index(host, pattern[:4096])
	return fmt.Sprintf("%d bytes, %d non-zero, ext4 superblock at 1024: %v, the pattern's first 4 KiB at offset %d", len(host), nz, ext4, at)
}
