package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var quiet = WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))

func dialFake(t *testing.T, path string, opt ...Option) *Client {
	t.Helper()
	c, err := Dial(tctx(t), path, append([]Option{quiet}, opt...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestDialAndExecute(t *testing.T) {
	path, _ := fakeServer(t, func(f *fakeConn) {
		if !f.handshake() {
			return
		}
		for {
			c, err := f.readCommand()
			if err != nil {
				return
			}
			switch c.Execute {
			case "query-version":
				f.reply(c, map[string]any{"qemu": map[string]int{"major": 10, "minor": 0, "micro": 2}, "package": "fake"})
			default:
				f.send(map[string]any{"error": map[string]string{"class": "CommandNotFound", "desc": "The command " + c.Execute + " has not been found"}, "id": c.ID})
			}
		}
	})
	c := dialFake(t, path)
	if g := c.Greeting(); g.Version.QEMU != (Version{10, 0, 2}) || len(g.Capabilities) != 1 || g.Capabilities[0] != "oob" {
		t.Errorf("greeting %+v", g)
	}
	v, err := c.QueryVersion(tctx(t))
	if err != nil || v.QEMU.String() != "10.0.2" || v.Package != "fake" || !v.QEMU.AtLeast(9, 2) || v.QEMU.AtLeast(10, 1) {
		t.Errorf("query-version %+v, %v", v, err)
	}
	err = c.Execute(tctx(t), "frobnicate", nil, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" || qe.Desc != "The command frobnicate has not been found" {
		t.Fatalf("error %v, want CommandNotFound kept", err)
	}
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "frobnicate") {
		t.Errorf("error %q does not name the socket and the command", err)
	}
}

func TestDialNotQMP(t *testing.T) {
	cases := []struct {
		name, banner string
		want         string
	}{
		{"ssh", "SSH-2.0-OpenSSH_9.2\r\n", "not a QMP socket"},
		{"json_not_greeting", `{"hello": "world"}` + "\n", "not a QMP socket"},
		{"reply_first", `{"return": {}}` + "\n", "not the greeting"},
		{"bad_greeting", `{"QMP": []}` + "\n", "not a QMP socket"},
		{"closes", "", "closed before the QMP greeting"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path, _ := fakeServer(t, func(f *fakeConn) { f.sendRaw(tc.banner) })
			_, err := Dial(tctx(t), path, quiet)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
				t.Fatalf("Dial: %v; want an error naming %s and saying %q", err, path, tc.want)
			}
		})
	}
	t.Run("silent", func(t *testing.T) {
		path, _ := fakeServer(t, func(f *fakeConn) { f.readCommand() })
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err := Dial(ctx, path, quiet)
		if err == nil || !strings.Contains(err.Error(), "no QMP greeting") || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Dial of a silent socket: %v", err)
		}
	})
	t.Run("missing", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "nope.qmp")
		_, err := Dial(tctx(t), p, quiet)
		if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), p) {
			t.Fatalf("Dial of a missing socket: %v", err)
		}
	})
	t.Run("capabilities_refused", func(t *testing.T) {
		path, _ := fakeServer(t, func(f *fakeConn) {
			f.sendRaw(fakeGreeting)
			c, _ := f.readCommand()
			f.send(map[string]any{"error": map[string]string{"class": "GenericError", "desc": "Capabilities negotiation is already complete"}, "id": c.ID})
		})
		_, err := Dial(tctx(t), path, quiet)
		var qe *Error
		if !errors.As(err, &qe) || !strings.Contains(err.Error(), "capabilities") {
			t.Fatalf("Dial: %v", err)
		}
	})
}

func TestOutOfOrderReplies(t *testing.T) {
	const n = 16
	path, _ := fakeServer(t, func(f *fakeConn) {
		if !f.handshake() {
			return
		}
		var cmds []fakeCmd
		for range n {
			c, err := f.readCommand()
			if err != nil {
				return
			}
			cmds = append(cmds, c)
		}
		for i := len(cmds) - 1; i >= 0; i-- { // newest first
			f.reply(cmds[i], string(cmds[i].Arguments))
		}
		echoLoop(f)
	})
	c := dialFake(t, path)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var got string
			args := map[string]int{"n": i}
			if err := c.Execute(tctx(t), "echo", args, &got); err != nil {
				t.Error(err)
				return
			}
			want, _ := json.Marshal(args)
			if got != string(want) {
				t.Errorf("command %d got reply %q", i, got)
			}
		})
	}
	wg.Wait()
}

