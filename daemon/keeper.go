package daemon

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"time"

	"golang.org/x/sys/unix"
)

// KeeperCommand is the command (the nvdimm-backend binary and its hidden
// keeper verb) that runs a vhost-user connection keeper; the socket path
// is appended. When set, every vhost-user server keeps its front-end
// connection in a keeper process, so that a daemon restart (or crash) is
// invisible to QEMU (see vhostuser.Keeper). nil (as in tests): no keeper.
var KeeperCommand []string

// startKeeper starts a keeper on path in its own session (it must outlive
// the daemon) and waits until it accepts connections. Its log goes to
// path + ".log".
func startKeeper(path string) error {
	if len(KeeperCommand) == 0 {
		return fmt.Errorf("keeper %s: no keeper command", path)
	}
	logf, err := os.OpenFile(path+".log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("keeper %s: %w", path, err)
	}
	defer logf.Close()
	cmd := exec.Command(KeeperCommand[0], append(KeeperCommand[1:], path)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("keeper %s: %w", path, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	for deadline := time.Now().Add(5 * time.Second); ; {
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
			return fmt.Errorf("keeper %s: not listening after 5 s", path)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
