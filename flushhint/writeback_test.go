package flushhint

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// diskFile makes a file on a disk filesystem (the test's temp dir, or the
// package directory when that is tmpfs, where nothing is ever dirty).
func diskFile(t *testing.T, size int) *os.File {
	t.Helper()
	dir := t.TempDir()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err == nil && st.Type == unix.TMPFS_MAGIC {
		dir = "."
	}
	f, err := os.CreateTemp(dir, ".writeback-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close(); os.Remove(f.Name()) })
	if err := f.Truncate(int64(size)); err != nil {
		t.Fatal(err)
	}
	if err := unix.Statfs(filepath.Dir(f.Name()), &st); err == nil && st.Type == unix.TMPFS_MAGIC {
		t.Skip("only tmpfs available: pages are never dirty there")
	}
	return f
}

func TestMeasureNotDurable(t *testing.T) {
	f := diskFile(t, 1<<20)
	data := make([]byte, 256<<10)
	for i := range data {
		data[i] = byte(i)
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	nd, err := MeasureNotDurable(f)
	if err != nil {
		t.Fatal(err)
	}
	if nd.Source == SourceCachestat && nd.Bytes < 4096 {
		t.Fatalf("cachestat sees %d bytes not durable right after writing 256 KiB", nd.Bytes)
	}
	if nd.Bytes > 1<<20 {
		t.Fatalf("%d bytes not durable in a 1 MiB file", nd.Bytes)
	}
	// The mincore fallback is an upper bound: at least what was written
	// and is still resident, never more than the file.
	mc, err := measureNotDurable(f, true)
	if err != nil {
		t.Fatal(err)
	}
	if mc.Source != SourceMincore || mc.Bytes < nd.Bytes || mc.Bytes > 1<<20 {
		t.Fatalf("mincore %+v, cachestat %+v: want cachestat <= mincore <= file size", mc, nd)
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	after, err := MeasureNotDurable(f)
	if err != nil {
		t.Fatal(err)
	}
	if after.Source == SourceCachestat && after.Bytes != 0 {
		t.Fatalf("%d bytes not durable after fdatasync", after.Bytes)
	}
	// Errors name the file.
	g, _ := os.Open(os.DevNull)
	g.Close()
	if _, err := measureNotDurable(g, true); err == nil {
		t.Fatal("mincore of a closed file succeeded")
	}
}

func TestWritebackMakesWritesDurable(t *testing.T) {
	f := diskFile(t, 1<<20)
	nd, err := MeasureNotDurable(f)
	if err != nil {
		t.Fatal(err)
	}
	if nd.Source != SourceCachestat {
		t.Skip("no cachestat(2) on this kernel: dirtiness cannot be observed")
	}
	e := newEngine(t, ForFile(f), Options{Writeback: Writeback{Interval: 30 * time.Millisecond, File: f, SampleEvery: 10 * time.Millisecond}})
	m, err := unix.Mmap(int(f.Fd()), 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	for i := 0; i < 64<<10; i++ {
		m[i] = 0xA5
	}
	// The gauge sees the dirty data, and writeback makes it durable with
	// no flush request at all.
	sawDirty := false
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := e.Stats()
		if st.NotDurableBytes > 0 {
			sawDirty = true
		}
		if sawDirty && st.NotDurableBytes == 0 && st.Syncs > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("writeback did not make the data durable: %+v (saw dirty %v)", st, sawDirty)
		}
		time.Sleep(2 * time.Millisecond)
	}
	if st := e.Stats(); st.Requests != 0 || st.NotDurableSource != SourceCachestat {
		t.Fatalf("stats %+v: writeback syncs are not requests; source cachestat", st)
	}
}

// TestWritebackSharesGroupCommit checks writeback syncs go through the
// engine (counted, serialised with guest flushes) and stop on Close.
func TestWritebackSharesGroupCommit(t *testing.T) {
	s := &recStrategy{clk: &clock{}}
	e, err := NewEngine("dev0", s, Options{MaxInFlight: 1, Writeback: Writeback{Interval: 5 * time.Millisecond}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "3 writeback syncs", func() bool { return e.Stats().Syncs >= 3 })
	for i := 0; i < 20; i++ {
		if err := e.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	n := len(s.syncs())
	time.Sleep(20 * time.Millisecond)
	if m := len(s.syncs()); m != n {
		t.Fatalf("writeback kept syncing after Close: %d -> %d", n, m)
	}
	if s.overlap.Load() {
		t.Fatal("a writeback sync overlapped a flush sync")
	}
}