func TestReplyOver1MiB(t *testing.T) {
	big := strings.Repeat("x", 3<<20)
	path, _ := fakeServer(t, func(f *fakeConn) {
		if !f.handshake() {
			return
		}
		c, err := f.readCommand()
		if err == nil {
			f.reply(c, big)
		}
	})
	c := dialFake(t, path)
	var got string
	if err := c.Execute(tctx(t), "big", nil, &got); err != nil || got != big {
		t.Fatalf("got %d bytes, %v", len(got), err)
	}
}

func TestMaxMessageSize(t *testing.T) {
	path, _ := fakeServer(t, func(f *fakeConn) {
		if !f.handshake() {
			return
		}
		c, err := f.readCommand()
		if err == nil {
			f.reply(c, strings.Repeat("x", 1<<20))
		}
		f.readCommand()
	})
	c := dialFake(t, path, WithMaxMessageSize(64<<10))
	err := c.Execute(tctx(t), "big", nil, nil)
	if !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "over 65536 bytes") {
		t.Fatalf("oversized reply: %v", err)
	}
}

func TestMalformedStream(t *testing.T) {
	path, _ := fakeServer(t, func(f *fakeConn) {
		if !f.handshake() {
			return
		}
		if _, err := f.readCommand(); err == nil {
			f.sendRaw("{\"return\": {}, \"id\": 1 garbage\r\n")
		}
		f.readCommand()
	})
	c := dialFake(t, path)
	err := c.Execute(tctx(t), "x", nil, nil)
	if !errors.Is(err, ErrClosed) || !errors.Is(err, ErrMalformed) {
		t.Fatalf("malformed stream: %v", err)
	}
	<-c.Done()
	if !errors.Is(c.Err(), ErrMalformed) {
		t.Errorf("Err() = %v", c.Err())
	}
}

// A reply that is valid JSON but not a valid message fails its own
// command only.
func TestMalformedReplyFailsItsCommand(t *testing.T) {
	path, _ := fakeServer(t, func(f *fakeConn) {
		if !f.handshake() {
			return
		}
		c, err := f.readCommand()
		if err != nil {
			return
		}
		f.send(map[string]any{"error": "not an object", "id": c.ID})
		f.send(map[string]any{"unknown": 1})
		echoLoop(f)
	})
	c := dialFake(t, path)
	if err := c.Execute(tctx(t), "x", nil, nil); !errors.Is(err, ErrMalformed) || errors.Is(err, ErrClosed) {
		t.Fatalf("malformed reply: %v", err)
	}
	if err := c.Execute(tctx(t), "y", nil, nil); err != nil {
		t.Fatalf("next command: %v", err)
	}
}

func TestDisconnectMidCommand(t *testing.T) {
	path, _ := fakeServer(t, func(f *fakeConn) {
		if !f.handshake() {
			return
		}
		for range 3 {
			if _, err := f.readCommand(); err != nil {
				return
			}
		}
		// Three commands pending: hang up.
	})
	c := dialFake(t, path)
	sub := c.Subscribe(4)
	errs := make(chan error, 3)
	for range 3 {
		go func() { errs <- c.Execute(context.Background(), "slow", nil, nil) }()
	}
	for range 3 {
		select {
		case err := <-errs:
			if !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "EOF") {
				t.Errorf("pending command: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a pending command did not fail when the socket closed")
		}
	}
	<-c.Done()
	if _, ok := <-sub.Events(); ok {
		t.Error("subscription channel still open after the connection closed")
	}
	if err := c.Execute(tctx(t), "after", nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("command after close: %v", err)
	}
	if s := c.Subscribe(1); s != nil {
		if _, ok := <-s.Events(); ok {
			t.Error("subscribing to a closed client gives an open channel")
		}
	}
}

func TestCloseFailsPending(t *testing.T) {
	path, _ := fakeServer(t, func(f *fakeConn) {
		if !f.handshake() {
			return
		}
		for {
			if _, err := f.readCommand(); err != nil {
				return
			}
		}
	})
	c := dialFake(t, path)
	errc := make(chan error, 1)
	go func() { errc <- c.Execute(context.Background(), "never", nil, nil) }()
	time.Sleep(20 * time.Millisecond)
	c.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "by the client") {
		t.Fatalf("pending at Close: %v", err)
	}
	c.Close() // idempotent
}

