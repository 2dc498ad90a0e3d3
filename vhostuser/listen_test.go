package vhostuser

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestListenSocket: the socket is 0600 whatever the umask, a live socket
// is refused, a stale one (nobody accepting) is replaced, and a regular
// file at the path is refused and left as it was; closing unlinks.
func TestListenSocket(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	old := unix.Umask(0)
	ln, err := listenSocket(path, "listen")
	unix.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket %v %v: want a 0600 socket", fi.Mode(), err)
	}
	if _, err := listenSocket(path, "listen"); err == nil || !strings.Contains(err.Error(), "another process is listening") {
		t.Fatalf("second listener on a live socket: %v", err)
	}
	ln.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("socket left after close: %v", err)
	}

	// A stale socket: bound, never unlinked, nobody accepting.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	ln, err = listenSocket(path, "listen")
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("replacement does not accept: %v", err)
	}
	c.Close()
	ln.Close()

	// A regular file is nobody's socket: refused and kept.
	if err := os.WriteFile(path, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := listenSocket(path, "listen"); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("regular file: %v", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "precious" {
		t.Fatalf("regular file changed: %q %v", b, err)
	}
}

// TestListenersShareTheRules: Server.Listen and RunKeeper both refuse a
// regular file and a live socket.
func TestListenersShareTheRules(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := RunKeeper(file, nil); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("keeper on a regular file: %v", err)
	}
	s := &Server{}
	if err := s.Listen(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("server on a regular file: %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "x" {
		t.Fatal("regular file changed")
	}
	live := filepath.Join(dir, "live.sock")
	ln, err := listenSocket(live, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() { done <- RunKeeper(live, nil) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "another process is listening") {
			t.Fatalf("keeper on a live socket: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("keeper on a live socket did not refuse")
	}
	if err := s.Listen(live); err == nil || !strings.Contains(err.Error(), "another process is listening") {
		t.Fatalf("server on a live socket: %v", err)
	}
}
