package vhostuser

import (
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The journal a restarted server takes over from the keeper is a list of
// front-end messages (QEMU's, as received) and session-flags records; the
// server replays it into a fresh session without answering and then
// starts the rings the journal left started. FuzzReplayJournal feeds that
// path arbitrary journals.

// replayDev is a one-queue device that completes every request.
type replayDev struct{}

func (replayDev) Features() uint64 {
	return FeatureVersion1 | FeatureEventIdx | FeatureIndirectDesc
}
func (replayDev) ProtocolFeatures() uint64 { return 0 }
func (replayDev) NumQueues() int           { return 1 }
func (replayDev) MaxQueueSize() int        { return 256 }
func (replayDev) GetConfig(off, size uint32) ([]byte, error) {
	return make([]byte, size), nil
}
func (replayDev) SetConfig(uint32, []byte) error { return nil }
func (replayDev) ShmemRegions() []uint64         { return nil }
func (replayDev) ShmemMappings() []ShmemMapping  { return nil }
func (replayDev) SetFeatures(uint64) error       { return nil }
func (replayDev) HandleRequest(r *Request)       { r.Complete(0) }

// replayFdSize is the size of every memfd a fuzzed journal carries;
// replayUserAddr is the seeds' front-end address of guest address 0.
const (
	replayFdSize   = 64 << 10
	replayUserAddr = 0x7f0000000000
)

func replayRecord(rt uint32, p []byte) []byte { return appendReplayRecord(nil, rt, p, 0) }

func replayState(fl sessionFlags) []byte { b, _ := fl.MarshalBinary(); return b }

func replayVS(index, num uint32) []byte { b, _ := VringState{index, num}.MarshalBinary(); return b }

func replayMarshal(m interface{ MarshalBinary() ([]byte, error) }) []byte {
	b, _ := m.MarshalBinary()
	return b
}

// Fuzz input encoding: records one after another, each a 12-byte
// vhost-user header, one byte whose value mod 3 is the number of
// descriptors the record carries, then min(header size, what is left)
// payload bytes. At most maxReplayRecords records are decoded.
const maxReplayRecords = 64

func appendReplayRecord(b []byte, rt uint32, p []byte, nfds byte) []byte {
	h, _ := Header{Request: rt, Flags: FlagVersion, Size: uint32(len(p))}.MarshalBinary()
	b = append(b, h...)
	b = append(b, nfds)
	return append(b, p...)
}

// replayFd makes a descriptor of the kind the request carries: a 64 KiB
// memfd for memory and inflight areas and logs, a socket for the back-end
// channel, an eventfd otherwise.
func replayFd(t *testing.T, rt RequestType) int {
	switch rt {
	case ReqSetMemTable, ReqAddMemReg, ReqRemMemReg, ReqSetInflightFd, ReqSetLogBase, ReqSetLogFd, ReqSetDeviceStateFd:
		fd, err := unix.MemfdCreate("replay", unix.MFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Ftruncate(fd, replayFdSize); err != nil {
			t.Fatal(err)
		}
		return fd
	case ReqSetBackendReqFd:
		sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(sp[1])
		return sp[0]
	}
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

func decodeReplayJournal(t *testing.T, in []byte) []journalEntry {
	var recs []journalEntry
	for len(in) >= HeaderSize+1 && len(recs) < maxReplayRecords {
		var h Header
		if err := h.UnmarshalBinary(in[:HeaderSize]); err != nil {
			t.Fatal(err)
		}
		nfds := int(in[HeaderSize] % 3)
		in = in[HeaderSize+1:]
		n := min(int(h.Size), len(in))
		e := journalEntry{h: h, p: append([]byte(nil), in[:n]...)}
		in = in[n:]
		for range nfds {
			e.fds = append(e.fds, replayFd(t, RequestType(h.Request)))
		}
		recs = append(recs, e)
	}
	return recs
}

// openFds counts this process's open descriptors.
func openFds(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// replaySeeds are journals as a server writes them: a full one-queue
// set-up (features, a memory table, ring addresses inside it, eventfds, a
// started ring), the same with its snapshot's session flags, and a few
// broken ones.
func replaySeeds() [][]byte {
	ua := uint64(replayUserAddr)
	tbl := replayMarshal(MemTable{[]MemRegion{{GPA: 0, Size: replayFdSize, UserAddr: ua, MmapOffset: 0}}})
	addr := replayMarshal(VringAddr{Index: 0, Desc: ua, Avail: ua + 0x1000, Used: ua + 0x2000})
	var setup []byte
	setup = append(setup, replayRecord(uint32(ReqSetOwner), nil)...)
	setup = append(setup, replayRecord(uint32(ReqSetProtocolFeatures), u64(ProtoReplyAck|ProtoConfig))...)
	setup = append(setup, replayRecord(uint32(ReqSetFeatures), u64(FeatureVersion1|FeatureEventIdx))...)
	setup = appendReplayRecord(setup, uint32(ReqSetMemTable), tbl, 1)
	setup = append(setup, replayRecord(uint32(ReqSetVringNum), replayVS(0, 16))...)
	setup = append(setup, replayRecord(uint32(ReqSetVringBase), replayVS(0, 0))...)
	setup = append(setup, replayRecord(uint32(ReqSetVringAddr), addr)...)
	setup = appendReplayRecord(setup, uint32(ReqSetVringCall), u64(0), 1)
	setup = appendReplayRecord(setup, uint32(ReqSetVringErr), u64(0), 1)
	started := appendReplayRecord(append([]byte(nil), setup...), uint32(ReqSetVringKick), u64(0), 1)
	started = append(started, replayRecord(uint32(ReqSetVringEnable), replayVS(0, 1))...)
	snap := append(append([]byte(nil), started...), replayRecord(keeperReqState, replayState(sessionFlags{Queues: []queueFlags{{Enabled: true, Started: true}}}))...)
	// Flags that start a ring the journal never set up.
	bare := replayRecord(keeperReqState, replayState(sessionFlags{Mapped: true, NeedReset: true, Queues: []queueFlags{{Enabled: true, Started: true}}}))
	// A ring whose addresses lie outside the memory table.
	far := replayMarshal(VringAddr{Index: 0, Desc: ua + 0x10000000, Avail: ua + 0x1000, Used: ua + 0x2000})
	outside := append(append([]byte(nil), setup...), replayRecord(uint32(ReqSetVringAddr), far)...)
	outside = appendReplayRecord(outside, uint32(ReqSetVringKick), u64(0), 1)
	outside = append(outside, replayRecord(keeperReqState, replayState(sessionFlags{Queues: []queueFlags{{Started: true}}}))...)
	// A region larger than its descriptor, with the ring in the part the
	// descriptor does not have.
	big := replayMarshal(MemTable{[]MemRegion{{GPA: 0, Size: 1 << 20, UserAddr: ua}}})
	beyond := replayMarshal(VringAddr{Index: 0, Desc: ua + 0x80000, Avail: ua + 0x81000, Used: ua + 0x82000})
	var short []byte
	short = appendReplayRecord(short, uint32(ReqSetMemTable), big, 1)
	short = append(short, replayRecord(uint32(ReqSetVringNum), replayVS(0, 16))...)
	short = append(short, replayRecord(uint32(ReqSetVringAddr), beyond)...)
	short = appendReplayRecord(short, uint32(ReqSetVringKick), u64(0), 1)
	short = append(short, replayRecord(keeperReqState, replayState(sessionFlags{Queues: []queueFlags{{Enabled: true, Started: true}}}))...)
	return [][]byte{setup, started, snap, bare, outside, short,
		replayRecord(keeperReqState, []byte{2, 0, 0, 0}),
		appendReplayRecord(nil, uint32(ReqSetVringCall), u64(0), 2),
		replayRecord(uint32(ReqGetConfig), make([]byte, 12)),
	}
}

// FuzzReplayJournal: whatever the journal holds, replay and the ring
// restart after it return (an error or not) without a panic or a fault;
// a failed replay names the record by index and request; and after the
// session's teardown every descriptor the journal carried is closed.
func FuzzReplayJournal(f *testing.F) {
	for _, s := range replaySeeds() {
		f.Add(s)
	}
	srv, err := NewServer(replayDev{}, quietKeeperLog())
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		before := openFds(t)
		sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(sp[1])
		c, err := unixConnFromFd(sp[0], "replay")
		if err != nil {
			t.Fatal(err)
		}
		recs := decodeReplayJournal(t, in)
		sess := newSession(srv, c)
		rerr := sess.replay(recs)
		if rerr != nil {
			if !strings.HasPrefix(rerr.Error(), "record ") {
				t.Fatalf("replay error %q does not name the record", rerr)
			}
		} else {
			_ = sess.finishReplay()
		}
		sess.teardown()
		if after := openFds(t); after > before {
			t.Fatalf("%d descriptors open after the teardown, %d before", after, before)
		}
	})
}

// TestReplaySeedsReplay: the well-formed seed journals replay cleanly
// and the two that leave the ring started restart it (a control for the fuzz target:
// it reaches the ring start, not only refusals).
func TestReplaySeedsReplay(t *testing.T) {
	srv, err := NewServer(replayDev{}, quietKeeperLog())
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range replaySeeds()[:3] {
		sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(sp[1])
		c, err := unixConnFromFd(sp[0], "replay")
		if err != nil {
			t.Fatal(err)
		}
		sess := newSession(srv, c)
		if err := sess.replay(decodeReplayJournal(t, s)); err != nil {
			t.Fatalf("seed %d: %v", i, err)
		}
		if err := sess.finishReplay(); err != nil {
			t.Fatalf("seed %d: restart: %v", i, err)
		}
		q := sess.queues[0]
		q.mu.Lock()
		running := q.started
		q.mu.Unlock()
		if want := i > 0; running != want {
			t.Errorf("seed %d: ring running %v, want %v", i, running, want)
		}
		sess.teardown()
	}
}