func TestContextDeadlineThenLateReply(t *testing.T) {
	release := make(chan struct{})
	path, _ := fakeServer(t, func(f *fakeConn) {
		if !f.handshake() {
			return
		}
		first, err := f.readCommand()
		if err != nil {
			return
		}
		<-release
		f.reply(first, "late") // its caller has given up
		echoLoop(f)
	})
	c := dialFake(t, path)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := c.Execute(ctx, "stuck", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "stuck") {
		t.Fatalf("stuck command: %v", err)
	}
	close(release)
	var got struct{ Cmd string }
	if err := c.Execute(tctx(t), "next", nil, &got); err != nil || got.Cmd != "next" {
		t.Fatalf("next command got %+v, %v", got, err)
	}
	c.mu.Lock()
	n := len(c.pending)
	c.mu.Unlock()
	if n != 0 {
		t.Errorf("%d pending entries left behind", n)
	}
}

func TestIDLessReplyGoesToOldest(t *testing.T) {
	path, _ := fakeServer(t, func(f *fakeConn) {
		if !f.handshake() {
			return
		}
		if _, err := f.readCommand(); err != nil {
			return
		}
		f.sendRaw(`{"error": {"class": "GenericError", "desc": "JSON parse error"}}` + "\n")
		f.readCommand()
	})
	c := dialFake(t, path)
	var qe *Error
	if err := c.Execute(tctx(t), "x", nil, nil); !errors.As(err, &qe) || qe.Desc != "JSON parse error" {
		t.Fatalf("id-less error: %v", err)
	}
}

func TestEventsSlowSubscriber(t *testing.T) {
	const n = 100
	path, _ := fakeServer(t, func(f *fakeConn) {
		if !f.handshake() {
			return
		}
		for {
			c, err := f.readCommand()
			if err != nil {
				return
			}
			var k int
			json.Unmarshal(c.Arguments, &struct{ N *int }{&k})
			for i := range k {
				f.send(map[string]any{"event": "TICK", "data": map[string]int{"i": i}, "timestamp": map[string]int{"seconds": 1700000000, "microseconds": 5}})
			}
			f.send(map[string]any{"event": "OTHER", "timestamp": map[string]int{"seconds": -1, "microseconds": -1}})
			f.reply(c, map[string]any{})
		}
	})
	c := dialFake(t, path)
	stuck := c.Subscribe(2)
	other := c.Subscribe(4, "OTHER")
	if err := c.Execute(tctx(t), "emit", map[string]int{"n": n}, nil); err != nil {
		t.Fatal(err)
	}
	// Replies are not held up by the stuck subscriber; it lost all but 2
	// of n+1 events.
	if got := stuck.Dropped(); got != n+1-2 {
		t.Errorf("Dropped() = %d, want %d", got, n+1-2)
	}
	for i := range 2 {
		ev := <-stuck.Events()
		var d struct{ I int }
		if err := json.Unmarshal(ev.Data, &d); err != nil || ev.Name != "TICK" || d.I != i || ev.Dropped != 0 {
			t.Errorf("buffered event %d: %+v", i, ev)
		}
		if want := time.Unix(1700000000, 5000); !ev.Time.Equal(want) {
			t.Errorf("event time %v, want %v", ev.Time, want)
		}
	}
	if err := c.Execute(tctx(t), "emit", map[string]int{"n": 1}, nil); err != nil {
		t.Fatal(err)
	}
	ev := <-stuck.Events()
	if ev.Name != "TICK" || ev.Dropped != n+1-2 {
		t.Errorf("first event after the gap: %+v, want Dropped=%d", ev, n+1-2)
	}
	if ev := <-stuck.Events(); ev.Name != "OTHER" || ev.Dropped != 0 || !ev.Time.IsZero() {
		t.Errorf("second event after the gap: %+v", ev)
	}
	for range 2 {
		if ev := <-other.Events(); ev.Name != "OTHER" {
			t.Errorf("filtered subscription got %s", ev.Name)
		}
	}
	if other.Dropped() != 0 {
		t.Errorf("filtered subscription dropped %d", other.Dropped())
	}
	other.Close()
	other.Close()
	if _, ok := <-other.Events(); ok {
		t.Error("closed subscription still delivers")
	}
}

