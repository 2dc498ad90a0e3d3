package qmp

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestErrorsNamePathOnce: every way of failing to reach or talk to a QMP
// socket gives an error that names the socket path exactly once (net's
// own "dial unix PATH" is not repeated), says why, and still matches the
// sentinels and errnos callers sort errors by.
func TestErrorsNamePathOnce(t *testing.T) {
	dir := t.TempDir()
	regular := filepath.Join(dir, "regular")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	subdir := filepath.Join(dir, "subdir")
	if err := os.Mkdir(subdir, 0o700); err != nil {
		t.Fatal(err)
	}
	// A socket file nobody listens on: bound, then closed without unlink.
	stale := filepath.Join(dir, "stale.qmp")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()

	type result struct {
		path string
		err  error
	}
	dial := func(path string) result {
		_, err := Dial(tctx(t), path, quiet)
		return result{path, err}
	}
	// command dials a fake server running handler and returns the error
	// of the command run runs after the handshake.
	command := func(handler func(f *fakeConn), run func(c *Client) error) func(t *testing.T) result {
		return func(t *testing.T) result {
			path, _ := fakeServer(t, handler)
			c := dialFake(t, path)
			return result{path, run(c)}
		}
	}
	hangUp := func(f *fakeConn) {
		if f.handshake() {
			f.readCommand() // hang up with this command pending
		}
	}
	cases := []struct {
		name string
		do   func(t *testing.T) result
		want string  // the reason, in the text
		is   []error // sentinels the error must match
	}{
		{"missing", func(*testing.T) result { return dial(filepath.Join(dir, "none.qmp")) },
			"connect: no such file or directory", []error{fs.ErrNotExist, syscall.ENOENT}},
		{"parent not a directory", func(*testing.T) result { return dial(filepath.Join(regular, "vm.qmp")) },
			"connect: not a directory", []error{syscall.ENOTDIR}},
		{"regular file", func(*testing.T) result { return dial(regular) },
			"not a Unix socket (it is a regular file)", []error{syscall.ECONNREFUSED}},
		{"directory", func(*testing.T) result { return dial(subdir) },
			"not a Unix socket (it is a directory)", []error{syscall.ECONNREFUSED}},
		{"nobody listening", func(*testing.T) result { return dial(stale) },
			"connect: connection refused (nothing listens on it", []error{syscall.ECONNREFUSED}},
		{"not QMP", func(t *testing.T) result {
			path, _ := fakeServer(t, func(f *fakeConn) { f.sendRaw("SSH-2.0-OpenSSH_9.2\r\n") })
			return dial(path)
		}, "not a QMP socket: reading greeting: malformed QMP message: invalid JSON", []error{ErrMalformed}},
		{"closes before greeting", func(t *testing.T) result {
			path, _ := fakeServer(t, func(f *fakeConn) {})
			return dial(path)
		}, "connection closed before the QMP greeting", nil},
		{"greeting timeout", func(t *testing.T) result {
			path, _ := fakeServer(t, func(f *fakeConn) { f.readCommand() })
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			_, err := Dial(ctx, path, quiet)
			return result{path, err}
		}, "no QMP greeting (not a QMP socket, or another client holds the monitor)", []error{context.DeadlineExceeded}},
		{"hang-up during negotiation", func(t *testing.T) result {
			path, _ := fakeServer(t, func(f *fakeConn) {
				f.sendRaw(fakeGreeting)
				f.readCommand()
			})
			return dial(path)
		}, "capabilities negotiation: QMP connection closed by QEMU (EOF)", []error{ErrClosed}},
		{"hang-up mid-command", command(hangUp, func(c *Client) error {
			_, err := c.QueryStatus(tctx(t))
			return err
		}), "query-status: QMP connection closed by QEMU (EOF)", []error{ErrClosed}},
		{"command after hang-up", command(hangUp, func(c *Client) error {
			c.Execute(tctx(t), "stop", nil, nil)
			<-c.Done()
			return c.Execute(tctx(t), "cont", nil, nil)
		}), "cont: QMP connection closed by QEMU (EOF)", []error{ErrClosed}},
		{"closed by the client", command(hangUp, func(c *Client) error {
			c.Close()
			return c.Execute(tctx(t), "cont", nil, nil)
		}), "cont: QMP connection closed by the client", []error{ErrClosed}},
		{"hang-up awaiting DEVICE_DELETED", command(func(f *fakeConn) {
			if !f.handshake() {
				return
			}
			if c, err := f.readCommand(); err == nil {
				f.reply(c, map[string]any{}) // accept device_del, then hang up
			}
		}, func(c *Client) error {
			return c.DeviceDelWait(tctx(t), "pm0")
		}), "waiting for DEVICE_DELETED of pm0: QMP connection closed by QEMU (EOF)", []error{ErrClosed}},
		{"Err after hang-up", command(hangUp, func(c *Client) error {
			c.Execute(tctx(t), "stop", nil, nil)
			return c.Err()
		}), "QMP connection closed by QEMU (EOF)", []error{ErrClosed}},
		{"refused command", command(func(f *fakeConn) {
			if !f.handshake() {
				return
			}
			c, _ := f.readCommand()
			f.send(map[string]any{"error": map[string]string{"class": "GenericError", "desc": "nope"}, "id": c.ID})
		}, func(c *Client) error { return c.Execute(tctx(t), "object-del", map[string]any{"id": "x"}, nil) }),
			"object-del: GenericError: nope", nil},
		{"getfd without a file", command(hangUp, func(c *Client) error {
			return c.GetFD(tctx(t), "fd0", nil)
		}), "getfd: no file given", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.do(t)
			if r.err == nil {
				t.Fatal("no error")
			}
			msg := r.err.Error()
			if n := strings.Count(msg, r.path); n != 1 {
				t.Errorf("%q names the socket %d times, want 1", msg, n)
			}
			if !strings.HasPrefix(msg, "qmp "+r.path+": ") {
				t.Errorf("%q does not start with the socket", msg)
			}
			if !strings.Contains(msg, tc.want) {
				t.Errorf("%q does not say %q", msg, tc.want)
			}
			if strings.Contains(msg, "dial unix") {
				t.Errorf("%q repeats net's dial text", msg)
			}
			for _, s := range tc.is {
				if !errors.Is(r.err, s) {
					t.Errorf("%q does not match %v", msg, s)
				}
			}
		})
	}
}

// TestConnectErrorKeepsNetError: the connect failure's text is rebuilt,
// but net's error is still in the chain for errors.As.
func TestConnectErrorKeepsNetError(t *testing.T) {
	p := filepath.Join(t.TempDir(), "none.qmp")
	_, err := Dial(tctx(t), p, quiet)
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "dial" {
		t.Fatalf("%v: no *net.OpError in the chain", err)
	}
	var se *os.SyscallError
	if !errors.As(err, &se) || se.Syscall != "connect" {
		t.Fatalf("%v: no connect *os.SyscallError in the chain", err)
	}
}
