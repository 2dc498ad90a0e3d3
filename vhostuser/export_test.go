package vhostuser

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Test hooks for the external tests (they use vhostuser/frontend, which
// imports this package).

// KeeperJournalStats fetches the journal of the keeper at path (as a
// restarted server would) and returns its record and descriptor counts;
// everything fetched is closed again.
func KeeperJournalStats(path string) (records, fds int, err error) {
	c, kc, j, err := fetchForTest(path)
	if err != nil {
		return 0, 0, err
	}
	c.Close()
	kc.c.Close()
	for _, e := range j {
		fds += len(e.fds)
		closeFds(e.fds)
	}
	return len(j), fds, nil
}

func fetchForTest(path string) (*net.UnixConn, *msgConn, []journalEntry, error) {
	c, kc, j, ok, err := (&Server{}).fetchKeeper(Keeper{Path: path}, true)
	if err != nil {
		return nil, nil, nil, err
	}
	if !ok {
		return nil, nil, nil, errors.New("the keeper holds no connection")
	}
	return c, kc, j, nil
}

// SnapshotCheck is the exactness check of journal compaction. It fetches
// the journal of the keeper at path, replays it into a fresh session of
// s (A), replays A's snapshot into another (B), and the journal without
// its last record into a third (C). It returns the differences between A
// and B (want none), between A and C (a control: some when the last
// record changed the state), and the journal's and the snapshot's record
// counts.
func SnapshotCheck(s *Server, path string) (ab, ac []string, journal, snapshot int, err error) {
	c, kc, j, err := fetchForTest(path)
	if err != nil {
		return nil, nil, 0, 0, err
	}
	c.Close()
	kc.c.Close()
	defer func() {
		for _, e := range j {
			closeFds(e.fds)
		}
	}()
	dup := func(es []journalEntry) []journalEntry {
		out := make([]journalEntry, len(es))
		for i, e := range es {
			out[i] = journalEntry{h: e.h, p: e.p}
			for _, fd := range e.fds {
				nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
				if err != nil {
					panic(err)
				}
				out[i].fds = append(out[i].fds, nfd)
			}
		}
		return out
	}
	a, err := replayForTest(s, dup(j))
	if err != nil {
		return nil, nil, 0, 0, fmt.Errorf("replaying the journal: %w", err)
	}
	defer a.teardown()
	snap, err := a.snapshot()
	if err != nil {
		return nil, nil, 0, 0, fmt.Errorf("snapshot: %w", err)
	}
	b, err := replayForTest(s, snap)
	if err != nil {
		return nil, nil, 0, 0, fmt.Errorf("replaying the snapshot: %w", err)
	}
	defer b.teardown()
	var cs *session
	if len(j) > 0 {
		if cs, err = replayForTest(s, dup(j[:len(j)-1])); err != nil {
			return nil, nil, 0, 0, fmt.Errorf("replaying the shortened journal: %w", err)
		}
		defer cs.teardown()
	}
	if ab, err = diffSessions(a, b); err != nil {
		return nil, nil, 0, 0, err
	}
	if cs != nil {
		if ac, err = diffSessions(a, cs); err != nil {
			return nil, nil, 0, 0, err
		}
	}
	return ab, ac, len(j), len(snap), nil
}

// replayForTest replays records (whose fds it consumes) into a fresh
// session on a throw-away connection, as resume does, without starting
// rings.
func replayForTest(s *Server, recs []journalEntry) (*session, error) {
	drop := func() {
		for _, r := range recs {
			closeFds(r.fds)
		}
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		drop()
		return nil, err
	}
	unix.Close(fds[1])
	c, err := unixConnFromFd(fds[0], "replay")
	if err != nil {
		drop()
		return nil, err
	}
	sess := newSession(s, c)
	if err := sess.replay(recs); err != nil {
		sess.teardown()
		return nil, err
	}
	return sess, nil
}

// describe lists a session's state, and duplicates of its descriptors by
// role (the caller closes them).
func (s *session) describe() (lines []string, fds map[string]int) {
	fds = map[string]int{}
	addFd := func(name string, c syscall.Conn) {
		if fd, err := dupFd(c); err == nil {
			fds[name] = fd
		} else {
			lines = append(lines, name+": "+err.Error())
		}
	}
	lines = append(lines,
		fmt.Sprintf("proto %#x acked %#x featSet %v status %#x", s.proto.Load(), s.acked.Load(), s.featSet, s.status.Load()),
		fmt.Sprintf("needReset %v mapped %v", s.needReset.Load(), s.mapped))
	if ch := s.backendCh.Load(); ch != nil {
		lines = append(lines, "back-end channel")
		// The peer's end is what identifies the channel, and kcmp
		// cannot see it; its presence is what the replay must give.
	}
	if t := s.acquireMem(); t != nil {
		for _, r := range t.regions {
			name := fmt.Sprintf("region gpa %#x size %#x user %#x offset %#x", r.GPA, r.Size, r.UserAddr, r.MmapOffset)
			lines = append(lines, name)
			if fd, err := unix.FcntlInt(uintptr(r.fd), unix.F_DUPFD_CLOEXEC, 0); err == nil {
				fds[name] = fd
			}
		}
		t.release()
	}
	if s.inflight != nil {
		lines = append(lines, fmt.Sprintf("inflight size %d offset %d queues %d qsize %d", s.inflightSize, s.inflightOff, s.inflightNQ, s.inflightQSize))
		if fd, err := unix.FcntlInt(uintptr(s.inflightFd), unix.F_DUPFD_CLOEXEC, 0); err == nil {
			fds["inflight"] = fd
		}
	}
	for _, q := range s.queues {
		q.mu.Lock()
		start := q.started || q.resumeStart
		l := fmt.Sprintf("vring %d size %d addrSet %v addr %+v enabled %v start %v poll %v inflight %d",
			q.index, q.size, q.addrSet, q.addr, q.enabled.Load(), start, q.pollMode, len(q.inflight))
		if !start {
			l += fmt.Sprintf(" lastAvail %d", q.lastAvail)
		}
		lines = append(lines, l)
		kick := q.kick
		q.mu.Unlock()
		if kick != nil {
			addFd(fmt.Sprintf("vring %d kick", q.index), kick)
		}
		if f := q.call.Load(); f != nil {
			addFd(fmt.Sprintf("vring %d call", q.index), f)
		}
		if f := q.errFd.Load(); f != nil {
			addFd(fmt.Sprintf("vring %d err", q.index), f)
		}
	}
	return lines, fds
}

// sameFile reports whether two descriptors of this process share one
// open file description (kcmp KCMP_FILE).
func sameFile(a, b int) (bool, error) {
	pid := uintptr(os.Getpid())
	r, _, errno := syscall.Syscall6(unix.SYS_KCMP, pid, pid, 0 /* KCMP_FILE */, uintptr(a), uintptr(b), 0)
	if errno != 0 {
		return false, fmt.Errorf("kcmp: %w", errno)
	}
	return r == 0, nil
}

// ErrNoKcmp is returned by SnapshotCheck when descriptors cannot be
// compared here.
var ErrNoKcmp = errors.New("kcmp is not available")

func diffSessions(a, b *session) ([]string, error) {
	la, fa := a.describe()
	lb, fb := b.describe()
	defer func() {
		for _, fd := range fa {
			unix.Close(fd)
		}
		for _, fd := range fb {
			unix.Close(fd)
		}
	}()
	var diffs []string
	for i := 0; i < max(len(la), len(lb)); i++ {
		var x, y string
		if i < len(la) {
			x = la[i]
		}
		if i < len(lb) {
			y = lb[i]
		}
		if x != y {
			diffs = append(diffs, fmt.Sprintf("%q != %q", x, y))
		}
	}
	for name, fd := range fa {
		other, ok := fb[name]
		if !ok {
			diffs = append(diffs, name+": only in the first")
			continue
		}
		same, err := sameFile(fd, other)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrNoKcmp, err)
		}
		if !same {
			diffs = append(diffs, name+": another file")
		}
	}
	for name := range fb {
		if _, ok := fa[name]; !ok {
			diffs = append(diffs, name+": only in the second")
		}
	}
	return diffs, nil
}

