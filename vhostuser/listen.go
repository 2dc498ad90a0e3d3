package vhostuser

import (
	"context"
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// listenSocket creates a listening Unix socket at path with mode 0600 and
// unlink-on-close. who names the listener in errors ("listen", "keeper").
// A socket file that nobody accepts on (left by a crashed process) is
// replaced; a live socket is refused (another process serves it), and so
// is anything that is not a socket: a regular file someone put at the
// path is never unlinked.
//
// The mode is set on the socket before bind (Linux gives the file the
// socket inode's mode less the umask), not by changing the process-wide
// umask, which would race with files other goroutines create meanwhile.
func listenSocket(path, who string) (*net.UnixListener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s %s: exists and is not a socket (%s); not replacing it", who, path, fi.Mode().Type())
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s %s: another process is listening on it", who, path)
		}
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			return nil, fmt.Errorf("%s %s: removing the stale socket: %w", who, path, err)
		}
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var ferr error
		if err := c.Control(func(fd uintptr) { ferr = unix.Fchmod(int(fd), 0o600) }); err != nil {
			return err
		}
		return ferr
	}}
	l, err := lc.Listen(context.Background(), "unix", path)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", who, path, err)
	}
	ln := l.(*net.UnixListener)
	ln.SetUnlinkOnClose(true)
	// In case a kernel ignores the socket inode's mode: fix the file's
	// mode before anyone is served.
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Perm() != 0o600 {
		if err := os.Chmod(path, 0o600); err != nil {
			ln.Close()
			return nil, fmt.Errorf("%s %s: chmod 0600: %w", who, path, err)
		}
	}
	return ln, nil
}
