package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvdimm-backend/nvdimm-backend/vhostuser"
	"github.com/nvdimm-backend/nvdimm-backend/vhostuser/frontend"
	"github.com/nvdimm-backend/nvdimm-backend/vhostuser/pmem"
)

// TestCLIVhostUserServe serves a backing with --no-keeper (the verb as it
// was before keepers), drives one flush through the socket with the test
// front-end, stops the verb and checks both --json records: no keeper
// was started and the connection closed with the verb.
func TestCLIVhostUserServe(t *testing.T) {
	dir := t.TempDir()
	p, sock := filepath.Join(dir, "p.img"), filepath.Join(dir, "p.sock")
	if _, err := runMemfileCLI(t, "create", p, "--size", "4M"); err != nil {
		t.Fatal(err)
	}
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs([]string{"vhost-user", "serve", "--socket", sock, "--backing", p, "--no-keeper", "--json", "--log-level", "error"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("socket never appeared")
		}
	}
	f, err := frontend.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Realize(vhostuser.ProtoReplyAck|vhostuser.ProtoConfig|vhostuser.ProtoBackendReq|vhostuser.ProtoShmem, 1); err != nil {
		t.Fatal(err)
	}
	const ram = 0x100000
	f.AddRegion(ram, 0x100000)
	vq, err := f.NewVring(0, 64, ram)
	if err != nil {
		t.Fatal(err)
	}
	defer vq.Close()
	feat := uint64(vhostuser.FeatureVersion1 | vhostuser.FeatureProtocolFeatures | 1)
	if err := f.Ack(vhostuser.ReqSetFeatures, frontend.U64(feat), nil); err != nil {
		t.Fatal(err)
	}
	m, err := f.ReadBackendRequest(0)
	if err != nil || m.Req.Len != 4<<20 {
		t.Fatalf("SHMEM_MAP %+v, %v", m.Req, err)
	}
	if err := f.SetMemTable(); err != nil {
		t.Fatal(err)
	}
	if err := vq.Setup(0, true); err != nil {
		t.Fatal(err)
	}
	vq.SetDesc(0, frontend.Desc{Addr: ram + 0x80000, Len: 4, Flags: frontend.DescNext, Next: 1})
	vq.SetDesc(1, frontend.Desc{Addr: ram + 0x80010, Len: 4, Flags: frontend.DescWrite})
	vq.Publish(0)
	vq.Kicked()
	if used, err := vq.WaitUsed(1, 10*time.Second); err != nil || used[0].Len != 4 {
		t.Fatalf("flush: %+v, %v", used, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve: %v (%s)", err, errOut.String())
	}
	dec := json.NewDecoder(&out)
	var info vhostUserServeInfo
	var res vhostUserServeStats
	if err := dec.Decode(&info); err != nil {
		t.Fatal(err)
	}
	if err := dec.Decode(&res); err != nil {
		t.Fatal(err)
	}
	if info.Socket != sock || info.Size != 4<<20 || info.Flush != "fdatasync" || !strings.Contains(strings.Join(info.QEMUArgs, " "), "virtio-id=27") {
		t.Fatalf("start record %+v", info)
	}
	if res.Flushes != 1 || res.Requests != 1 || res.Syncs < 1 || res.ShmemMaps != 1 || res.Connection != connClosed || res.KeeperPID != 0 {
		t.Fatalf("stop record %+v", res)
	}
	if info.Keeper != "" || info.TakeOver {
		t.Fatalf("--no-keeper start record names a keeper: %+v", info)
	}
	for _, suffix := range []string{".keeper", ".keeper.json", ".keeper.log"} {
		if _, err := os.Lstat(sock + suffix); err == nil {
			t.Errorf("--no-keeper left %s", sock+suffix)
		}
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket left behind: %v", err)
	}
}

func TestCLIVhostUserServeRefusals(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "odd.img")
	if _, err := runMemfileCLI(t, "create", p, "--size", "6M"); err != nil {
		t.Fatal(err)
	}
	_, err := runMemfileCLI(t, "vhost-user", "serve", "--socket", filepath.Join(dir, "s"), "--backing", p)
	if err == nil || !strings.Contains(err.Error(), "not a power of two") {
		t.Fatalf("6 MiB backing: %v", err)
	}
	if _, err := runMemfileCLI(t, "vhost-user", "serve", "--backing", p); err == nil || !strings.Contains(err.Error(), "--socket") {
		t.Fatalf("missing --socket: %v", err)
	}
	if _, err := runMemfileCLI(t, "vhost-user", "serve", "--socket", filepath.Join(dir, "s"), "--backing", p, "--no-keeper", "--release"); err == nil || !strings.Contains(err.Error(), "--release") {
		t.Fatalf("--release with --no-keeper: %v", err)
	}
	// In a test binary there is no program to run as the keeper: the
	// default (keeper) mode says so instead of serving without one.
	good := filepath.Join(dir, "good.img")
	if _, err := runMemfileCLI(t, "create", good, "--size", "4M"); err != nil {
		t.Fatal(err)
	}
	if _, err := runMemfileCLI(t, "vhost-user", "serve", "--socket", filepath.Join(dir, "s"), "--backing", good); err == nil || !strings.Contains(err.Error(), "--no-keeper") {
		t.Fatalf("keeper mode without a keeper command: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "s")); err == nil {
		t.Error("a refused serve created its socket")
	}
}

// TestCLIVhostUserServeRefusesLabelledBacking: like qemu-args
// --virtio-pmem, serve refuses a backing with a label area (here with a
// live fsdax namespace): virtio-pmem has no labels, so the guest would
// read the namespace's raw bytes as its device. The socket is not made.
func TestCLIVhostUserServeRefusesLabelledBacking(t *testing.T) {
	p := newBacking(t) // 64 MiB guest, 128 KiB label area
	cli(t, "label", "init", p)
	cli(t, "label", "create", p, "--name", "db", "--size", "16M", "--mode", "fsdax", "--slot", "0")
	if _, err := runMemfileCLI(t, "qemu-args", p, "--virtio-pmem"); err == nil || !strings.Contains(err.Error(), "label area") {
		t.Fatalf("qemu-args --virtio-pmem: %v", err)
	}
	sock := filepath.Join(t.TempDir(), "s")
	_, err := runMemfileCLI(t, "vhost-user", "serve", "--socket", sock, "--backing", p)
	if err == nil || !strings.Contains(err.Error(), "128 KiB label area") || !strings.Contains(err.Error(), p) {
		t.Fatalf("vhost-user serve of a labelled backing: %v", err)
	}
	if _, err := os.Lstat(sock); err == nil {
		t.Error("the refused serve created its socket")
	}
}

// cliHelperEnv makes TestCLIHelperProcess act as the nvdimm-backend
// program, so that the serve tests can run, kill -9 and restart real
// processes (and those processes can run their keeper the same way).
const cliHelperEnv = "NVDIMM_BACKEND_CLI_HELPER"

// TestCLIHelperProcess is the program, not a test: it runs the arguments
// after "--" as nvdimm-backend and exits (skipped in a normal run).
func TestCLIHelperProcess(t *testing.T) {
	if os.Getenv(cliHelperEnv) != "1" {
		t.Skip("runs only as the CLI subprocess of the serve tests")
	}
	args := os.Args
	for i, a := range args {
		if a == "--" {
			args = args[i+1:]
			break
		}
	}
	serveKeeperCommand = append(helperCommand(), "vhost-user-keeper")
	root := newRootCmd()
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "nvdimm-backend:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// helperCommand runs this test binary as the program.
func helperCommand() []string {
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	return []string{exe, "-test.run=^TestCLIHelperProcess$", "--"}
}

// serveProc is one `vhost-user serve --json` subprocess.
type serveProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	recs   chan json.RawMessage
	exited chan struct{}
	stderr string
	code   int
}

func startServeProc(t *testing.T, args ...string) *serveProc {
	t.Helper()
	hc := helperCommand()
	cmd := exec.Command(hc[0], append(append(hc[1:], "vhost-user", "serve", "--json", "--log-level", "debug"), args...)...)
	cmd.Env = append(os.Environ(), cliHelperEnv+"=1")
	ef, err := os.CreateTemp(t.TempDir(), "serve-stderr-")
	if err != nil {
		t.Fatal(err)
	}
	defer ef.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = w, ef
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	p := &serveProc{t: t, cmd: cmd, recs: make(chan json.RawMessage, 4), exited: make(chan struct{}), stderr: ef.Name()}
	go func() {
		defer r.Close()
		defer close(p.recs)
		dec := json.NewDecoder(r)
		for {
			var m json.RawMessage
			if dec.Decode(&m) != nil {
				return
			}
			p.recs <- m
		}
	}()
	go func() {
		err := cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			p.code = ee.ExitCode()
		}
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill() //nolint:errcheck
		<-p.exited
		if t.Failed() {
			b, _ := os.ReadFile(p.stderr)
			t.Logf("serve %v stderr:\n%s", args, b)
		}
	})
	return p
}

