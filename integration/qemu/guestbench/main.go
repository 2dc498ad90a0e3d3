// Command guestbench runs inside integration guests (built static and put in
// the initramfs). It has two modes:
//
//	guestbench flush -dirs /mnt0[,/mnt1...] -threads N -duration 10s
//	    N goroutines, each on its own file (spread over the directories),
//	    loop: pwrite 4 KiB, fsync. Prints one JSON object: ops, ops/s and
//	    p50/p99 of the write+fsync latency.
//
//	guestbench seqlog -file /mnt/data -ack /host/acked -stop /host/stop
//	    Writes record 1, 2, 3, ... (4 KiB each, at offset seq*4096, every
//	    byte derived from the sequence number), fsyncs each, and only
//	    after the fsync returned appends "seq latency_us" to the ack log.
//	    Stops when the stop file exists; any error ends it with status 1.
//	    The host checks that every acknowledged record is in the backing.
package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// RecordSize is the size of one seqlog record and of one flush-mode write.
const RecordSize = 4096

// RecordMagic starts every seqlog record.
const RecordMagic = "NVREC001"

// Record returns the 4 KiB record for seq: the magic, the sequence number
// (le64 at 8) and a filler derived from seq, so a torn or stale block is
// recognised.
func Record(seq uint64) []byte {
	b := make([]byte, RecordSize)
	copy(b, RecordMagic)
	binary.LittleEndian.PutUint64(b[8:], seq)
	x := seq*0x9E3779B97F4A7C15 + 1
	for i := 16; i < RecordSize; i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(b[i:], x)
	}
	return b
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: guestbench flush|seqlog [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "flush":
		err = flushMode(os.Args[2:])
	case "seqlog":
		err = seqlogMode(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q: want flush or seqlog", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "guestbench:", err)
		os.Exit(1)
	}
}

// FlushResult is what flush mode prints (one JSON line).
type FlushResult struct {
	Threads   int     `json:"threads"`
	Dirs      int     `json:"dirs"`
	Ops       int     `json:"ops"`     // inside the measuring window
	AllOps    int64   `json:"all_ops"` // including the warm-up (between the marks)
	Seconds   float64 `json:"seconds"`
	OpsPerSec float64 `json:"ops_per_sec"`
	P50us     float64 `json:"p50_us"`
	P99us     float64 `json:"p99_us"`
	MaxUs     float64 `json:"max_us"`
	FsyncP50  float64 `json:"fsync_p50_us"`
	WriteP50  float64 `json:"write_p50_us"`
}

