package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nvdimm-backend/nvdimm-backend/vhostuser"
	"github.com/nvdimm-backend/nvdimm-backend/vhostuser/frontend"
)

// TestCLIVhostUserServe serves a backing, drives one flush through the
// socket with the test front-end, stops the verb and checks both --json
// records.
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
	root.SetArgs([]string{"vhost-user", "serve", "--socket", sock, "--backing", p, "--json", "--log-level", "error"})
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
	if res.Flushes != 1 || res.Requests != 1 || res.Syncs < 1 || res.ShmemMaps != 1 {
		t.Fatalf("stop record %+v", res)
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