// record decodes the process's next --json record into v.
func (p *serveProc) record(v any) {
	p.t.Helper()
	select {
	case m, ok := <-p.recs:
		if !ok {
			<-p.exited
			b, _ := os.ReadFile(p.stderr)
			p.t.Fatalf("serve exited (status %d) without a record:\n%s", p.code, b)
		}
		if err := json.Unmarshal(m, v); err != nil {
			p.t.Fatalf("record %s: %v", m, err)
		}
	case <-time.After(20 * time.Second):
		p.t.Fatal("no record from serve within 20 s")
	}
}

// stop sends sig and waits for the exit status.
func (p *serveProc) stop(sig syscall.Signal) int {
	p.t.Helper()
	p.cmd.Process.Signal(sig) //nolint:errcheck
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		p.t.Fatalf("serve did not exit within 20 s of %v", sig)
	}
	return p.code
}

func (p *serveProc) stderrText() string {
	b, _ := os.ReadFile(p.stderr)
	return string(b)
}

// feRig is a test front-end on a serve socket, set up as QEMU does it:
// realized, one ring started, SHMEM_MAP received (its descriptor kept
// open, as QEMU keeps its mapping).
type feRig struct {
	t    *testing.T
	f    *frontend.Frontend
	vq   *frontend.Vring
	next uint16
}

