package vhostuser

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync/atomic"
	"time"
	"unsafe"

	"gvisor.dev/gvisor/pkg/sync"
)

// pollInterval is how often a queue without a kick fd (VringNoFd) is
// polled.
const pollInterval = time.Millisecond

// idxWord is a 16-bit ring index word accessed through the aligned 32-bit
// word that contains it (sync/atomic has no 16-bit operations). When the
// enclosing word would leave the mapping, plain is used instead.
type idxWord struct {
	p     *uint32
	shift uint
	plain []byte
}

func (w idxWord) load() uint16 {
	if w.p == nil {
		return le.Uint16(w.plain)
	}
	return uint16(atomic.LoadUint32(w.p) >> w.shift)
}

func (w idxWord) store(v uint16) {
	if w.p == nil {
		le.PutUint16(w.plain, v)
		return
	}
	mask := uint32(0xffff) << w.shift
	for {
		old := atomic.LoadUint32(w.p)
		nw := old&^mask | uint32(v)<<w.shift
		if atomic.CompareAndSwapUint32(w.p, old, nw) {
			return
		}
	}
}

// userWord resolves the 16-bit word at user address ua.
func (t *memTable) userWord(ua uint64) (idxWord, error) {
	b, err := t.userSlice(ua, 2)
	if err != nil {
		return idxWord{}, err
	}
	// b aliases r.data; find the enclosing aligned word inside the same
	// region's data.
	for _, r := range t.regions {
		if ua < r.UserAddr || ua-r.UserAddr >= r.Size {
			continue
		}
		off := ua - r.UserAddr
		addr := uintptr(unsafe.Pointer(&r.data[off]))
		switch addr % 4 {
		case 0:
			if off+4 <= uint64(len(r.data)) {
				return idxWord{p: (*uint32)(unsafe.Pointer(&r.data[off])), shift: 0}, nil
			}
		case 2:
			if off >= 2 {
				return idxWord{p: (*uint32)(unsafe.Pointer(&r.data[off-2])), shift: 16}, nil
			}
		default:
			return idxWord{}, fmt.Errorf("ring index at user address %#x is not 2-byte aligned", ua)
		}
		return idxWord{plain: b}, nil
	}
	return idxWord{plain: b}, nil
}

// rings are the guest memory views of one queue, resolved through table.
type rings struct {
	table      *memTable
	desc       []byte
	availRing  []byte // heads, 2*size bytes
	usedRing   []byte // elements, 8*size bytes
	availFlags idxWord
	availIdx   idxWord
	usedEvent  idxWord
	usedIdx    idxWord
	availEvent idxWord
}

// Inflight area layout (split ring, one region per queue).
const (
	inflightHeader    = 16
	inflightEntry     = 16
	inflightVersion   = 1
	inflightOffVer    = 8
	inflightOffNum    = 10
	inflightOffBatch  = 12
	inflightOffUsed   = 14
	inflightEntryNext = 6
	inflightEntryCtr  = 8
)

// InflightQueueRegionSize is the size of one queue's inflight region.
func InflightQueueRegionSize(qsize uint16) uint64 {
	return (uint64(inflightHeader) + uint64(inflightEntry)*uint64(qsize) + 63) &^ 63
}

// queue is one virtqueue of a session.
type queue struct {
	s     *session
	index int

	mu sync.Mutex
	// +checklocks:mu
	size uint16
	// +checklocks:mu
	addr VringAddr
	// +checklocks:mu
	addrSet bool
	// +checklocks:mu
	lastAvail uint16
	// +checklocks:mu
	usedShadow uint16
	// +checklocks:mu
	r rings
	// +checklocks:mu
	inflight []byte
	// +checklocks:mu
	counter uint64
	// +checklocks:mu
	started bool
	// resumeStart: a replayed journal left the ring started; start it
	// when the replay ends. resumeFromUsed: that start takes the next
	// avail index from the used index in guest memory.
	// +checklocks:mu
	resumeStart bool
	// +checklocks:mu
	resumeFromUsed bool
	// +checklocks:mu
	broken bool
	// +checklocks:mu
	gate *sync.Gate
	// +checklocks:mu
	kick *os.File
	// +checklocks:mu
	pollMode bool
	// +checklocks:mu
	stopping *atomic.Bool
	// +checklocks:mu
	done chan struct{}

	enabled atomic.Bool
	call    atomic.Pointer[os.File]
	errFd   atomic.Pointer[os.File]
	// abandoned is set when the front-end went away: completions after
	// it leave the ring (and the inflight area) untouched.
	abandoned atomic.Bool
}

