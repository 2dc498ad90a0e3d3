// Command bench-flush compares the flush engine's group commit with one
// fdatasync per request (what QEMU's virtio-pmem does). N concurrent
// flushers each write 4 KiB into a shared mapping of one file and then
// flush; both modes run in one process on a file in a temporary directory
// on the filesystem of -dir, alternating, and the command prints per-case
// throughput and latency percentiles and the lines
// "flush speedup xN: R" (group commit over per-request throughput).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvdimm-backend/nvdimm-backend/flushhint"
)

const (
	writeSize = 4096
	fileSize  = 16 << 20
)

type result struct {
	ops     int
	elapsed time.Duration
	lat     []time.Duration
}

func (r *result) add(o result) {
	r.ops += o.ops
	r.elapsed += o.elapsed
	r.lat = append(r.lat, o.lat...)
}

func (r result) opsPerSec() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.ops) / r.elapsed.Seconds()
}

func (r result) pct(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	s := slices.Clone(r.lat)
	slices.Sort(s)
	i := int(p * float64(len(s)-1))
	return s[i]
}

func main() {
	dir := flag.String("dir", ".", "directory whose filesystem is measured (a temporary directory is made in it)")
	dur := flag.Duration("slice", 250*time.Millisecond, "duration of one run of one mode")
	reps := flag.Int("slices", 10, "runs per mode and flusher count (the modes alternate)")
	inflight := flag.Int("inflight", 0, "group commit: syncs allowed at once (0: the engine's default)")
	list := flag.String("flushers", "1,4,16,64", "comma-separated concurrent flusher counts")
	flag.Parse()
	var ns []int
	for _, s := range strings.Split(*list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 1024 {
			fmt.Fprintf(os.Stderr, "bench-flush: -flushers %q: want counts between 1 and 1024\n", *list)
			os.Exit(2)
		}
		ns = append(ns, n)
	}
	if *reps < 1 || *dur <= 0 {
		fmt.Fprintln(os.Stderr, "bench-flush: -slices and -slice must be positive")
		os.Exit(2)
	}
	if err := run(*dir, ns, *dur, *reps, *inflight); err != nil {
		fmt.Fprintln(os.Stderr, "bench-flush:", err)
		os.Exit(1)
	}
}

func fsName(dir string) (string, bool) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return "unknown", false
	}
	switch st.Type {
	case unix.TMPFS_MAGIC:
		return "tmpfs", true
	case unix.RAMFS_MAGIC:
		return "ramfs", true
	case unix.EXT4_SUPER_MAGIC:
		return "ext4 (or ext2/ext3)", false
	case unix.XFS_SUPER_MAGIC:
		return "xfs", false
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs", false
	}
	return fmt.Sprintf("type %#x", st.Type), false
}