const feRAM = 0x100000

func connectFrontend(t *testing.T, sock string) *feRig {
	t.Helper()
	f, err := frontend.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	r := &feRig{t: t, f: f}
	var mapFds []int
	t.Cleanup(func() {
		if r.vq != nil {
			r.vq.Close()
		}
		f.Close()
		for _, fd := range mapFds {
			unix.Close(fd)
		}
	})
	if _, err := f.Realize(vhostuser.ProtoReplyAck|vhostuser.ProtoConfig|vhostuser.ProtoBackendReq|vhostuser.ProtoShmem, 1); err != nil {
		t.Fatal(err)
	}
	f.AddRegion(feRAM, 0x100000)
	if r.vq, err = f.NewVring(0, 64, feRAM); err != nil {
		t.Fatal(err)
	}
	if err := f.Ack(vhostuser.ReqSetFeatures, frontend.U64(vhostuser.FeatureVersion1|vhostuser.FeatureProtocolFeatures|1), nil); err != nil {
		t.Fatal(err)
	}
	m, err := f.ReadBackendRequest(0)
	mapFds = m.Fds
	if err != nil || vhostuser.BackendRequestType(m.Header.Request) != vhostuser.BackendShmemMap || len(m.Fds) != 1 || m.Req.Len != 4<<20 {
		t.Fatalf("SHMEM_MAP %+v, %v", m, err)
	}
	if err := f.SetMemTable(); err != nil {
		t.Fatal(err)
	}
	if err := r.vq.Setup(0, true); err != nil {
		t.Fatal(err)
	}
	return r
}

// publishFlush puts the next flush request (descriptors 2i, 2i+1) in the
// ring and kicks; its response word starts as 0x55555555.
func (r *feRig) publishFlush() uint16 {
	i := r.next
	r.next++
	req, resp := feRAM+0x80000+16*uint64(i), feRAM+0x80008+16*uint64(i)
	binary.LittleEndian.PutUint32(r.f.Mem(req, 4), 0) // VIRTIO_PMEM_REQ_TYPE_FLUSH
	binary.LittleEndian.PutUint32(r.f.Mem(resp, 4), 0x55555555)
	r.vq.SetDesc(2*i, frontend.Desc{Addr: req, Len: 4, Flags: frontend.DescNext, Next: 2*i + 1})
	r.vq.SetDesc(2*i+1, frontend.Desc{Addr: resp, Len: 4, Flags: frontend.DescWrite})
	r.vq.Publish(2 * i)
	r.vq.Kicked()
	return i
}

// flushAnswered waits for request i's used element and checks it was
// answered OK.
func (r *feRig) flushAnswered(i uint16) {
	r.t.Helper()
	used, err := r.vq.WaitUsed(1, 10*time.Second)
	if err != nil || len(used) != 1 || used[0].ID != uint32(2*i) || used[0].Len != 4 {
		r.t.Fatalf("flush %d: used %+v, %v", i, used, err)
	}
	if ret := binary.LittleEndian.Uint32(r.f.Mem(feRAM+0x80008+16*uint64(i), 4)); ret != 0 {
		r.t.Fatalf("flush %d answered %#x, want 0", i, ret)
	}
}

