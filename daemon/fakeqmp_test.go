package daemon

import (
	"bufio"
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

	"github.com/nvdimm-backend/nvdimm-backend/qmp"
)

// wireQMP is a fake QEMU QMP server on a Unix socket, speaking the real
// wire protocol (greeting, qmp_capabilities, id-matched replies), so the
// production qmp/ adapter is exercised end to end. It pretends to be a
// QEMU >= 10.2 with vhost-user-test-device-pci.
type wireQMP struct {
	path string
	ln   net.Listener
	mu   sync.Mutex
	// +checklocks:mu
	cmds []map[string]any
	// +checklocks:mu
	conns []net.Conn
	// refuse maps a command to an error description.
	refuse map[string]string
	// hangUpOn lists commands QEMU answers by closing the connection.
	hangUpOn map[string]bool
	// memdevs is the query-memory-devices reply (JSON); "" replies {}.
	// +checklocks:mu
	memdevs string
}

func newWireQMP(t *testing.T) *wireQMP {
	t.Helper()
	w := &wireQMP{path: filepath.Join(t.TempDir(), "vm.qmp"), refuse: map[string]string{}, hangUpOn: map[string]bool{}}
	ln, err := net.Listen("unix", w.path)
	if err != nil {
		t.Fatal(err)
	}
	w.ln = ln
	t.Cleanup(func() { ln.Close(); w.hangUp() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			w.mu.Lock()
			w.conns = append(w.conns, c)
			w.mu.Unlock()
			go w.serve(c)
		}
	}()
	return w
}

func (w *wireQMP) hangUp() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range w.conns {
		c.Close()
	}
}

// event sends an event to every connected client, keeping them open.
func (w *wireQMP) event(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range w.conns {
		b, _ := json.Marshal(map[string]any{"event": name, "data": map[string]any{"guest": true, "reason": "guest-shutdown"},
			"timestamp": map[string]any{"seconds": 1, "microseconds": 0}})
		c.Write(append(b, '\n'))
	}
}

func (w *wireQMP) commands() []map[string]any {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]map[string]any(nil), w.cmds...)
}

func (w *wireQMP) serve(c net.Conn) {
	defer c.Close()
	enc := json.NewEncoder(c)
	enc.Encode(map[string]any{"QMP": map[string]any{"version": map[string]any{
		"qemu": map[string]int{"major": 11, "minor": 1, "micro": 2}, "package": ""}, "capabilities": []string{}}})
	dec := json.NewDecoder(bufio.NewReader(c))
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if err != io.EOF {
				return
			}
			return
		}
		cmd, _ := m["execute"].(string)
		w.mu.Lock()
		w.cmds = append(w.cmds, m)
		memdevs := w.memdevs
		w.mu.Unlock()
		if w.hangUpOn[cmd] {
			return
		}
		reply := map[string]any{"id": m["id"]}
		if desc, ok := w.refuse[cmd]; ok {
			reply["error"] = map[string]any{"class": "GenericError", "desc": desc}
		} else if cmd == "query-memory-devices" && memdevs != "" {
			reply["return"] = json.RawMessage(memdevs)
		} else if cmd == "query-chardev" {
			// QEMU connects the chardev to the daemon's server at once here.
			reply["return"] = []map[string]any{{"label": "nvb-chr-vu0", "filename": "unix:/x.sock", "frontend-open": false}}
		} else if cmd == "qom-get" {
			reply["return"] = "vhost-user-test-device-pci"
		} else {
			reply["return"] = map[string]any{}
		}
		enc.Encode(reply)
	}
}

// listeningServer is a VhostUserFactory result that listens on the socket
// the daemon chose, as a real vhost-user server does.
type listeningServer struct{ ln net.Listener }

func (s *listeningServer) Close(ctx context.Context) error { return s.ln.Close() }

