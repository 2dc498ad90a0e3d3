package qmp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// FuzzClientStream plays an arbitrary byte stream as the QEMU side of a
// monitor connection (greeting, replies, events, garbage), then hangs up.
// The first three NUL bytes split the stream into chunks: the first is
// sent at once, each later one after the next command line from the
// client (or 10 ms without one), so replies can meet the commands they
// answer. Whatever the stream holds: Dial
// either fails with an error naming the socket or succeeds; a client
// that connected answers QueryMemoryDevices and another command with a
// reply or an error, never by waiting for its deadline (the server hangs
// up, so every pending command must fail), ends with Done closed and Err
// wrapping ErrClosed, and closes every subscription's channel.
func FuzzClientStream(f *testing.F) {
	ok := "\x00" + `{"return": {}, "id": 1}` + "\r\n"
	devs := "\x00" + `{"event": "DEVICE_DELETED", "data": {"device": "nv0"}, "timestamp": {"seconds": 1, "microseconds": 2}}` + "\r\n" +
		`{"return": [{"type": "nvdimm", "data": {"id": "nv0", "addr": 4294967296, "size": 134217728, "slot": 0, "node": 0, "memdev": "/objects/m", "hotplugged": false, "hotpluggable": true}}], "id": 2}` + "\r\n"
	for _, s := range []string{
		fakeGreeting + ok,
		fakeGreeting + ok + devs + "\x00" + `{"return": {"running": true}, "id": 3}`,
		fakeGreeting + ok + "\x00" + `{"return": {}, "id": 2}{"return": [], "id": 3}`,
		fakeGreeting + "\x00" + `{"error": {"class": "CommandNotFound", "desc": "x"}, "id": 1}`,
		fakeGreeting + "\x00" + `{"error": {"class": "GenericError", "desc": "JSON parse error"}}` + ok,
		fakeGreeting + ok + "\x00" + `{"return": {}, "id": 18446744073709551615}{"return": {}, "id": "x"}{"id": 2}`,
		fakeGreeting + fakeGreeting + ok + "\x00" + `[1, 2]` + `{"return": 5, "id": 2}`,
		fakeGreeting + ok + "\x00" + `{"event": 5, "id": 2}{"return": {"x": 1}, "id": 3}`,
		fakeGreeting + "\x00" + `{"return": {}, "id": 1`,
		`{"return": {}, "id": 1}`,
		`{"QMP": 5}`,
		"",
	} {
		f.Add([]byte(s))
	}
	path := filepath.Join(f.TempDir(), "qmp.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		f.Fatal(err)
	}
	defer ln.Close()
	f.Fuzz(func(t *testing.T, stream []byte) { playStream(t, ln, path, stream) })
}

// playStream serves stream on ln to a client dialled at path and checks
// the client's behaviour (see FuzzClientStream); it returns the devices
// QueryMemoryDevices gave and Dial's error.
func playStream(t *testing.T, ln *net.UnixListener, path string, stream []byte) ([]MemoryDevice, error) {
	served := make(chan struct{})
	go func() {
		defer close(served)
		c, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		chunks := bytes.SplitN(stream, []byte{0}, 4)
		c.Write(chunks[0])
		r := bufio.NewReader(c)
		for _, ch := range chunks[1:] {
			// A client still waiting for the rest of a message sends
			// nothing: after a short wait the chunk goes anyway.
			c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
			if _, err := r.ReadSlice('\n'); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			c.Write(ch)
		}
		c.CloseWrite()
		// Read what the client sends until it hangs up, so that its
		// writes never fail for want of a reader.
		buf := make([]byte, 4096)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			if _, err := r.Read(buf); err != nil {
				break
			}
		}
		c.Close()
	}()
	defer func() { <-served }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, path, quiet)
	if err != nil {
		if ctx.Err() != nil {
			t.Fatalf("Dial waited for its deadline on a closed stream: %v", err)
		}
		if !strings.Contains(err.Error(), path) {
			t.Fatalf("Dial error %q does not name the socket", err)
		}
		return nil, err
	}
	defer c.Close()
	sub := c.Subscribe(4)
	devs, err := c.QueryMemoryDevices(ctx)
	if err != nil && ctx.Err() != nil {
		t.Fatalf("query-memory-devices waited for its deadline on a closed stream: %v", err)
	}
	var raw json.RawMessage
	if err := c.Execute(ctx, "query-status", nil, &raw); err != nil && ctx.Err() != nil {
		t.Fatalf("a command waited for its deadline on a closed stream: %v", err)
	}
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("the client did not notice the hang-up")
	}
	if err := c.Err(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Err after the hang-up: %v", err)
	}
	for range sub.Events() {
	}
	return devs, nil
}

// TestClientStreamControl: FuzzClientStream's first seeds get through
// the handshake and the second one's reply reaches QueryMemoryDevices
// (the target exercises the connected client, not only Dial's refusals).
func TestClientStreamControl(t *testing.T) {
	path := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ok := "\x00" + `{"return": {}, "id": 1}`
	if _, err := playStream(t, ln, path, []byte(fakeGreeting+ok)); err != nil {
		t.Fatalf("greeting and capabilities reply: %v", err)
	}
	devs, err := playStream(t, ln, path, []byte(fakeGreeting+ok+"\x00"+`{"return": [{"type": "nvdimm", "data": {"id": "nv0", "addr": 1, "size": 2}}], "id": 2}`))
	if err != nil || len(devs) != 1 || devs[0].ID() != "nv0" {
		t.Fatalf("devices %+v, %v", devs, err)
	}
	if _, err := playStream(t, ln, path, []byte(`{"return": {}, "id": 1}`)); err == nil || !errors.Is(err, ErrMalformed) {
		t.Fatalf("a stream without a greeting: %v", err)
	}
}