// noBackendRequest checks that nothing arrives on the back-end channel
// for a moment: a server that took the session over must not map the
// shared memory again (QEMU still has it mapped).
func (r *feRig) noBackendRequest() {
	r.t.Helper()
	r.f.Timeout = 300 * time.Millisecond
	defer func() { r.f.Timeout = 5 * time.Second }()
	if m, err := r.f.ReadBackendRequest(0); err == nil {
		r.t.Fatalf("the server sent %#x on the back-end channel after the takeover", m.Header.Request)
	}
}

// hungUp reports whether the back-end side of the front-end's connection
// is closed (every back-end process and the keeper let it go).
func (r *feRig) hungUp(within time.Duration) bool {
	r.f.Conn.SetReadDeadline(time.Now().Add(within))
	defer r.f.Conn.SetReadDeadline(time.Time{})
	_, err := r.f.Conn.Read(make([]byte, 1))
	return errors.Is(err, io.EOF)
}

// TestCLIVhostUserServeKeeperRestart: serve (a real process) keeps the
// front-end's connection in a keeper. It is killed with SIGKILL while a
// flush is pending; a serve of another backing on the socket is refused
// while the keeper runs; serve started again with the same backing takes
// the session over: the pending flush and a new one are answered and no
// second SHMEM_MAP is sent. SIGTERM leaves the connection with the keeper
// ("kept"), a --release serve takes it over again and on SIGTERM lets it
// go ("released": the front-end sees the back-end leave, the keeper
// exits).
func TestCLIVhostUserServeKeeperRestart(t *testing.T) {
	dir := t.TempDir()
	p, other, sock := filepath.Join(dir, "p.img"), filepath.Join(dir, "other.img"), filepath.Join(dir, "p.sock")
	kpath := sock + ".keeper"
	for _, b := range []string{p, other} {
		if _, err := runMemfileCLI(t, "create", b, "--size", "4M"); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if pid, ok := vhostuser.KeeperPID(kpath); ok && pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL) //nolint:errcheck
		}
	})
	s1 := startServeProc(t, "--socket", sock, "--backing", p)
	var info vhostUserServeInfo
	s1.record(&info)
	if info.Keeper != kpath || info.TakeOver {
		t.Fatalf("first start record %+v", info)
	}
	r := connectFrontend(t, sock)
	r.flushAnswered(r.publishFlush())
	kpid, ok := vhostuser.KeeperPID(kpath)
	if !ok || kpid <= 0 {
		t.Fatalf("no keeper on %s after a front-end connected (pid %d)", kpath, kpid)
	}
	rec, err := os.ReadFile(kpath + ".json")
	if err != nil {
		t.Fatal(err)
	}
	if kr, err := pmem.ParseKeeperRecord(kpath+".json", rec); err != nil || kr.Backing != p || kr.Size != 4<<20 {
		t.Fatalf("keeper record %+v, %v", kr, err)
	}

	// A crash with a flush pending.
	pending := r.publishFlush()
	s1.cmd.Process.Kill() //nolint:errcheck
	<-s1.exited
	if _, ok := vhostuser.KeeperPID(kpath); !ok {
		t.Fatal("the keeper died with serve")
	}
	if r.hungUp(100 * time.Millisecond) {
		t.Fatal("the front-end saw the back-end leave when serve was killed")
	}

	bad := startServeProc(t, "--socket", sock, "--backing", other)
	if code := bad.stop(0); code != 1 || !strings.Contains(bad.stderrText(), "refusing to serve "+other) || !strings.Contains(bad.stderrText(), "for backing "+p) {
		t.Fatalf("serve of another backing beside the keeper: status %d\n%s", code, bad.stderrText())
	}

	s2 := startServeProc(t, "--socket", sock, "--backing", p)
	s2.record(&info)
	if !info.TakeOver || info.KeeperPID != kpid {
		t.Fatalf("restart start record %+v, want a takeover from pid %d", info, kpid)
	}
	r.flushAnswered(pending)
	r.flushAnswered(r.publishFlush())
	r.noBackendRequest()

	// SIGTERM: the connection stays with the keeper.
	if code := s2.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("serve after SIGTERM: status %d\n%s", code, s2.stderrText())
	}
	var res vhostUserServeStats
	s2.record(&res)
	if res.Connection != connKept || res.KeeperPID != kpid || res.ShmemMaps != 0 || res.Flushes != 2 {
		t.Fatalf("stop record after SIGTERM %+v", res)
	}
	if r.hungUp(100 * time.Millisecond) {
		t.Fatal("the front-end saw the back-end leave at SIGTERM")
	}
	if _, err := os.Stat(kpath + ".json"); err != nil {
		t.Fatalf("keeper record gone while the keeper holds the connection: %v", err)
	}

	// --release: take over once more, then let go for good.
	s3 := startServeProc(t, "--socket", sock, "--backing", p, "--release")
	s3.record(&info)
	if !info.TakeOver || info.KeeperPID != kpid {
		t.Fatalf("--release start record %+v", info)
	}
	r.flushAnswered(r.publishFlush())
	if code := s3.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("--release serve after SIGTERM: status %d\n%s", code, s3.stderrText())
	}
	s3.record(&res)
	if res.Connection != connReleased || res.KeeperPID != kpid || res.Flushes != 1 {
		t.Fatalf("stop record with --release %+v", res)
	}
	if !r.hungUp(5 * time.Second) {
		t.Fatal("the front-end still has a back-end after the release")
	}
	if !vhostuser.KeeperGone(kpath, 5*time.Second) {
		t.Fatal("the keeper still runs after the release")
	}
	if _, err := os.Stat(kpath + ".json"); !os.IsNotExist(err) {
		t.Errorf("keeper record left after the release: %v", err)
	}
}