func TestVhostUserAttachOverWireQMP(t *testing.T) {
	w := newWireQMP(t)
	stateDir := t.TempDir()
	var mu sync.Mutex
	var servers []*listeningServer
	d, err := New(Config{
		StateDir: stateDir, Backings: fileBackings{}, DialQMP: DialQMP,
		VhostUser: func(dev Device, sock string) (VhostUserServer, error) {
			ln, err := net.Listen("unix", sock)
			if err != nil {
				return nil, err
			}
			s := &listeningServer{ln: ln}
			mu.Lock()
			servers = append(servers, s)
			mu.Unlock()
			return s, nil
		},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(context.Background())
	ctx := context.Background()
	if _, err := d.Create(ctx, CreateRequest{Name: "vu0", Backing: DefaultBackingDir(stateDir) + "/vu0.img", Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	dv, err := d.Attach(ctx, "vu0", AttachRequest{QMP: w.path, As: KindVhostUser, Bus: "rp1"})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dv.VhostUserSocket)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("vhost-user socket %s: %v %v", dv.VhostUserSocket, fi, err)
	}
	var got []string
	for _, c := range w.commands() {
		got = append(got, c["execute"].(string))
	}
	want := []string{"qmp_capabilities", "chardev-add", "query-chardev", "device_add", "qom-get"}
	if len(got) != len(want) {
		t.Fatalf("commands %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("commands %v, want %v", got, want)
		}
	}
	dev := w.commands()[3]["arguments"].(map[string]any)
	if dev["driver"] != "vhost-user-test-device-pci" || dev["virtio-id"] != float64(27) || dev["bus"] != "rp1" || dev["chardev"] != "nvb-chr-vu0" {
		t.Fatalf("device_add arguments %v", dev)
	}
	// The socket closing (VM gone) releases the device and stops its server.
	w.hangUp()
	waitFor(t, func() bool { g, _ := d.Get("vu0"); return g.Attached == nil })
	mu.Lock()
	s := servers[0]
	mu.Unlock()
	if _, err := s.ln.Accept(); err == nil {
		t.Fatal("vhost-user server still accepting after release")
	}
}

func TestVhostUserRefusedOverWireQMP(t *testing.T) {
	w := newWireQMP(t)
	w.refuse["device_add"] = "'vhost-user-test-device-pci' is not a valid device model name"
	stateDir := t.TempDir()
	closed := make(chan struct{}, 1)
	d, err := New(Config{
		StateDir: stateDir, Backings: fileBackings{}, DialQMP: DialQMP,
		VhostUser: func(dev Device, sock string) (VhostUserServer, error) {
			ln, err := net.Listen("unix", sock)
			if err != nil {
				return nil, err
			}
			return closeNotify{ln, closed}, nil
		},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(context.Background())
	ctx := context.Background()
	dv, err := d.Create(ctx, CreateRequest{Name: "vu0", Backing: DefaultBackingDir(stateDir) + "/vu0.img", Size: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.Attach(ctx, "vu0", AttachRequest{QMP: w.path, As: KindVhostUser})
	var qe *QEMUError
	if err == nil || !asQEMU(err, &qe) || qe.Class != "GenericError" {
		t.Fatalf("attach: %v", err)
	}
	cmds := w.commands()
	last := cmds[len(cmds)-1]
	if last["execute"] != "chardev-remove" || last["arguments"].(map[string]any)["id"] != "nvb-chr-vu0" {
		t.Fatalf("last command %v, want chardev-remove of nvb-chr-vu0", last)
	}
	select {
	case <-closed:
	default:
		t.Fatal("vhost-user server not stopped after a refused attach")
	}
	assertUnlocked(t, dv.Backing)
}

type closeNotify struct {
	ln net.Listener
	ch chan struct{}
}

func (c closeNotify) Close(ctx context.Context) error {
	c.ch <- struct{}{}
	return c.ln.Close()
}

func asQEMU(err error, qe **QEMUError) bool {
	for e := err; e != nil; {
		if q, ok := e.(*QEMUError); ok {
			*qe = q
			return true
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		e = u.Unwrap()
	}
	return false
}

// A SHUTDOWN event (QEMU run with -no-shutdown keeps the socket open)
// releases the VM's devices through the production qmp/ adapter.
func TestShutdownEventReleases(t *testing.T) {
	w := newWireQMP(t)
	stateDir := t.TempDir()
	d, err := New(Config{StateDir: stateDir, Backings: fileBackings{}, DialQMP: DialQMP,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(context.Background())
	ctx := context.Background()
	dv, err := d.Create(ctx, CreateRequest{Name: "pm0", Backing: DefaultBackingDir(stateDir) + "/pm0.img", Size: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	// The wire fake answers query-memory-devices with {}, which is not a
	// list: the attach must fail cleanly and roll back.
	if _, err := d.Attach(ctx, "pm0", AttachRequest{QMP: w.path, As: KindNVDIMM}); err == nil || !strings.Contains(err.Error(), "query-memory-devices reply") {
		t.Fatalf("attach with a bad confirmation reply: %v", err)
	}
	assertUnlocked(t, dv.Backing)
	w.mu.Lock()
	w.memdevs = `[{"type":"nvdimm","data":{"id":"nvb-dev-pm0","addr":4294967296,"size":16777216,"memdev":"/objects/nvb-mem-pm0","slot":0,"node":0,"hotplugged":true,"hotpluggable":true}}]`
	w.mu.Unlock()
	if _, err := d.Attach(ctx, "pm0", AttachRequest{QMP: w.path, As: KindNVDIMM}); err != nil {
		t.Fatal(err)
	}
	w.event("RESET") // other events change nothing
	time.Sleep(50 * time.Millisecond)
	if g, _ := d.Get("pm0"); g.Attached == nil {
		t.Fatal("released on RESET")
	}
	w.event("SHUTDOWN")
	waitFor(t, func() bool { g, _ := d.Get("pm0"); return g.Attached == nil })
	assertUnlocked(t, dv.Backing)
}

// QEMU hanging up in the middle of an attach: the error names the QMP
// socket once and the failed command once, says the connection closed,
// and still matches qmp.ErrClosed; the attach is rolled back.
func TestAttachHangUpNamesSocketOnce(t *testing.T) {
	for _, cmd := range []string{"qmp_capabilities", "object-add", "device_add"} {
		t.Run(cmd, func(t *testing.T) {
			w := newWireQMP(t)
			w.hangUpOn[cmd] = true
			stateDir := t.TempDir()
			d, err := New(Config{StateDir: stateDir, Backings: fileBackings{}, DialQMP: DialQMP,
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close(context.Background())
			ctx := context.Background()
			dv, err := d.Create(ctx, CreateRequest{Name: "pm0", Backing: DefaultBackingDir(stateDir) + "/pm0.img", Size: 16 << 20})
			if err != nil {
				t.Fatal(err)
			}
			_, err = d.Attach(ctx, "pm0", AttachRequest{QMP: w.path, As: KindNVDIMM})
			if err == nil {
				t.Fatal("attach succeeded")
			}
			msg := err.Error()
			t.Log(msg)
			if n := strings.Count(msg, w.path); n != 1 {
				t.Errorf("%q names the QMP socket %d times, want 1", msg, n)
			}
			if n := strings.Count(strings.ReplaceAll(msg, w.path, ""), cmd); cmd != "qmp_capabilities" && n != 1 {
				t.Errorf("%q names %s %d times, want 1", msg, cmd, n)
			}
			if !strings.Contains(msg, "QMP connection closed by QEMU") || !errors.Is(err, qmp.ErrClosed) {
				t.Errorf("%q: does not say (or match) that QEMU closed the connection", msg)
			}
			if g, _ := d.Get("pm0"); g.Attached != nil {
				t.Errorf("attached after the hang-up: %+v", g.Attached)
			}
			assertUnlocked(t, dv.Backing)
		})
	}
}
