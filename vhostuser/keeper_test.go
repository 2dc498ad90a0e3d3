package vhostuser

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestKeeperHoldsAndHandsOver: a keeper given a connection and a journal
// (with an fd) hands both to the next server, keeps the connection open
// while no server runs, and exits when told to drop it, after which the
// front-end sees the connection close.
func TestKeeperHoldsAndHandsOver(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.sock")
	done := make(chan error, 1)
	go func() { done <- RunKeeper(path, nil) }()
	for i := 0; ; i++ {
		if _, err := os.Stat(path); err == nil {
			break
		}
		if i > 200 {
			t.Fatal("keeper did not listen")
		}
		time.Sleep(5 * time.Millisecond)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	front, err := unixConnFromFd(fds[0], "front-end")
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	back, err := unixConnFromFd(fds[1], "back-end")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{}
	kc, err := s.attachKeeper(Keeper{Path: path}, back)
	if err != nil {
		t.Fatal(err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	sess := &session{keeper: kc}
	sess.journal(Header{Request: uint32(ReqSetOwner), Flags: FlagVersion}, nil, nil)
	sess.journal(Header{Request: uint32(ReqSetVringCall), Flags: FlagVersion}, u64(0), []int{efd})
	unix.Close(efd)
	// The back-end process "dies": its ends close, the keeper's stay.
	kc.c.Close()
	back.Close()
	front.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := front.Read(make([]byte, 1)); err == nil || !os.IsTimeout(err) {
		t.Fatalf("front-end read %v: want a timeout (connection still open)", err)
	}
	c, kc2, journal, ok, err := s.fetchKeeper(Keeper{Path: path}, false)
	if err != nil || !ok {
		t.Fatalf("fetch: ok %v err %v", ok, err)
	}
	if len(journal) != 2 || RequestType(journal[0].h.Request) != ReqSetOwner || RequestType(journal[1].h.Request) != ReqSetVringCall || len(journal[1].fds) != 1 {
		t.Fatalf("journal %+v", journal)
	}
	// The handed-over connection is the front-end's.
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	front.SetReadDeadline(time.Now().Add(time.Second))
	b := make([]byte, 1)
	if n, err := front.Read(b); n != 1 || b[0] != 'x' {
		t.Fatalf("front-end read %d %v", n, err)
	}
	closeFds(journal[1].fds)
	c.Close()
	kc2.c.Close()
	dropKeeper(path)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("keeper did not exit when told to drop the connection")
	}
	front.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := front.Read(b); err == nil {
		t.Fatal("front-end connection still open after the keeper dropped it")
	}
	if _, err := net.Dial("unix", path); err == nil {
		t.Fatal("keeper socket still accepting")
	}
}

// TestKeeperCompactionIsAtomic kills the compacting server at every step:
// after keeperReqCompact and each record of the replacement the keeper
// still hands over the old journal, and only after keeperReqCommit the
// new one; a replacement never mixes with the old records.
func TestKeeperCompactionIsAtomic(t *testing.T) {
	rec := func(rt RequestType, p []byte, withFd bool) journalEntry {
		e := journalEntry{h: Header{Request: uint32(rt), Flags: FlagVersion}, p: p}
		if withFd {
			fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
			if err != nil {
				t.Fatal(err)
			}
			e.fds = []int{fd}
		}
		return e
	}
	kinds := func(j []journalEntry) []uint32 {
		var out []uint32
		for _, e := range j {
			out = append(out, e.h.Request)
		}
		return out
	}
	oldJ := []journalEntry{rec(ReqSetOwner, nil, false), rec(ReqSetVringCall, u64(0), true), rec(ReqSetFeatures, u64(1<<32), false), rec(ReqSetVringKick, u64(0), true)}
	newJ := []journalEntry{rec(ReqSetProtocolFeatures, u64(ProtoReplyAck), false), rec(ReqSetVringCall, u64(0), true), rec(keeperReqState, []byte{1, 0, 1, 0, 1}, false)}
	defer func() {
		for _, e := range append(oldJ, newJ...) {
			closeFds(e.fds)
		}
	}()
	for k := 0; k <= len(newJ)+1; k++ {
		path := filepath.Join(t.TempDir(), "k.sock")
		done := make(chan error, 1)
		go func() { done <- RunKeeper(path, quietKeeperLog()) }()
		waitListening(t, path)
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		front, _ := unixConnFromFd(fds[0], "front-end")
		back, _ := unixConnFromFd(fds[1], "back-end")
		s := &Server{}
		kc, err := s.attachKeeper(Keeper{Path: path}, back)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range oldJ {
			if err := kc.writeMessage(e.h, e.p, e.fds); err != nil {
				t.Fatal(err)
			}
		}
		// The server dies after sending k steps of a compaction: the
		// compact request, then records, then (k = len+1) the commit.
		steps := []journalEntry{{h: Header{Request: keeperReqCompact, Flags: FlagVersion}}}
		steps = append(steps, newJ...)
		steps = append(steps, journalEntry{h: Header{Request: keeperReqCommit, Flags: FlagVersion}})
		for _, e := range steps[:k+1] {
			if err := kc.writeMessage(e.h, e.p, e.fds); err != nil {
				t.Fatal(err)
			}
		}
		kc.c.Close()
		back.Close()
		want := oldJ
		if k == len(newJ)+1 {
			want = newJ
		}
		// The keeper reads each channel on its own goroutine, so a fetch
		// can overtake what it has not read yet: poll until the expected
		// journal appears, then make sure it stays (no late change).
		fetch := func() []journalEntry {
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				c, kc2, j, ok, err := s.fetchKeeper(Keeper{Path: path}, true)
				if err != nil {
					t.Fatalf("k=%d: fetch: %v", k, err)
				}
				if ok {
					c.Close()
					kc2.c.Close()
					if slices.Equal(kinds(j), kinds(want)) || time.Now().After(deadline) {
						return j
					}
					for _, e := range j {
						closeFds(e.fds)
					}
				} else if time.Now().After(deadline) {
					t.Fatalf("k=%d: the keeper holds no connection", k)
				}
			}
		}
		got := fetch()
		for _, e := range got {
			closeFds(e.fds)
		}
		time.Sleep(50 * time.Millisecond)
		got = fetch()
		if !slices.Equal(kinds(got), kinds(want)) {
			t.Fatalf("k=%d: journal %#x, want %#x", k, kinds(got), kinds(want))
		}
		for i, e := range got {
			if !bytes.Equal(e.p, want[i].p) || len(e.fds) != len(want[i].fds) {
				t.Fatalf("k=%d: record %d: payload %x with %d fds, want %x with %d", k, i, e.p, len(e.fds), want[i].p, len(want[i].fds))
			}
			closeFds(e.fds)
		}
		front.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("keeper did not exit after the front-end hung up")
		}
	}
}

func quietKeeperLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func waitListening(t *testing.T, path string) {
	t.Helper()
	for i := 0; ; i++ {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return
		}
		if i > 500 {
			t.Fatal("keeper did not listen")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestKeeperJournalsOnlyFromTheCurrentServer: a takeover waits for the
// previous server's channel to be read to its end (its last records are
// in the journal handed over), and records from a channel that is not the
// current server's are dropped, so a stale server cannot append to the
// journal of the one that took over.
func TestKeeperJournalsOnlyFromTheCurrentServer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.sock")
	done := make(chan error, 1)
	go func() { done <- RunKeeper(path, quietKeeperLog()) }()
	waitListening(t, path)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	front, _ := unixConnFromFd(fds[0], "front-end")
	back, _ := unixConnFromFd(fds[1], "back-end")
	defer front.Close()
	s := &Server{}
	kc, err := s.attachKeeper(Keeper{Path: path}, back)
	if err != nil {
		t.Fatal(err)
	}
	back.Close()
	// The keeper reads the channel on its own goroutine: wait until it
	// holds the connection (and the first server is the current one).
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		c, pk, _, ok, err := s.fetchKeeper(Keeper{Path: path}, true)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			c.Close()
			pk.c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the keeper never held the connection")
		}
	}
	// The first server's last records, then its death.
	for i := 0; i < 50; i++ {
		if err := kc.writeMessage(Header{Request: uint32(ReqSetStatus), Flags: FlagVersion}, u64(uint64(i)), nil); err != nil {
			t.Fatal(err)
		}
	}
	kc.c.Close()
	c, kc2, j, ok, err := s.fetchKeeper(Keeper{Path: path}, false)
	if err != nil || !ok {
		t.Fatalf("takeover: %v %v", ok, err)
	}
	c.Close()
	if len(j) != 50 {
		t.Fatalf("takeover got %d records, want all 50 the previous server sent", len(j))
	}
	// A channel that never held or took over the connection.
	stale, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	smc := &msgConn{c: stale, name: "stale"}
	for _, rt := range []uint32{uint32(ReqSetOwner), keeperReqCompact, keeperReqCommit} {
		if err := smc.writeMessage(Header{Request: rt, Flags: FlagVersion}, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	stale.Close()
	// The current server's record is kept.
	if err := kc2.writeMessage(Header{Request: uint32(ReqSetOwner), Flags: FlagVersion}, nil, nil); err != nil {
		t.Fatal(err)
	}
	peek := func() []journalEntry {
		c, kc3, j, ok, err := s.fetchKeeper(Keeper{Path: path}, true)
		if err != nil || !ok {
			t.Fatalf("peek: %v %v", ok, err)
		}
		c.Close()
		kc3.c.Close()
		return j
	}
	var j2 []journalEntry
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if j2 = peek(); len(j2) >= 51 || time.Now().After(deadline) {
			break
		}
	}
	time.Sleep(50 * time.Millisecond)
	j2 = peek()
	if len(j2) != 51 || RequestType(j2[50].h.Request) != ReqSetOwner {
		t.Fatalf("journal of %d records after a stale server's records; want 51 ending with the current server's SET_OWNER", len(j2))
	}
	kc2.c.Close()
	front.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("keeper did not exit")
	}
}
