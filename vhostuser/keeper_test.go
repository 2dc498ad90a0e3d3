package vhostuser

import (
	"net"
	"os"
	"path/filepath"
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
	c, kc2, journal, ok, err := s.fetchKeeper(Keeper{Path: path})
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
