package vhostuser

import (
	"encoding/binary"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Keeper journal compaction. Every front-end message goes to the keeper's
// journal, and a guest reboot or driver rebind sends a new round of setup
// messages (features, memory table, ring set-up, new eventfds), so the
// journal, and the descriptors the keeper holds with it, would grow for
// as long as the VM runs. The server therefore replaces the journal, from
// time to time and at every takeover, with a snapshot: the shortest
// message sequence that brings a fresh session to the state of the
// current one (the session knows its state; the keeper stays ignorant of
// vhost-user). The replacement is atomic in the keeper: it collects the
// snapshot aside between keeperReqCompact and keeperReqCommit and swaps
// it in at the commit; a server that dies in between leaves the old
// journal, so a takeover always replays either the old journal or the
// whole snapshot.

const (
	// keeperReqCompact: server -> keeper: the records up to
	// keeperReqCommit replace the journal.
	keeperReqCompact = 0xff04
	// keeperReqCommit: server -> keeper: swap the replacement in.
	keeperReqCommit = 0xff05
	// keeperReqState is a journal record (the last of a snapshot): the
	// session flags no vhost-user message sets exactly (sessionFlags).
	keeperReqState = 0xff06
)

// DefaultJournalLimit is the number of records (or descriptors) appended
// to the keeper's journal after which it is compacted (Keeper.JournalLimit
// 0). QEMU sends about 15 messages with 8 descriptors per start of a
// one-queue device, so this is several reboots; a compacted journal of
// such a device is about 12 records.
const DefaultJournalLimit = 128

// sessionFlags carries what a snapshot cannot express as vhost-user
// messages without side effects: whether the shared-memory regions are
// mapped for the current start, whether the device needs a reset, and per
// queue whether it is enabled and started. Encoding: u8 version (1), u8
// flags (bit 0 mapped, bit 1 needs reset), le16 queue count, then one u8
// per queue (bit 0 enabled, bit 1 started).
type sessionFlags struct {
	Mapped    bool
	NeedReset bool
	Queues    []queueFlags
}

type queueFlags struct {
	Enabled bool
	Started bool
}

const (
	sessionFlagsVersion = 1
	sessionFlagsHeader  = 4
	flagMapped          = 1 << 0
	flagNeedReset       = 1 << 1
	flagEnabled         = 1 << 0
	flagStarted         = 1 << 1
	// maxFlagQueues bounds the queue count (a vring index is 8 bits).
	maxFlagQueues = VringIndexMask + 1
)

// MarshalBinary encodes the flags.
func (f sessionFlags) MarshalBinary() ([]byte, error) {
	if len(f.Queues) > maxFlagQueues {
		return nil, fmt.Errorf("session flags: %d queues, at most %d", len(f.Queues), maxFlagQueues)
	}
	b := make([]byte, sessionFlagsHeader, sessionFlagsHeader+len(f.Queues))
	b[0] = sessionFlagsVersion
	if f.Mapped {
		b[1] |= flagMapped
	}
	if f.NeedReset {
		b[1] |= flagNeedReset
	}
	binary.LittleEndian.PutUint16(b[2:], uint16(len(f.Queues)))
	for _, q := range f.Queues {
		var v byte
		if q.Enabled {
			v |= flagEnabled
		}
		if q.Started {
			v |= flagStarted
		}
		b = append(b, v)
	}
	return b, nil
}

// UnmarshalBinary decodes flags whose length matches their queue count.
func (f *sessionFlags) UnmarshalBinary(b []byte) error {
	if len(b) < sessionFlagsHeader {
		return fmt.Errorf("session flags: %d bytes, want at least %d", len(b), sessionFlagsHeader)
	}
	if b[0] != sessionFlagsVersion {
		return fmt.Errorf("session flags: version %d at offset 0, want %d", b[0], sessionFlagsVersion)
	}
	if extra := b[1] &^ (flagMapped | flagNeedReset); extra != 0 {
		return fmt.Errorf("session flags: unknown bits %#x at offset 1", extra)
	}
	n := int(binary.LittleEndian.Uint16(b[2:]))
	if n > maxFlagQueues {
		return fmt.Errorf("session flags: queue count %d at offset 2 exceeds %d", n, maxFlagQueues)
	}
	if len(b) != sessionFlagsHeader+n {
		return fmt.Errorf("session flags: %d bytes for %d queues, want %d", len(b), n, sessionFlagsHeader+n)
	}
	out := sessionFlags{Mapped: b[1]&flagMapped != 0, NeedReset: b[1]&flagNeedReset != 0, Queues: make([]queueFlags, n)}
	for i := range out.Queues {
		v := b[sessionFlagsHeader+i]
		if extra := v &^ (flagEnabled | flagStarted); extra != 0 {
			return fmt.Errorf("session flags: queue %d: unknown bits %#x at offset %d", i, extra, sessionFlagsHeader+i)
		}
		out.Queues[i] = queueFlags{Enabled: v&flagEnabled != 0, Started: v&flagStarted != 0}
	}
	*f = out
	return nil
}

// applyFlags sets the replayed session's flags from a keeperReqState
// record; started queues are started when the replay ends.
func (s *session) applyFlags(p []byte) error {
	var f sessionFlags
	if err := f.UnmarshalBinary(p); err != nil {
		return err
	}
	if len(f.Queues) != len(s.queues) {
		return fmt.Errorf("session flags: %d queues, the device has %d", len(f.Queues), len(s.queues))
	}
	s.mapped = f.Mapped
	s.needReset.Store(f.NeedReset)
	for i, q := range s.queues {
		q.enabled.Store(f.Queues[i].Enabled)
		q.mu.Lock()
		q.resumeStart = f.Queues[i].Started
		q.mu.Unlock()
	}
	return nil
}

// dupFd duplicates the descriptor behind c (an *os.File or a socket)
// without switching it to blocking mode, as Fd would.
func dupFd(c syscall.Conn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) { nfd, derr = dupCloexec(int(fd)) }); err != nil {
		return -1, err
	}
	return nfd, derr
}

