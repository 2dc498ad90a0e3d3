package flushhint

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Sources of a not-yet-durable measurement.
const (
	SourceCachestat = "cachestat" // exact: the file's dirty plus writeback pages
	SourceMincore   = "mincore"   // upper bound: the file's resident pages
)

// NotDurable is how many bytes of a file are written but not yet durable.
type NotDurable struct {
	Bytes  uint64 `json:"bytes"`
	Source string `json:"source"`
}

// MeasureNotDurable reports the bytes of f that are in the page cache but
// not yet on stable storage: cachestat(2)'s dirty plus writeback pages.
// On kernels without cachestat (before 6.5) it falls back to mincore(2)
// over a read-only mapping of f, which sees residency, not dirtiness, and
// so reports an upper bound.
func MeasureNotDurable(f *os.File) (NotDurable, error) {
	return measureNotDurable(f, false)
}

var pageSize = uint64(os.Getpagesize())

func measureNotDurable(f *os.File, forceMincore bool) (NotDurable, error) {
	if !forceMincore {
		var cs unix.Cachestat_t
		err := unix.Cachestat(uint(f.Fd()), &unix.CachestatRange{}, &cs, 0)
		runtime.KeepAlive(f)
		if err == nil {
			return NotDurable{Bytes: (cs.Dirty + cs.Writeback) * pageSize, Source: SourceCachestat}, nil
		}
		if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EOPNOTSUPP) {
			return NotDurable{}, fmt.Errorf("cachestat %s: %w", f.Name(), err)
		}
	}
	n, err := residentBytes(f)
	if err != nil {
		return NotDurable{}, err
	}
	return NotDurable{Bytes: n, Source: SourceMincore}, nil
}

// mincoreWindow is how much of the file is mapped at once for mincore.
const mincoreWindow = 1 << 30

// residentBytes counts f's pages that are in the page cache, mapping it
// read-only one window at a time (the mapping populates nothing).
func residentBytes(f *os.File) (uint64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("mincore %s: %w", f.Name(), err)
	}
	size := fi.Size()
	if !fi.Mode().IsRegular() {
		return 0, fmt.Errorf("mincore %s: not a regular file", f.Name())
	}
	var total uint64
	vec := make([]byte, mincoreWindow/pageSize)
	for off := int64(0); off < size; off += mincoreWindow {
		l := size - off
		if l > mincoreWindow {
			l = mincoreWindow
		}
		m, err := unix.Mmap(int(f.Fd()), off, int(l), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			return 0, fmt.Errorf("mincore %s: map [%d, %d): %w", f.Name(), off, off+l, err)
		}
		pages := (uint64(l) + pageSize - 1) / pageSize
		err = mincore(m, vec[:pages])
		if uerr := unix.Munmap(m); err == nil && uerr != nil {
			err = uerr
		}
		if err != nil {
			return 0, fmt.Errorf("mincore %s: [%d, %d): %w", f.Name(), off, off+l, err)
		}
		for _, v := range vec[:pages] {
			total += uint64(bits.OnesCount8(v & 1))
		}
	}
	runtime.KeepAlive(f)
	r := total * pageSize
	if r > uint64(size) && size >= 0 {
		r = uint64(size)
	}
	return r, nil
}

func (e *Engine) startWriteback(w Writeback) {
	sample := w.SampleEvery
	if sample == 0 {
		sample = time.Second
		if w.Interval > 0 && w.Interval < sample {
			sample = w.Interval
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.wbCancel = cancel
	e.wbDone = make(chan struct{})
	go e.writeback(ctx, w, sample)
}

// writeback samples the not-yet-durable bytes every sample period and
// syncs through the group commit every interval.
func (e *Engine) writeback(ctx context.Context, w Writeback, sample time.Duration) {
	defer close(e.wbDone)
	t := time.NewTicker(sample)
	defer t.Stop()
	last := time.Now()
	warned := false
	measure := func() {
		if w.File == nil {
			return
		}
		nd, err := MeasureNotDurable(w.File)
		if err != nil {
			if !warned {
				e.log.Warn("writeback: cannot measure bytes not yet durable", "device", e.name, "err", err)
				warned = true
			}
			return
		}
		e.dirtyBytes.Store(nd.Bytes)
		src := nd.Source
		e.dirtySource.Store(&src)
		e.m.dirty.Set(float64(nd.Bytes))
	}
	measure()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			measure()
			if w.Interval > 0 && now.Sub(last) >= w.Interval-sample/2 {
				last = now
				if err := e.flush(ctx); err != nil && ctx.Err() == nil {
					e.log.Error("writeback sync failed", "device", e.name, "err", err)
				}
				measure()
			}
		}
	}
}

// mincore is mincore(2) on the mapping m; vec gets one byte per page.
func mincore(m, vec []byte) error {
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(unsafe.SliceData(m))), uintptr(len(m)), uintptr(unsafe.Pointer(unsafe.SliceData(vec))))
	if errno != 0 {
		return errno
	}
	return nil
}
