package vhostuser

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// shortMemfd returns a memfd of size bytes.
func shortMemfd(t *testing.T, size int64) int {
	t.Helper()
	fd, err := unix.MemfdCreate("short", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Ftruncate(fd, size); err != nil {
		t.Fatal(err)
	}
	return fd
}

// TestShortDescriptorRefused: a memory region or an inflight area whose
// descriptor's file ends before the range the front-end declares is
// refused with an error giving both sizes. Before the check the mapping
// succeeded and the first ring access past the file's end raised SIGBUS
// and killed the back-end (found by FuzzReplayJournal; the same messages
// arrive from a live front-end).
func TestShortDescriptorRefused(t *testing.T) {
	fd := shortMemfd(t, 64<<10)
	_, err := mapRegion(MemRegion{GPA: 0x100000, Size: 1 << 20, UserAddr: 0x7f0000000000}, fd)
	if err == nil || !strings.Contains(err.Error(), "has 65536 bytes, the mapping needs 1048576") || !strings.Contains(err.Error(), "gpa 0x100000") {
		t.Fatalf("1 MiB region from a 64 KiB memfd: %v", err)
	}
	// The mmap offset counts: the region ends at offset + size.
	_, err = mapRegion(MemRegion{GPA: 0, Size: 60 << 10, MmapOffset: 8 << 10}, fd)
	if err == nil || !strings.Contains(err.Error(), "the mapping needs 69632") {
		t.Fatalf("region past the end through its mmap offset: %v", err)
	}
	// Exactly covered: mapped.
	r, err := mapRegion(MemRegion{GPA: 0, Size: 56 << 10, MmapOffset: 8 << 10}, fd)
	if err != nil {
		t.Fatal(err)
	}
	r.data[len(r.data)-1] = 1 // the last byte is backed
	r.release()

	srv, err := NewServer(replayDev{}, quietKeeperLog())
	if err != nil {
		t.Fatal(err)
	}
	sess := &session{srv: srv, log: srv.log, inflightFd: -1, queues: []*queue{{index: 0}}}
	sess.queues[0].s = sess
	err = sess.setInflightFd(InflightPayload{MmapSize: 1 << 20, NumQueues: 1, QueueSize: 256}, fd)
	if err == nil || !strings.Contains(err.Error(), "has 65536 bytes, the mapping needs 1048576") {
		t.Fatalf("1 MiB inflight area from a 64 KiB memfd: %v", err)
	}
	if sess.inflight != nil {
		t.Fatal("a refused inflight area was installed")
	}
	if err := sess.setInflightFd(InflightPayload{MmapSize: 64 << 10, NumQueues: 1, QueueSize: 256}, fd); err != nil {
		t.Fatalf("a covered inflight area: %v", err)
	}
	sess.dropInflight()
}