func flushMode(args []string) error {
	fs := flag.NewFlagSet("flush", flag.ContinueOnError)
	dirs := fs.String("dirs", "/mnt", "comma-separated directories (one per device)")
	threads := fs.Int("threads", 1, "concurrent writers")
	dur := fs.Duration("duration", 10*time.Second, "measuring time")
	warm := fs.Duration("warmup", time.Second, "time before measuring")
	blocks := fs.Int("blocks", 64, "distinct 4 KiB blocks per file (written round-robin)")
	mark := fs.String("mark", "", "create MARK.start after setup and MARK.end after the loop, with a 300 ms quiet gap, so the host can count the device's flushes between them")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *threads < 1 || *threads > 1024 || *blocks < 1 {
		return fmt.Errorf("threads %d / blocks %d out of range", *threads, *blocks)
	}
	ds := strings.Split(*dirs, ",")
	files := make([]*os.File, *threads)
	for i := range files {
		p := filepath.Join(ds[i%len(ds)], fmt.Sprintf("bench-%d", i))
		f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		// Allocate the blocks first, so the loop measures overwrites
		// (data + a flush), not block allocation.
		buf := Record(uint64(i))
		for b := 0; b < *blocks; b++ {
			if _, err := f.WriteAt(buf, int64(b)*RecordSize); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("fsync %s: %w", p, err)
		}
		files[i] = f
	}
	type sample struct{ total, write, sync time.Duration }
	var (
		mu      sync.Mutex
		samples []sample
		firstE  error
	)
	if *mark != "" {
		if err := os.WriteFile(*mark+".start", nil, 0o644); err != nil {
			return err
		}
		time.Sleep(300 * time.Millisecond)
	}
	var allOps atomic.Int64
	start := time.Now()
	measureFrom := start.Add(*warm)
	end := measureFrom.Add(*dur)
	var wg sync.WaitGroup
	for i, f := range files {
		wg.Add(1)
		go func(i int, f *os.File) {
			defer wg.Done()
			buf := Record(uint64(i) << 32)
			var local []sample
			for k := 0; ; k++ {
				t0 := time.Now()
				if t0.After(end) {
					break
				}
				binary.LittleEndian.PutUint64(buf[8:], uint64(k))
				if _, err := f.WriteAt(buf, int64(k%*blocks)*RecordSize); err != nil {
					mu.Lock()
					firstE = errors.Join(firstE, fmt.Errorf("%s: %w", f.Name(), err))
					mu.Unlock()
					return
				}
				t1 := time.Now()
				if err := f.Sync(); err != nil {
					mu.Lock()
					firstE = errors.Join(firstE, fmt.Errorf("fsync %s: %w", f.Name(), err))
					mu.Unlock()
					return
				}
				t2 := time.Now()
				allOps.Add(1)
				if t0.After(measureFrom) && t2.Before(end) {
					local = append(local, sample{t2.Sub(t0), t1.Sub(t0), t2.Sub(t1)})
				}
			}
			mu.Lock()
			samples = append(samples, local...)
			mu.Unlock()
		}(i, f)
	}
	wg.Wait()
	if *mark != "" {
		if err := os.WriteFile(*mark+".end", nil, 0o644); err != nil {
			return err
		}
		time.Sleep(300 * time.Millisecond)
	}
	if firstE != nil {
		return firstE
	}
	if len(samples) == 0 {
		return errors.New("no operation completed inside the measuring window")
	}
	tot := make([]time.Duration, len(samples))
	wr := make([]time.Duration, len(samples))
	sy := make([]time.Duration, len(samples))
	for i, s := range samples {
		tot[i], wr[i], sy[i] = s.total, s.write, s.sync
	}
	r := FlushResult{
		Threads: *threads, Dirs: len(ds), Ops: len(samples), AllOps: allOps.Load(), Seconds: dur.Seconds(),
		OpsPerSec: float64(len(samples)) / dur.Seconds(),
		P50us:     pct(tot, 50), P99us: pct(tot, 99), MaxUs: pct(tot, 100),
		FsyncP50: pct(sy, 50), WriteP50: pct(wr, 50),
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

// pct returns the p-th percentile (nearest rank) in microseconds; it sorts d.
func pct(d []time.Duration, p float64) float64 {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	i := int(float64(len(d))*p/100+0.5) - 1
	i = max(0, min(i, len(d)-1))
	return float64(d[i].Nanoseconds()) / 1e3
}

// SeqlogResult is what seqlog mode prints at the end.
type SeqlogResult struct {
	Records  uint64  `json:"records"`
	P50us    float64 `json:"p50_us"`
	MaxUs    float64 `json:"max_us"`
	MaxAtSeq uint64  `json:"max_at_seq"`
}

func seqlogMode(args []string) error {
	fs := flag.NewFlagSet("seqlog", flag.ContinueOnError)
	file := fs.String("file", "/mnt/data", "data file (on the device under test)")
	ack := fs.String("ack", "/host/acked", "acknowledgement log (on the host share)")
	stop := fs.String("stop", "/host/stop", "stop when this file exists")
	maxRec := fs.Uint64("max", 100000, "stop after this many records")
	if err := fs.Parse(args); err != nil {
		return err
	}
	f, err := os.OpenFile(*file, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	a, err := os.OpenFile(*ack, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer a.Close()
	var lat []time.Duration
	res := SeqlogResult{}
	var maxLat time.Duration
	lastStop := time.Now()
	for seq := uint64(1); seq <= *maxRec; seq++ {
		if time.Since(lastStop) > 100*time.Millisecond {
			lastStop = time.Now()
			if _, err := os.Stat(*stop); err == nil {
				break
			}
		}
		t0 := time.Now()
		if _, err := f.WriteAt(Record(seq), int64(seq)*RecordSize); err != nil {
			return fmt.Errorf("record %d: write %s: %w", seq, *file, err)
		}
		if err := unix.Fsync(int(f.Fd())); err != nil {
			return fmt.Errorf("record %d: fsync %s: %w", seq, *file, err)
		}
		d := time.Since(t0)
		lat = append(lat, d)
		if d > maxLat {
			maxLat, res.MaxAtSeq = d, seq
		}
		if _, err := fmt.Fprintf(a, "%d %d\n", seq, d.Microseconds()); err != nil {
			return fmt.Errorf("record %d: ack log %s: %w", seq, *ack, err)
		}
		res.Records = seq
	}
	if len(lat) > 0 {
		res.P50us = pct(lat, 50)
		res.MaxUs = float64(maxLat.Nanoseconds()) / 1e3
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}