// resolveLocked makes q.r current for the session's memory table.
// +checklocks:q.mu
func (q *queue) resolveLocked() error {
	t := q.s.acquireMem()
	if t == nil {
		return errors.New("no memory table")
	}
	if t == q.r.table {
		t.release()
		return nil
	}
	r, err := q.resolveRings(t)
	if err != nil {
		t.release()
		return err
	}
	q.r.table.release()
	q.r = r
	return nil
}

func ringErr(idx int, part string, err error) error {
	return fmt.Errorf("vring %d %s: %w", idx, part, err)
}

// +checklocks:q.mu
func (q *queue) resolveRings(t *memTable) (rings, error) {
	n := uint64(q.size)
	a := q.addr
	r := rings{table: t}
	var err error
	idx := q.index
	if a.Desc%16 != 0 {
		return rings{}, ringErr(idx, "descriptor table", fmt.Errorf("address %#x is not 16-byte aligned", a.Desc))
	}
	if a.Avail%2 != 0 {
		return rings{}, ringErr(idx, "available ring", fmt.Errorf("address %#x is not 2-byte aligned", a.Avail))
	}
	if a.Used%4 != 0 {
		return rings{}, ringErr(idx, "used ring", fmt.Errorf("address %#x is not 4-byte aligned", a.Used))
	}
	if r.desc, err = t.userSlice(a.Desc, 16*n); err != nil {
		return rings{}, ringErr(idx, "descriptor table", err)
	}
	if _, err = t.userSlice(a.Avail, 6+2*n); err != nil {
		return rings{}, ringErr(idx, "available ring", err)
	}
	if _, err = t.userSlice(a.Used, 6+8*n); err != nil {
		return rings{}, ringErr(idx, "used ring", err)
	}
	r.availRing, _ = t.userSlice(a.Avail+4, 2*n)
	r.usedRing, _ = t.userSlice(a.Used+4, 8*n)
	words := []struct {
		w  *idxWord
		ua uint64
	}{
		{&r.availFlags, a.Avail}, {&r.availIdx, a.Avail + 2}, {&r.usedEvent, a.Avail + 4 + 2*n},
		{&r.usedIdx, a.Used + 2}, {&r.availEvent, a.Used + 4 + 8*n},
	}
	for _, w := range words {
		if *w.w, err = t.userWord(w.ua); err != nil {
			return rings{}, ringErr(idx, "index word", err)
		}
	}
	return r, nil
}

// Request is one descriptor chain handed to a Backend. The device reads
// the readable part, writes the writable part and calls Complete exactly
// once, from any goroutine, in any order relative to other requests.
type Request struct {
	q     *queue
	table *memTable
	gate  *sync.Gate
	chain Chain
	done  atomic.Bool
	ctx   context.Context
}

// Queue is the index of the queue the request came from.
func (r *Request) Queue() int { return r.q.index }

// Head is the chain's head descriptor index.
func (r *Request) Head() uint16 { return r.chain.Head }

// ReadableLen is the number of device-readable bytes.
func (r *Request) ReadableLen() uint64 { return r.chain.ReadLen }

// WritableLen is the number of device-writable bytes.
func (r *Request) WritableLen() uint64 { return r.chain.WriteLen }

// Context is cancelled when the front-end disconnects or resets the
// device; a device may then give up (its completion is discarded).
func (r *Request) Context() context.Context { return r.ctx }

func segsAt(segs []Segment, off uint64, n int, f func(gpa uint64, lo, hi int) error) (int, error) {
	done := 0
	for _, s := range segs {
		if done == n {
			break
		}
		if off >= uint64(s.Len) {
			off -= uint64(s.Len)
			continue
		}
		k := min(uint64(n-done), uint64(s.Len)-off)
		if err := f(s.GPA+off, done, done+int(k)); err != nil {
			return done, err
		}
		done += int(k)
		off = 0
	}
	return done, nil
}

// ReadAt copies device-readable bytes at offset off into p; it returns
// fewer bytes than len(p) only at the end of the readable part.
func (r *Request) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read at negative offset %d", off)
	}
	return segsAt(r.chain.Readable, uint64(off), len(p), func(gpa uint64, lo, hi int) error {
		return r.table.copyOut(p[lo:hi], gpa)
	})
}

// WriteAt copies p into the device-writable part at offset off.
func (r *Request) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("write at negative offset %d", off)
	}
	return segsAt(r.chain.Writable, uint64(off), len(p), func(gpa uint64, lo, hi int) error {
		return r.table.copyIn(gpa, p[lo:hi])
	})
}

// Complete returns the chain to the driver with written bytes of device
// output and notifies it as EVENT_IDX or NO_INTERRUPT say. Second and
// later calls do nothing.
func (r *Request) Complete(written uint32) {
	if r.done.Swap(true) {
		return
	}
	q := r.q
	notify := q.complete(r.chain.Head, min(uint64(written), r.chain.WriteLen))
	r.table.release()
	r.gate.Leave()
	if notify {
		q.signalCall()
	}
}

