package flushhint

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkEngineOverhead measures the engine's own cost per request with
// a sync that does nothing, from 1 to 64 concurrent callers.
func BenchmarkEngineOverhead(b *testing.B) {
	for _, p := range []int{1, 4, 16, 64} {
		b.Run(fmt.Sprintf("flushers=%d", p), func(b *testing.B) {
			e, err := NewEngine("bench", None("benchmark"), Options{Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			defer e.Close()
			ctx := context.Background()
			runFlushers(b, p, func() error { return e.Flush(ctx) })
			st := e.Stats()
			b.ReportMetric(float64(st.Syncs)/float64(st.Requests), "syncs/op")
		})
	}
}

func benchFile(b *testing.B) *os.File {
	f, err := os.CreateTemp(".", ".bench-flushhint-")
	if err != nil {
		b.Fatal(err)
	}
	os.Remove(f.Name())
	b.Cleanup(func() { f.Close() })
	if _, err := f.WriteAt(make([]byte, 1<<20), 0); err != nil {
		b.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	return f
}

// BenchmarkFdatasync compares one fdatasync per request ("direct") with
// the engine's group commit on a real file in the package directory, each
// request first rewriting 4 KiB of the file.
func BenchmarkFdatasync(b *testing.B) {
	for _, p := range []int{1, 16} {
		for _, mode := range []string{"direct", "engine"} {
			b.Run(fmt.Sprintf("%s/flushers=%d", mode, p), func(b *testing.B) {
				f := benchFile(b)
				e, err := NewEngine("bench", ForFile(f), Options{Logger: slog.New(slog.DiscardHandler)})
				if err != nil {
					b.Fatal(err)
				}
				defer e.Close()
				fd := int(f.Fd())
				var slot atomic.Int64
				ctx := context.Background()
				buf := make([]byte, 4096)
				runFlushers(b, p, func() error {
					off := (slot.Add(1) % 256) * 4096
					if _, err := unix.Pwrite(fd, buf, off); err != nil {
						return err
					}
					if mode == "direct" {
						return unix.Fdatasync(fd)
					}
					return e.Flush(ctx)
				})
			})
		}
	}
}

// runFlushers runs op b.N times in all, from exactly p goroutines.
func runFlushers(b *testing.B, p int, op func() error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for g := 0; g < p; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if err := op(); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
