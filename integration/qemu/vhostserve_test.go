//go:build integration

package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nvdimm-backend/nvdimm-backend/qmp"
)

// serveCmd is one standalone `nvdimm-backend vhost-user serve --json`
// process; its stderr (and the header of each start) goes to log.
type serveCmd struct {
	t      *testing.T
	cmd    *exec.Cmd
	recs   chan json.RawMessage
	exited chan struct{}
}

// serveRecord holds the fields of serve's start and stop records that the
// test reads.
type serveRecord struct {
	Keeper     string `json:"keeper"`
	TakeOver   bool   `json:"take_over"`
	Flushes    uint64 `json:"flushes"`
	ShmemMaps  uint64 `json:"shmem_maps"`
	Connection string `json:"connection"`
}

// startServeCmd starts serve on sock for backing and returns once its
// start record says it listens.
func startServeCmd(t *testing.T, log *os.File, sock, backing string) (*serveCmd, serveRecord, error) {
	fmt.Fprintf(log, "=== serve started at %s\n", time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(ourBinary(t), "--log-level", "debug", "--json", "vhost-user", "serve", "--socket", sock, "--backing", backing)
	r, w, err := os.Pipe()
	if err != nil {
		return nil, serveRecord{}, err
	}
	cmd.Stdout, cmd.Stderr = w, log
	if err := cmd.Start(); err != nil {
		w.Close()
		r.Close()
		return nil, serveRecord{}, err
	}
	w.Close()
	s := &serveCmd{t: t, cmd: cmd, recs: make(chan json.RawMessage, 4), exited: make(chan struct{})}
	go func() {
		defer r.Close()
		defer close(s.recs)
		dec := json.NewDecoder(r)
		for {
			var m json.RawMessage
			if dec.Decode(&m) != nil {
				return
			}
			fmt.Fprintf(log, "=== record %s\n", m)
			s.recs <- m
		}
	}()
	go func() { cmd.Wait(); close(s.exited) }() //nolint:errcheck
	t.Cleanup(s.kill)
	rec, err := s.record(20 * time.Second)
	return s, rec, err
}

func (s *serveCmd) record(within time.Duration) (serveRecord, error) {
	var rec serveRecord
	select {
	case m, ok := <-s.recs:
		if !ok {
			return rec, errors.New("serve exited without its record (see serve.log)")
		}
		return rec, json.Unmarshal(m, &rec)
	case <-time.After(within):
		return rec, fmt.Errorf("no record from serve within %s", within)
	}
}

func (s *serveCmd) kill() {
	s.cmd.Process.Kill() //nolint:errcheck
	<-s.exited
}

// term sends SIGTERM and returns serve's stop record.
func (s *serveCmd) term() (serveRecord, error) {
	s.cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck
	select {
	case <-s.exited:
	case <-time.After(time.Minute):
		s.kill()
		return serveRecord{}, errors.New("serve did not exit within a minute of SIGTERM")
	}
	return s.record(time.Second)
}

// keeperRunning says whether a process accepts on the keeper socket.
func keeperRunning(kpath string) bool {
	c, err := net.Dial("unix", kpath)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// TestVhostUserServeRestart: the standalone `vhost-user serve` (no daemon)
// serves a virtio-pmem device to QEMU 11.1 started with its printed
// -chardev/-device options. While the guest runs a write+fsync loop on a
// DAX file, serve is killed with SIGKILL and started again, then stopped
// with SIGTERM and started again: its keeper holds QEMU's connection in
// between, so the loop goes on without an I/O error, every record whose
// fsync returned in the guest is in the host backing, the restarted
// serves take the session over (no second SHMEM_MAP) and answer flushes,
// and the keeper exits when QEMU does.
func TestVhostUserServeRestart(t *testing.T) {
	t.Parallel()
	q := needQEMU11(t)
	kit, err := GetKit(context.Background(), t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	initrd := guestbenchInitrd(t, kit)
	dir := t.TempDir()
	backing, sock := filepath.Join(dir, "vs.img"), filepath.Join(dir, "pmem.sock")
	kpath := sock + ".keeper"
	host(t, "create", backing, "--size", "128M")
	logf, err := os.Create(filepath.Join(dir, "serve.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("serve log:\n%s", tail(string(b), 80))
			kb, _ := os.ReadFile(kpath + ".log")
			t.Logf("keeper log:\n%s", tail(string(kb), 30))
		}
	})
	var (
		mu  sync.Mutex
		cur *serveCmd
	)
	setCur := func(s *serveCmd) { mu.Lock(); cur = s; mu.Unlock() }
	first, rec, err := startServeCmd(t, logf, sock, backing)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Keeper != kpath || rec.TakeOver {
		t.Fatalf("first start record %+v", rec)
	}
	setCur(first)

	vm := &VM{
		Memory: "512M",
		ExtraArgs: []string{
			"-object", "memory-backend-memfd,id=ram,size=512M,share=on",
			"-machine", "memory-backend=ram",
			"-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1",
			"-chardev", "socket,id=pmem0,path=" + sock,
			"-device", "vhost-user-test-device-pci,chardev=pmem0,virtio-id=27,num_vqs=1,config_size=16,bus=rp1",
			"-qmp", "unix:" + filepath.Join(dir, "qmp-test.sock") + ",server=on,wait=off",
		},
	}
	vm.Script = seqlogScript
	var killedAt, restartedAt time.Time
	var ackAtKill, ackAtRestart int
	var afterKill, afterTerm serveRecord
	vm.Started = func(ctx context.Context, vm *VM) error {
		ctl := filepath.Join(dir, "qmp-test.sock")
		if err := waitFile(ctx, ctl); err != nil {
			return err
		}
		c, err := qmp.Dial(ctx, ctl)
		if err != nil {
			return err
		}
		defer c.Close()
		// waitGuest waits for n more acknowledged records, or QEMU's exit.
		acked := filepath.Join(vm.Share, "acked")
		waitGuest := func(n int) error {
			wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			defer cancel()
			go func() {
				select {
				case <-c.Done():
					cancel()
				case <-wctx.Done():
				}
			}()
			err := waitLines(wctx, acked, n)
			if err != nil {
				select {
				case <-c.Done():
					return errQEMUDied
				default:
				}
			}
			return err
		}
		if err := waitGuest(40); err != nil {
			return err
		}
		if !keeperRunning(kpath) {
			return errors.New("no keeper is running while QEMU is connected")
		}
		ackAtKill = countLines(acked)
		killedAt = time.Now()
		first.kill()
		time.Sleep(2 * time.Second) // a real outage, not a blip
		if !keeperRunning(kpath) {
			return errors.New("the keeper did not outlive the killed serve")
		}
		second, rec, err := startServeCmd(t, logf, sock, backing)
		if err != nil {
			return fmt.Errorf("restarting serve: %w", err)
		}
		setCur(second)
		restartedAt = time.Now()
		if !rec.TakeOver {
			return fmt.Errorf("the restarted serve did not find the keeper: %+v", rec)
		}
		ackAtRestart = countLines(acked)
		if err := waitGuest(ackAtRestart + 40); err != nil {
			return fmt.Errorf("guest loop after serve was killed and restarted: %w", err)
		}
		// A graceful stop (SIGTERM, as a service manager stops it)
		// leaves the connection with the keeper for the next serve.
		if afterKill, err = second.term(); err != nil {
			return err
		}
		if afterKill.Connection != "kept" {
			return fmt.Errorf("SIGTERM stop record %+v: the connection was not left with the keeper", afterKill)
		}
		third, rec, err := startServeCmd(t, logf, sock, backing)
		if err != nil {
			return fmt.Errorf("starting serve after SIGTERM: %w", err)
		}
		setCur(third)
		if !rec.TakeOver {
			return fmt.Errorf("serve after SIGTERM did not find the keeper: %+v", rec)
		}
		if err := waitGuest(countLines(acked) + 40); err != nil {
			return fmt.Errorf("guest loop after a SIGTERM restart of serve: %w", err)
		}
		os.WriteFile(filepath.Join(vm.Share, "stop"), nil, 0o644) //nolint:errcheck
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
		t.Fatalf("QEMU exited while serve was restarted. QEMU said:\n%s", qemuSaid(res.Console))
	}
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("guest: %v (script exit %d)\n%s", err, resExit(res), tail(resConsole(res), 60))
	}
	// QEMU is gone: the keeper lets go by itself, and the last serve has
	// no connection to keep.
	for deadline := time.Now().Add(10 * time.Second); keeperRunning(kpath); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the keeper still runs 10 s after QEMU exited")
		}
	}
	mu.Lock()
	last := cur
	mu.Unlock()
	if afterTerm, err = last.term(); err != nil {
		t.Fatal(err)
	}
	if afterTerm.Connection != "none" {
		t.Errorf("last serve's stop record %+v: want connection none (QEMU gone, keeper exited)", afterTerm)
	}

	sr, acked, lost := checkSeqlogDurable(t, res, backing)
	for _, r := range []struct {
		who string
		rec serveRecord
	}{{"the serve restarted after SIGKILL", afterKill}, {"the serve restarted after SIGTERM", afterTerm}} {
		if r.rec.Flushes == 0 {
			t.Errorf("%s answered no flushes: the guest's fsyncs did not reach it (%+v)", r.who, r.rec)
		}
		if r.rec.ShmemMaps != 0 {
			t.Errorf("%s sent SHMEM_MAP %d times; QEMU still had the region mapped", r.who, r.rec.ShmemMaps)
		}
	}
	stall := time.Duration(sr.MaxUs) * time.Microsecond
	outage := restartedAt.Sub(killedAt)
	t.Logf("serve restart: %d records acknowledged (%d before the kill, %d by the restart), %d of them in the host backing; guest stalled %s in one write+fsync (record %d; p50 %.0f us), serve down %s; flushes answered by the serve restarted after SIGKILL: %d, after SIGTERM: %d",
		len(acked), ackAtKill, ackAtRestart, len(acked)-len(lost), stall.Round(time.Millisecond), sr.MaxAtSeq, sr.P50us, outage.Round(time.Millisecond), afterKill.Flushes, afterTerm.Flushes)
	if stall < outage/2 {
		t.Errorf("longest guest write+fsync %s is shorter than serve's outage %s: a flush completed without a back-end?", stall, outage)
	}
}
