package memfile

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHelperLockHolder is not a test: run by startHolder in a child
// process, it locks the backing named in the environment, says "locked"
// and holds the lock until its stdin closes.
func TestHelperLockHolder(t *testing.T) {
	path := os.Getenv("MEMFILE_HELPER_LOCK_PATH")
	if path == "" {
		t.Skip("helper process only")
	}
	kind := LockExclusive
	if os.Getenv("MEMFILE_HELPER_LOCK_KIND") == "shared" {
		kind = LockShared
	}
	b, err := Open(path, OpenOptions{ReadOnly: kind == LockShared})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	if err := b.Lock(kind, false); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("locked")
	_, _ = io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

// startHolder runs a child process that holds a lock of kind on path and
// returns a function that makes it exit.
func startHolder(t *testing.T, path, kind string) func() {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperLockHolder$", "-test.count=1")
	cmd.Env = append(os.Environ(), "MEMFILE_HELPER_LOCK_PATH="+path, "MEMFILE_HELPER_LOCK_KIND="+kind)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "locked" {
		stdin.Close()
		_ = cmd.Wait()
		t.Fatalf("helper: %q, %v", line, err)
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		stdin.Close()
		_ = cmd.Wait()
	}
	t.Cleanup(stop)
	return stop
}

func TestLockBetweenProcesses(t *testing.T) {
	p := filepath.Join(t.TempDir(), "l.img")
	b, err := Create(p, CreateOptions{Size: 2 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	// Another process uses it writable: we can neither write nor read.
	stop := startHolder(t, p, "exclusive")
	if err := b.Lock(LockExclusive, false); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "a writer (exclusive lock) holds it, probably a running VM; stop it first") ||
		strings.Count(err.Error(), "stop it") != 1 || strings.Count(err.Error(), "running VM") != 1 {
		t.Fatalf("exclusive vs exclusive: %v", err)
	}
	if err := b.Lock(LockShared, false); !errors.Is(err, ErrLocked) {
		t.Fatalf("shared vs exclusive: %v", err)
	}
	if in, err := Inspect(p, OpenOptions{}); err != nil || in.LockedBy != "exclusive" {
		t.Fatalf("inspect: %+v, %v", in.LockedBy, err)
	}
	if err := Remove(p); !errors.Is(err, ErrLocked) {
		t.Fatalf("remove while locked: %v", err)
	}
	// Waiting succeeds once the holder goes away.
	done := make(chan error, 1)
	go func() { done <- b.Lock(LockExclusive, true) }()
	select {
	case err := <-done:
		t.Fatalf("waiting lock returned early: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if b.Held() != LockExclusive {
		t.Fatalf("held %v", b.Held())
	}
	if err := b.Unlock(); err != nil {
		t.Fatal(err)
	}

	// Readers share; a writer is kept out.
	startHolder(t, p, "shared")
	if err := b.Lock(LockShared, false); err != nil {
		t.Fatalf("shared vs shared: %v", err)
	}
	if err := b.Unlock(); err != nil {
		t.Fatal(err)
	}
	if err := b.Lock(LockExclusive, false); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "a reader (shared lock)") {
		t.Fatalf("exclusive vs shared: %v", err)
	}
	if in, _ := Inspect(p, OpenOptions{}); in.LockedBy != "shared" {
		t.Fatalf("inspect: %q", in.LockedBy)
	}
}

func TestLockAfterClose(t *testing.T) {
	b, err := Create(filepath.Join(t.TempDir(), "c.img"), CreateOptions{Size: 2 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	if err := b.Lock(LockShared, false); err == nil {
		t.Fatal("lock after close")
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
}
