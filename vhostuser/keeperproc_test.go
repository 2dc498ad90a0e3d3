package vhostuser

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestKeeperPIDAndGone: KeeperPID names the process accepting on the
// socket (here this one) and reports nobody once it stops; KeeperGone
// waits for that.
func TestKeeperPIDAndGone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.sock")
	if _, ok := KeeperPID(path); ok {
		t.Fatal("KeeperPID: ok with no socket")
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if pid, ok := KeeperPID(path); !ok || pid != os.Getpid() {
		t.Fatalf("KeeperPID = %d, %v; want %d, true", pid, ok, os.Getpid())
	}
	if KeeperGone(path, 50*time.Millisecond) {
		t.Fatal("KeeperGone while a listener accepts")
	}
	l.Close()
	if !KeeperGone(path, 2*time.Second) {
		t.Fatal("KeeperGone: still accepting after close")
	}
}

// TestStartKeeperProcessFailures: a keeper that exits at once, or a
// missing command, is reported with the socket path and the log.
func TestStartKeeperProcessFailures(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.sock")
	if err := StartKeeperProcess(nil, path); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("no command: %v", err)
	}
	err := StartKeeperProcess([]string{"/bin/sh", "-c", "echo no keeper here; exit 3", "sh"}, path)
	if err == nil || !strings.Contains(err.Error(), "exited at start") || !strings.Contains(err.Error(), path+".log") {
		t.Fatalf("exiting keeper: %v", err)
	}
	if b, _ := os.ReadFile(path + ".log"); !strings.Contains(string(b), "no keeper here") {
		t.Fatalf("keeper log %q lacks its output", b)
	}
}
