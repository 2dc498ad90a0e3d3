package qmp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeConn is the server side of one connection to a fake QMP server.
type fakeConn struct {
	t   *testing.T
	c   *net.UnixConn
	buf []byte
	fds []int
}

type fakeCmd struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
	fds       []int
}

// readCommand reads one newline-terminated command, collecting any
// SCM_RIGHTS descriptors that came with its bytes.
func (f *fakeConn) readCommand() (fakeCmd, error) {
	for {
		if i := bytes.IndexByte(f.buf, '\n'); i >= 0 {
			line := f.buf[:i]
			f.buf = f.buf[i+1:]
			var c fakeCmd
			if err := json.Unmarshal(line, &c); err != nil {
				return c, fmt.Errorf("fake server: bad command %q: %v", line, err)
			}
			c.fds, f.fds = f.fds, nil
			return c, nil
		}
		p := make([]byte, 64<<10)
		oob := make([]byte, unix.CmsgSpace(4*8))
		n, oobn, _, _, err := f.c.ReadMsgUnix(p, oob)
		if err != nil {
			return fakeCmd{}, err
		}
		if oobn > 0 {
			msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
			if err != nil {
				return fakeCmd{}, err
			}
			for _, m := range msgs {
				fds, err := unix.ParseUnixRights(&m)
				if err != nil {
					return fakeCmd{}, err
				}
				f.fds = append(f.fds, fds...)
			}
		}
		f.buf = append(f.buf, p[:n]...)
	}
}

func (f *fakeConn) sendRaw(s string) {
	if _, err := f.c.Write([]byte(s)); err != nil {
		f.t.Logf("fake server write: %v", err)
	}
}

func (f *fakeConn) send(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		f.t.Errorf("fake server: %v", err)
		return
	}
	f.sendRaw(string(b) + "\r\n")
}

func (f *fakeConn) reply(c fakeCmd, ret any) {
	f.send(map[string]any{"return": ret, "id": c.ID})
}

const fakeGreeting = `{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "fake"}, "capabilities": ["oob"]}}` + "\r\n"

// handshake greets and answers qmp_capabilities.
func (f *fakeConn) handshake() bool {
	f.sendRaw(fakeGreeting)
	c, err := f.readCommand()
	if err != nil || c.Execute != "qmp_capabilities" {
		f.t.Errorf("fake server: first command %+v, %v; want qmp_capabilities", c, err)
		return false
	}
	f.reply(c, map[string]any{})
	return true
}

// fakeServer listens on a fresh socket and runs handler on the first
// connection. The returned wait blocks until the handler has returned.
func fakeServer(t *testing.T, handler func(f *fakeConn)) (path string, wait func()) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "fake.qmp")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conn *net.UnixConn
	wg.Go(func() {
		c, err := l.AcceptUnix()
		if err != nil {
			return
		}
		mu.Lock()
		conn = c
		mu.Unlock()
		defer c.Close()
		handler(&fakeConn{t: t, c: c})
	})
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		if conn != nil {
			conn.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return path, wg.Wait
}

// serveEcho answers every command with {"cmd": name, "args": arguments}
// until the client goes away.
func serveEcho(f *fakeConn) {
	if f.handshake() {
		echoLoop(f)
	}
}

func echoLoop(f *fakeConn) {
	for {
		c, err := f.readCommand()
		if err != nil {
			return
		}
		f.reply(c, map[string]any{"cmd": c.Execute, "args": c.Arguments})
	}
}