// TestReplayConsumesFdsOnError: a record that fails stops the replay
// (named by index and request), and the descriptors of that record and of
// every record after it are closed, as resume relies on.
func TestReplayConsumesFdsOnError(t *testing.T) {
	var pipes [2][2]int
	for i := range pipes {
		if err := unix.Pipe2(pipes[i][:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(pipes[i][1])
	}
	recs := []journalEntry{
		// Version 2 session flags: refused by applyFlags.
		{h: Header{Request: keeperReqState, Flags: FlagVersion, Size: 4}, p: []byte{2, 0, 0, 0}, fds: []int{pipes[0][0]}},
		{h: Header{Request: uint32(ReqSetVringCall), Flags: FlagVersion, Size: 8}, p: u64(0), fds: []int{pipes[1][0]}},
	}
	s := &session{queues: []*queue{{index: 0}}}
	err := s.replay(recs)
	if err == nil || !strings.Contains(err.Error(), "record 0 (0xff06)") {
		t.Fatalf("replay: %v, want an error naming record 0 (0xff06)", err)
	}
	if s.replaying {
		t.Error("replaying still set after the replay")
	}
	// With every read end closed, a write fails with EPIPE.
	for i := range pipes {
		if _, err := unix.Write(pipes[i][1], []byte{0}); !errors.Is(err, unix.EPIPE) {
			t.Errorf("record %d: write to its pipe: %v, want EPIPE (read end still open)", i, err)
		}
	}
}