func TestGetFDAndAddFDPassDescriptors(t *testing.T) {
	dir := t.TempDir()
	got := make(chan string, 2)
	path, _ := fakeServer(t, func(f *fakeConn) {
		if !f.handshake() {
			return
		}
		for {
			c, err := f.readCommand()
			if err != nil {
				return
			}
			if len(c.fds) != 1 {
				f.t.Errorf("%s arrived with %d descriptors", c.Execute, len(c.fds))
				f.reply(c, map[string]any{})
				continue
			}
			fd := os.NewFile(uintptr(c.fds[0]), "passed")
			b := make([]byte, 64)
			n, _ := fd.ReadAt(b, 0)
			fd.Close()
			got <- c.Execute + ":" + string(c.Arguments) + ":" + string(b[:n])
			if c.Execute == "add-fd" {
				f.reply(c, map[string]int{"fdset-id": 7, "fd": 42})
			} else {
				f.reply(c, map[string]any{})
			}
		}
	})
	c := dialFake(t, path)
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("hello fd"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := c.GetFD(tctx(t), "fd0", f); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != `getfd:{"fdname":"fd0"}:hello fd` {
		t.Errorf("server saw %q", s)
	}
	set := 7
	info, err := c.AddFD(tctx(t), &set, f, "note")
	if err != nil || info != (AddFDInfo{FDSetID: 7, FD: 42}) {
		t.Fatalf("add-fd: %+v, %v", info, err)
	}
	if s := <-got; s != `add-fd:{"fdset-id":7,"opaque":"note"}:hello fd` {
		t.Errorf("server saw %q", s)
	}
	if err := c.GetFD(tctx(t), "bad name", f); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("getfd with a bad name: %v", err)
	}
	if err := c.GetFD(tctx(t), "fd1", nil); err == nil {
		t.Error("getfd with no file succeeded")
	}
}

func TestExecuteResultDecodeError(t *testing.T) {
	path, _ := fakeServer(t, serveEcho)
	c := dialFake(t, path)
	var n int
	if err := c.Execute(tctx(t), "x", nil, &n); !errors.Is(err, ErrMalformed) {
		t.Errorf("decoding an object into an int: %v", err)
	}
	if err := c.Execute(tctx(t), "x", map[string]any{"f": func() {}}, nil); err == nil || !strings.Contains(err.Error(), "encoding arguments") {
		t.Errorf("unencodable arguments: %v", err)
	}
}

func TestDialRefusedSocket(t *testing.T) {
	p := filepath.Join(t.TempDir(), "stale.qmp")
	l, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // socket file left behind, nobody listening
	if _, err := Dial(tctx(t), p, quiet); err == nil || !strings.Contains(err.Error(), "connect") {
		t.Fatalf("Dial of a stale socket: %v", err)
	}
}

// Messages split across writes, several in one write, and QEMU's
// pretty=on multi-line form all decode.
func TestStreamFraming(t *testing.T) {
	path, _ := fakeServer(t, func(f *fakeConn) {
		if !f.handshake() {
			return
		}
		c1, err := f.readCommand()
		if err != nil {
			return
		}
		c2, err := f.readCommand()
		if err != nil {
			return
		}
		r1 := `{"return": "` + c1.Execute + `", "id": ` + string(c1.ID) + "}\r\n"
		f.sendRaw(r1[:5])
		time.Sleep(10 * time.Millisecond)
		f.sendRaw(r1[5:] + "{\n    \"event\": \"X\"\n}\n{\n    \"return\": \"" + c2.Execute + "\",\n    \"id\": " + string(c2.ID) + "\n}\n")
		echoLoop(f)
	})
	c := dialFake(t, path)
	sub := c.Subscribe(1)
	var wg sync.WaitGroup
	for _, want := range []string{"one", "two"} {
		wg.Go(func() {
			var got string
			if err := c.Execute(tctx(t), want, nil, &got); err != nil || got != want {
				t.Errorf("%s: got %q, %v", want, got, err)
			}
		})
	}
	wg.Wait()
	if ev := <-sub.Events(); ev.Name != "X" {
		t.Errorf("event %+v", ev)
	}
}

func TestDeviceDelWaitFake(t *testing.T) {
	path, _ := fakeServer(t, func(f *fakeConn) {
		if !f.handshake() {
			return
		}
		for {
			c, err := f.readCommand()
			if err != nil {
				return
			}
			f.reply(c, map[string]any{})
			f.send(map[string]any{"event": "DEVICE_DELETED", "data": map[string]string{"path": "/machine/peripheral/other", "device": "other"}})
			f.send(map[string]any{"event": "DEVICE_DELETED", "data": map[string]string{"path": "/machine/peripheral/d0", "device": "d0"}})
			if c.Execute == "device_del" {
				return // then hang up
			}
		}
	})
	c := dialFake(t, path)
	if err := c.DeviceDelWait(tctx(t), "d0"); err != nil {
		t.Fatal(err)
	}
	<-c.Done()
	if err := c.DeviceDelWait(tctx(t), "d0"); !errors.Is(err, ErrClosed) {
		t.Errorf("DeviceDelWait on a closed client: %v", err)
	}
}