// TestCLIVhostUserServeKeeperExitsWithFrontend: the keeper ends when the
// front-end (QEMU) closes its connection, and serve, still running, then
// reports that it had no connection to keep.
func TestCLIVhostUserServeKeeperExitsWithFrontend(t *testing.T) {
	dir := t.TempDir()
	p, sock := filepath.Join(dir, "p.img"), filepath.Join(dir, "p.sock")
	kpath := sock + ".keeper"
	if _, err := runMemfileCLI(t, "create", p, "--size", "4M"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if pid, ok := vhostuser.KeeperPID(kpath); ok && pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL) //nolint:errcheck
		}
	})
	s := startServeProc(t, "--socket", sock, "--backing", p)
	var info vhostUserServeInfo
	s.record(&info)
	r := connectFrontend(t, sock)
	r.flushAnswered(r.publishFlush())
	if _, ok := vhostuser.KeeperPID(kpath); !ok {
		t.Fatal("no keeper after a front-end connected")
	}
	r.f.Conn.Close()
	if !vhostuser.KeeperGone(kpath, 10*time.Second) {
		t.Fatal("the keeper still runs after the front-end hung up")
	}
	if code := s.stop(syscall.SIGINT); code != 0 {
		t.Fatalf("serve after SIGINT: status %d\n%s", code, s.stderrText())
	}
	var res vhostUserServeStats
	s.record(&res)
	if res.Connection != connNone || res.KeeperPID != 0 || res.Connections != 1 || res.Flushes != 1 {
		t.Fatalf("stop record %+v", res)
	}
	if _, err := os.Stat(kpath + ".json"); !os.IsNotExist(err) {
		t.Errorf("keeper record left with no keeper: %v", err)
	}
}

// TestCLIVhostUserServeHumanExit: without --json, serve says where its
// keeper is and, on SIGTERM with no front-end, that there was nothing to
// keep, then ends with the counters (scripts show the last line).
func TestCLIVhostUserServeHumanExit(t *testing.T) {
	dir := t.TempDir()
	p, sock := filepath.Join(dir, "p.img"), filepath.Join(dir, "p.sock")
	if _, err := runMemfileCLI(t, "create", p, "--size", "4M"); err != nil {
		t.Fatal(err)
	}
	hc := helperCommand()
	cmd := exec.Command(hc[0], append(hc[1:], "vhost-user", "serve", "--socket", sock, "--backing", p, "--log-level", "error")...)
	cmd.Env = append(os.Environ(), cliHelperEnv+"=1")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill() //nolint:errcheck
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("socket never appeared: %s", errOut.String())
		}
	}
	cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck
	if err := cmd.Wait(); err != nil {
		t.Fatalf("serve: %v\n%s", err, errOut.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if !strings.Contains(out.String(), "keeper: "+sock+".keeper (SIGINT/SIGTERM leave QEMU's connection with it") ||
		len(lines) < 2 || lines[len(lines)-2] != "no front-end connection to keep" || !strings.HasPrefix(lines[len(lines)-1], "stopped: 0 connections") {
		t.Fatalf("output:\n%s", out.String())
	}
}