func (q *queue) complete(head uint16, written uint64) bool {
	if q.abandoned.Load() {
		return false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.started || q.r.table == nil {
		return false
	}
	if err := q.resolveLocked(); err != nil {
		q.s.deviceError(q, err)
		return false
	}
	size := q.size
	old := q.usedShadow
	slot := uint32(old % size)
	e := q.r.usedRing[8*slot : 8*slot+8]
	le.PutUint32(e, uint32(head))
	le.PutUint32(e[4:], uint32(written))
	if q.inflight != nil {
		le.PutUint16(q.inflight[inflightOffBatch:], head)
	}
	nw := old + 1
	q.usedShadow = nw
	q.r.usedIdx.store(nw)
	if q.inflight != nil {
		q.inflight[inflightHeader+inflightEntry*int(head)] = 0
		le.PutUint16(q.inflight[inflightOffUsed:], nw)
	}
	if q.s.acked.Load()&FeatureEventIdx != 0 {
		ev := q.r.usedEvent.load()
		return uint16(nw-ev-1) < uint16(nw-old)
	}
	return q.r.availFlags.load()&availFlagNoInterrupt == 0
}

func (q *queue) signalCall() {
	if f := q.call.Load(); f != nil {
		var one = [8]byte{1}
		f.Write(one[:])
	}
}

func (q *queue) signalErr() {
	if f := q.errFd.Load(); f != nil {
		var one = [8]byte{1}
		f.Write(one[:])
	}
}

// popLocked takes every available chain. A malformed ring or chain is
// returned as an error: the device then needs a reset.
// +checklocks:q.mu
func (q *queue) popLocked() ([]*Request, error) {
	if err := q.resolveLocked(); err != nil {
		return nil, err
	}
	eventIdx := q.s.acked.Load()&FeatureEventIdx != 0
	indirect := q.s.acked.Load()&FeatureIndirectDesc != 0
	var out []*Request
	for {
		avail := q.r.availIdx.load()
		if n := uint16(avail - q.lastAvail); n > q.size {
			return out, fmt.Errorf("vring %d: avail idx %d is %d ahead of last avail %d, more than the queue size %d", q.index, avail, n, q.lastAvail, q.size)
		}
		if avail == q.lastAvail {
			if !eventIdx {
				return out, nil
			}
			q.r.availEvent.store(q.lastAvail)
			if q.r.availIdx.load() == q.lastAvail {
				return out, nil
			}
			continue
		}
		for q.lastAvail != avail {
			slot := uint32(q.lastAvail % q.size)
			head := le.Uint16(q.r.availRing[2*slot:])
			c, err := walkChain(q.r.table, q.r.desc, q.size, head, indirect)
			if err != nil {
				return out, err
			}
			req, ok := q.newRequestLocked(c)
			if !ok {
				return out, nil
			}
			if q.inflight != nil {
				e := q.inflight[inflightHeader+inflightEntry*int(head):]
				q.counter++
				le.PutUint64(e[inflightEntryCtr:], q.counter)
				e[0] = 1
			}
			q.lastAvail++
			out = append(out, req)
		}
	}
}

// +checklocks:q.mu
func (q *queue) newRequestLocked(c Chain) (*Request, bool) {
	if !q.gate.Enter() {
		return nil, false
	}
	if !q.r.table.tryRef() {
		q.gate.Leave()
		return nil, false
	}
	return &Request{q: q, table: q.r.table, gate: q.gate, chain: c, ctx: q.s.ctx}, true
}

// resubmitLocked reads the inflight area on start: it repairs a
// half-finished completion, sets lastAvail to used idx + in-flight count
// and returns the chains that were in flight, oldest first.
// +checklocks:q.mu
func (q *queue) resubmitLocked() ([]*Request, error) {
	inf := q.inflight
	if inf == nil {
		return nil, nil
	}
	if le.Uint16(inf[inflightOffVer:]) == 0 {
		clear(inf)
		le.PutUint16(inf[inflightOffVer:], inflightVersion)
		le.PutUint16(inf[inflightOffNum:], q.size)
		return nil, nil
	}
	if n := le.Uint16(inf[inflightOffNum:]); n != q.size {
		return nil, fmt.Errorf("vring %d: inflight area is for %d descriptors, queue has %d", q.index, n, q.size)
	}
	used := q.usedShadow
	if le.Uint16(inf[inflightOffUsed:]) != used {
		if b := le.Uint16(inf[inflightOffBatch:]); b < q.size {
			inf[inflightHeader+inflightEntry*int(b)] = 0
		}
		le.PutUint16(inf[inflightOffUsed:], used)
	}
	type pending struct {
		head uint16
		ctr  uint64
	}
	var heads []pending
	for i := 0; i < int(q.size); i++ {
		e := inf[inflightHeader+inflightEntry*i:]
		if e[0] == 1 {
			heads = append(heads, pending{uint16(i), le.Uint64(e[inflightEntryCtr:])})
		} else if e[0] != 0 {
			e[0] = 0
		}
	}
	sort.Slice(heads, func(i, j int) bool { return heads[i].ctr < heads[j].ctr })
	base := q.lastAvail
	q.lastAvail = used + uint16(len(heads))
	indirect := q.s.acked.Load()&FeatureIndirectDesc != 0
	var out []*Request
	for _, h := range heads {
		q.counter = max(q.counter, h.ctr)
		c, err := walkChain(q.r.table, q.r.desc, q.size, h.head, indirect)
		if err != nil {
			q.lastAvail = base
			return out, fmt.Errorf("resubmitting: %w", err)
		}
		req, ok := q.newRequestLocked(c)
		if !ok {
			break
		}
		out = append(out, req)
	}
	return out, nil
}

// startLocked starts the queue once it has a size, addresses, a memory
// table and a kick (or poll mode): resolves the rings, reads used idx,
// consults the inflight area and launches the worker.
// +checklocks:q.mu
func (q *queue) startLocked() error {
	if q.started || q.broken || q.size == 0 || !q.addrSet || (q.kick == nil && !q.pollMode) {
		return nil
	}
	if err := q.resolveLocked(); err != nil {
		return err
	}
	q.usedShadow = q.r.usedIdx.load()
	if q.resumeFromUsed {
		q.resumeFromUsed = false
		q.lastAvail = q.usedShadow
	}
	q.gate = new(sync.Gate)
	q.started = true
	q.abandoned.Store(false)
	if need := inflightHeader + inflightEntry*int(q.size); q.inflight != nil && len(q.inflight) < need {
		q.s.log.Warn("inflight area ignored: too small for the queue", "vring", q.index, "bytes", len(q.inflight), "need", need)
		q.inflight = nil
	}
	resub, err := q.resubmitLocked()
	if err != nil {
		q.s.log.Warn("inflight area ignored", "vring", q.index, "err", err)
		for _, r := range resub {
			r.table.release()
			r.gate.Leave()
		}
		resub = nil
		q.inflight = nil
	}
	stopping := new(atomic.Bool)
	done := make(chan struct{})
	q.stopping, q.done = stopping, done
	go q.run(q.kick, stopping, done, resub)
	return nil
}

// stopLocked stops the worker and, when drain is set, waits for every
// request in flight to complete. It returns with q.mu held.
// +checklocks:q.mu
func (q *queue) stopLocked(drain bool) {
	if !q.started {
		return
	}
	q.stopping.Store(true)
	if q.kick != nil {
		q.kick.SetReadDeadline(time.Now())
	}
	done, gate := q.done, q.gate
	q.mu.Unlock()
	<-done
	if drain {
		gate.Close()
	}
	q.mu.Lock()
	q.started = false
	if q.kick != nil {
		q.kick.Close()
		q.kick = nil
	}
	q.pollMode = false
	q.r.table.release()
	q.r = rings{}
}

// wake makes the worker look at the ring now.
func (q *queue) wake() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.started && q.kick != nil {
		q.kick.SetReadDeadline(time.Now())
	}
}

func (q *queue) run(kick *os.File, stopping *atomic.Bool, done chan struct{}, resub []*Request) {
	defer close(done)
	be := q.s.srv.backend
	q.s.srv.Stats.Requests.Add(uint64(len(resub)))
	for _, r := range resub {
		be.HandleRequest(r)
	}
	var buf [8]byte
	for {
		if stopping.Load() {
			return
		}
		q.process()
		if kick == nil {
			time.Sleep(pollInterval)
			continue
		}
		if _, err := kick.Read(buf[:]); err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				if !stopping.Load() {
					q.s.log.Warn("kick fd read failed", "vring", q.index, "err", err)
				}
				return
			}
			kick.SetReadDeadline(time.Time{})
		}
	}
}

// process hands every available chain to the device.
func (q *queue) process() {
	q.mu.Lock()
	if !q.started || q.broken || !q.enabled.Load() {
		q.mu.Unlock()
		return
	}
	reqs, err := q.popLocked()
	if err != nil {
		q.broken = true
		q.s.deviceError(q, err)
	}
	q.mu.Unlock()
	q.s.srv.Stats.Requests.Add(uint64(len(reqs)))
	be := q.s.srv.backend
	for _, r := range reqs {
		be.HandleRequest(r)
	}
}