func BenchmarkExecute(b *testing.B) {
	path := filepath.Join(b.TempDir(), "b.qmp")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go func() {
		conn, err := l.AcceptUnix()
		if err != nil {
			return
		}
		defer conn.Close()
		echoLoop2(&fakeConn{c: conn})
	}()
	c, err := Dial(context.Background(), path, quiet)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := c.Execute(ctx, "query-status", nil, nil); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// echoLoop2 is serveEcho without a *testing.T.
func echoLoop2(f *fakeConn) {
	f.sendRaw(fakeGreeting)
	for {
		c, err := f.readCommand()
		if err != nil {
			return
		}
		f.send(map[string]any{"return": map[string]any{"running": false, "status": "prelaunch"}, "id": c.ID})
	}
}

func BenchmarkDecodeMessage(b *testing.B) {
	msg := []byte(`{"event": "DEVICE_DELETED", "data": {"device": "nv0", "path": "/machine/peripheral/nv0"}, "timestamp": {"seconds": 1700000000, "microseconds": 1}}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeMessage(msg); err != nil {
			b.Fatal(err)
		}
	}
}

func TestPeerGoneBeforeSend(t *testing.T) {
	path, wait := fakeServer(t, func(f *fakeConn) { f.handshake() })
	c := dialFake(t, path)
	wait()
	for range 3 {
		if err := c.Execute(tctx(t), "x", nil, nil); !errors.Is(err, ErrClosed) {
			t.Errorf("command to a closed peer: %v", err)
		}
	}
}

// A write blocked because QEMU stopped reading gives up when its context
// ends; having sent part of a command, the client must close the
// connection.
func TestWriteBlockedCancelled(t *testing.T) {
	stop := make(chan struct{})
	reading := make(chan struct{})
	path, _ := fakeServer(t, func(f *fakeConn) {
		if !f.handshake() {
			return
		}
		f.c.Read(make([]byte, 4096)) // the start of the big command
		close(reading)
		<-stop // never read again
	})
	defer close(stop)
	c := dialFake(t, path)
	huge := strings.Repeat("x", 8<<20) // far more than the socket buffers
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-reading
		time.Sleep(50 * time.Millisecond)
		cancel()
	}()
	err := c.Execute(ctx, "big", map[string]string{"data": huge}, nil)
	if !errors.Is(err, context.Canceled) || !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "bytes were written") {
		t.Fatalf("blocked write: %v", err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("connection left open after a partial write")
	}
	if err := c.Execute(tctx(t), "x", nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("after a partial write: %v", err)
	}
}

// The size bound is per message: many small messages add up to more.
func TestMaxMessageSizeIsPerMessage(t *testing.T) {
	path, _ := fakeServer(t, func(f *fakeConn) {
		if !f.handshake() {
			return
		}
		c, err := f.readCommand()
		if err != nil {
			return
		}
		for i := range 2000 {
			f.send(map[string]any{"event": "E", "data": map[string]int{"i": i}})
		}
		f.reply(c, strings.Repeat("y", 2000))
		f.readCommand()
	})
	c := dialFake(t, path, WithMaxMessageSize(4096))
	var s string
	if err := c.Execute(tctx(t), "x", nil, &s); err != nil || len(s) != 2000 {
		t.Fatalf("got %d bytes, %v", len(s), err)
	}
}

func TestCloseRacesCommands(t *testing.T) {
	path, _ := fakeServer(t, serveEcho)
	c := dialFake(t, path)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				err := c.Execute(context.Background(), "x", nil, nil)
				if err != nil {
					if !errors.Is(err, ErrClosed) {
						t.Errorf("command racing Close: %v", err)
					}
					return
				}
			}
		})
	}
	sub := c.Subscribe(1)
	time.Sleep(30 * time.Millisecond)
	c.Close()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("commands still running 5 s after Close")
	}
	sub.Close()
	if !errors.Is(c.Err(), ErrClosed) {
		t.Errorf("Err() = %v", c.Err())
	}
}