// dupCloexec duplicates fd with close-on-exec set.
func dupCloexec(fd int) (int, error) {
	return unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
}

// snapshot returns the records that bring a fresh session, replaying, to
// this session's state: protocol features, back-end channel, memory
// table, inflight area, each ring's size, base, addresses and eventfds,
// the acked features, the kick fds of rings that have one, the status,
// and last the flags (sessionFlags). Every fd in the records is a
// duplicate the caller closes. It runs on the message loop's goroutine
// (the state it reads changes only there).
func (s *session) snapshot() (recs []journalEntry, err error) {
	defer func() {
		if err != nil {
			for _, r := range recs {
				closeFds(r.fds)
			}
			recs = nil
		}
	}()
	add := func(rt RequestType, p []byte, fds ...int) { recs = append(recs, rec(rt, p, fds...)) }
	if proto := s.proto.Load(); proto != 0 {
		add(ReqSetProtocolFeatures, u64(proto))
	}
	if ch := s.backendCh.Load(); ch != nil {
		fd, err := dupFd(ch.c)
		if err != nil {
			return recs, fmt.Errorf("back-end channel: %w", err)
		}
		add(ReqSetBackendReqFd, nil, fd)
	}
	if t := s.acquireMem(); t != nil {
		err := func() error {
			defer t.release()
			var mt MemTable
			var fds []int
			for _, r := range t.regions {
				fd, err := dupCloexec(r.fd)
				if err != nil {
					closeFds(fds)
					return fmt.Errorf("memory region gpa %#x: %w", r.GPA, err)
				}
				mt.Regions = append(mt.Regions, r.MemRegion)
				fds = append(fds, fd)
			}
			if len(mt.Regions) <= MaxMemTableRegions {
				p, _ := mt.MarshalBinary()
				add(ReqSetMemTable, p, fds...)
				return nil
			}
			for i, m := range mt.Regions {
				p, _ := SingleMemRegion{Region: m}.MarshalBinary()
				add(ReqAddMemReg, p, fds[i])
			}
			return nil
		}()
		if err != nil {
			return recs, err
		}
	}
	if s.inflight != nil {
		fd, err := dupCloexec(s.inflightFd)
		if err != nil {
			return recs, fmt.Errorf("inflight area: %w", err)
		}
		p, _ := InflightPayload{MmapSize: s.inflightSize, MmapOffset: s.inflightOff, NumQueues: s.inflightNQ, QueueSize: s.inflightQSize}.MarshalBinary()
		add(ReqSetInflightFd, p, fd)
	}
	flags := sessionFlags{Mapped: s.mapped, NeedReset: s.needReset.Load()}
	var kicks []journalEntry
	for _, q := range s.queues {
		qrecs, kick, qf, err := q.snapshot()
		recs = append(recs, qrecs...)
		if kick != nil {
			kicks = append(kicks, *kick)
		}
		if err != nil {
			for _, k := range kicks {
				closeFds(k.fds)
			}
			return recs, err
		}
		flags.Queues = append(flags.Queues, qf)
	}
	if s.featSet {
		add(ReqSetFeatures, u64(s.acked.Load()))
	}
	recs = append(recs, kicks...)
	if st := s.status.Load(); st != 0 {
		add(ReqSetStatus, u64(st))
	}
	p, err := flags.MarshalBinary()
	if err != nil {
		return recs, err
	}
	recs = append(recs, journalEntry{h: Header{Request: keeperReqState, Flags: FlagVersion, Size: uint32(len(p))}, p: p})
	return recs, nil
}

