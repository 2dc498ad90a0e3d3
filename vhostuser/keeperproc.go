package vhostuser

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// StartKeeperProcess runs command with the keeper socket path appended
// (the program's hidden keeper verb) as a keeper process in its own
// session, so that it outlives the server that starts it and a terminal's
// SIGINT, logging to path + ".log". It returns once the keeper accepts
// connections on path (or fails: the keeper exited, or 5 s passed). It is
// what Keeper.Start does for the daemon and for `vhost-user serve`.
func StartKeeperProcess(command []string, path string) error {
	if len(command) == 0 {
		return fmt.Errorf("keeper %s: no keeper command", path)
	}
	logf, err := os.OpenFile(path+".log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("keeper %s: %w", path, err)
	}
	defer logf.Close()
	cmd := exec.Command(command[0], append(slices.Clip(command[1:]), path)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("keeper %s: %w", path, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("keeper %s exited at start (see %s.log): %v", path, path, err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("keeper %s: not listening after 5 s (see %s.log)", path, path)
		}
	}
}

// KeeperPID returns the pid of the process accepting on the keeper socket
// path (SO_PEERCRED; 0 when the kernel does not say); ok is false when
// nobody accepts there.
func KeeperPID(path string) (pid int, ok bool) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return 0, false
	}
	defer c.Close()
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, true
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil || cerr != nil {
		return 0, true
	}
	return int(cred.Pid), true
}

// KeeperGone waits up to within for nobody to accept on the keeper
// socket path and reports whether that happened.
func KeeperGone(path string, within time.Duration) bool {
	for deadline := time.Now().Add(within); ; time.Sleep(20 * time.Millisecond) {
		if _, ok := KeeperPID(path); !ok {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}