func run(dir string, ns []int, dur time.Duration, reps, inflight int) error {
	tmp, err := os.MkdirTemp(dir, ".bench-flush-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		os.RemoveAll(tmp)
		os.Exit(130)
	}()

	name, memory := fsName(tmp)
	abs, _ := filepath.Abs(dir)
	fmt.Printf("bench-flush: file on %s (filesystem of %s), %d KiB writes, %d alternating runs of %v per mode and count\n", name, filepath.Base(abs), writeSize/1024, reps, dur)
	if memory {
		fmt.Printf("note: %s keeps files in memory, so fdatasync costs nothing there and the speedups below mean nothing; use -dir on a disk filesystem\n", name)
	}

	path := filepath.Join(tmp, "backing")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	// Write every block once, so the runs overwrite allocated blocks as a
	// guest does in a provisioned backing.
	block := make([]byte, 1<<20)
	for i := range block {
		block[i] = byte(i)
	}
	for off := int64(0); off < fileSize; off += int64(len(block)) {
		if _, err := f.WriteAt(block, off); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, fileSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	defer unix.Munmap(mem)

	fd := int(f.Fd())
	perRequest := func(context.Context) error { return unix.Fdatasync(fd) }
	eng, err := flushhint.NewEngine("bench", flushhint.ForFile(f), flushhint.Options{MaxInFlight: inflight})
	if err != nil {
		return err
	}
	defer eng.Close()

	// Warm up both paths.
	runCase(mem, 4, 200*time.Millisecond, perRequest)
	runCase(mem, 4, 200*time.Millisecond, eng.Flush)

	type pair struct {
		per, group result
		ratios     []float64 // group over per-request, per adjacent pair of runs
	}
	results := make([]pair, len(ns))
	for i, n := range ns {
		// The machine is shared: alternate the modes in short slices (ABBA)
		// so that load changing over time hits both alike.
		for r := 0; r < reps; r++ {
			var p, g result
			if r%2 == 0 {
				p = runCase(mem, n, dur, perRequest)
				g = runCase(mem, n, dur, eng.Flush)
			} else {
				g = runCase(mem, n, dur, eng.Flush)
				p = runCase(mem, n, dur, perRequest)
			}
			results[i].per.add(p)
			results[i].group.add(g)
			if p.ops > 0 {
				results[i].ratios = append(results[i].ratios, g.opsPerSec()/p.opsPerSec())
			}
		}
		p, g := results[i].per, results[i].group
		fmt.Printf("x%-3d per-request fdatasync: %9.0f ops/s  p50 %8v  p99 %8v\n", n, p.opsPerSec(), p.pct(0.50).Round(time.Microsecond), p.pct(0.99).Round(time.Microsecond))
		fmt.Printf("x%-3d group commit:          %9.0f ops/s  p50 %8v  p99 %8v\n", n, g.opsPerSec(), g.pct(0.50).Round(time.Microsecond), g.pct(0.99).Round(time.Microsecond))
	}
	st := eng.Stats()
	fmt.Printf("group commit: %d requests, %d syncs, %d coalesced, %d errors\n", st.Requests, st.Syncs, st.Coalesced, st.Errors)
	fmt.Println("speedup: median over the adjacent run pairs of group-commit over per-request throughput (robust to load from other processes); total: ratio of the totals")
	for i, n := range ns {
		p := results[i].per.opsPerSec()
		if p == 0 || len(results[i].ratios) == 0 {
			return errors.New("per-request mode completed no operation")
		}
		r := slices.Clone(results[i].ratios)
		slices.Sort(r)
		med := r[len(r)/2]
		if len(r)%2 == 0 {
			med = (r[len(r)/2-1] + r[len(r)/2]) / 2
		}
		fmt.Printf("flush speedup x%d: %.2f (total %.2f)\n", n, med, results[i].group.opsPerSec()/p)
	}
	return nil
}

// runCase runs n flushers for d; each writes 4 KiB into its own rotating
// slot of mem and then calls flush. It returns the completed operations
// and the latency of each (write plus flush).
func runCase(mem []byte, n int, d time.Duration, flush func(context.Context) error) result {
	var stop atomic.Bool
	var wg sync.WaitGroup
	lats := make([][]time.Duration, n)
	errs := make([]error, n)
	slots := len(mem) / writeSize
	start := make(chan struct{})
	ctx := context.Background()
	for g := 0; g < n; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			lat := make([]time.Duration, 0, 4096)
			<-start
			for k := 0; !stop.Load(); k++ {
				slot := (g + k*n) % slots
				t0 := time.Now()
				b := mem[slot*writeSize : (slot+1)*writeSize]
				for i := 0; i < len(b); i += 8 {
					b[i] = byte(k)
				}
				if err := flush(ctx); err != nil {
					errs[g] = err
					return
				}
				lat = append(lat, time.Since(t0))
			}
			lats[g] = lat
		}(g)
	}
	t0 := time.Now()
	close(start)
	time.Sleep(d)
	stop.Store(true)
	wg.Wait()
	el := time.Since(t0)
	var r result
	r.elapsed = el
	for g := range lats {
		if errs[g] != nil {
			fmt.Fprintln(os.Stderr, "bench-flush: flush:", errs[g])
			os.Exit(1)
		}
		r.ops += len(lats[g])
		r.lat = append(r.lat, lats[g]...)
	}
	return r
}