// compactJournal replaces the keeper's journal with a snapshot of the
// session. When the snapshot cannot be taken the journal is left as it is
// (it is still exact, only longer); when the keeper cannot be written it
// is dropped like a failing journal write (the keeper discards a
// replacement that was not committed).
func (s *session) compactJournal() {
	if s.keeper == nil {
		return
	}
	recs, err := s.snapshot()
	if err != nil {
		s.log.Warn("keeper: cannot compact the journal; it keeps growing until the next attempt", "err", err)
		s.appended, s.appendedFds = 0, 0
		return
	}
	defer func() {
		for _, r := range recs {
			closeFds(r.fds)
		}
	}()
	werr := s.keeper.writeMessage(Header{Request: keeperReqCompact, Flags: FlagVersion}, nil, nil)
	for _, r := range recs {
		if werr != nil {
			break
		}
		werr = s.keeper.writeMessage(r.h, r.p, r.fds)
	}
	if werr == nil {
		werr = s.keeper.writeMessage(Header{Request: keeperReqCommit, Flags: FlagVersion}, nil, nil)
	}
	if werr != nil {
		s.log.Warn("keeper: compacting the journal failed; this connection will not survive a restart", "err", werr)
		s.keeper.c.Close()
		s.keeper = nil
		return
	}
	s.appended, s.appendedFds = 0, 0
	s.log.Debug("keeper: journal compacted", "records", len(recs))
}

// rec is a journal record of a front-end request.
func rec(rt RequestType, p []byte, fds ...int) journalEntry {
	return journalEntry{h: Header{Request: uint32(rt), Flags: FlagVersion, Size: uint32(len(p))}, p: p, fds: fds}
}

// snapshot returns the ring's records (size, base, addresses, call and
// error eventfds), its kick record (nil when it has no kick fd and does
// not poll) and its flags; the fds are duplicates the caller closes.
func (q *queue) snapshot() (recs []journalEntry, kick *journalEntry, flags queueFlags, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	idx := uint32(q.index)
	if q.size != 0 {
		p, _ := VringState{Index: idx, Num: uint32(q.size)}.MarshalBinary()
		recs = append(recs, rec(ReqSetVringNum, p))
	}
	if q.lastAvail != 0 {
		p, _ := VringState{Index: idx, Num: uint32(q.lastAvail)}.MarshalBinary()
		recs = append(recs, rec(ReqSetVringBase, p))
	}
	if q.addrSet {
		p, _ := q.addr.MarshalBinary()
		recs = append(recs, rec(ReqSetVringAddr, p))
	}
	for _, e := range []struct {
		rt RequestType
		f  *os.File
	}{{ReqSetVringCall, q.call.Load()}, {ReqSetVringErr, q.errFd.Load()}} {
		if e.f == nil {
			continue
		}
		fd, err := dupFd(e.f)
		if err != nil {
			return recs, nil, flags, fmt.Errorf("vring %d %v fd: %w", idx, e.rt, err)
		}
		recs = append(recs, rec(e.rt, u64(uint64(idx)), fd))
	}
	switch {
	case q.pollMode:
		k := rec(ReqSetVringKick, u64(uint64(idx)|VringNoFd))
		kick = &k
	case q.kick != nil:
		fd, err := dupFd(q.kick)
		if err != nil {
			return recs, nil, flags, fmt.Errorf("vring %d kick fd: %w", idx, err)
		}
		k := rec(ReqSetVringKick, u64(uint64(idx)), fd)
		kick = &k
	}
	return recs, kick, queueFlags{Enabled: q.enabled.Load(), Started: q.started || q.resumeStart}, nil
}
