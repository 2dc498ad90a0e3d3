package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// fileBackings is a Backings over plain files: size+label bytes, flock.
type fileBackings struct{}

func (fileBackings) Prepare(ctx context.Context, s BackingSpec) (BackingInfo, error) {
	fi, err := os.Stat(s.Path)
	if errors.Is(err, fs.ErrNotExist) {
		if s.Size == 0 {
			return BackingInfo{}, errors.New("no size given and the backing does not exist")
		}
		f, err := os.OpenFile(s.Path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return BackingInfo{}, err
		}
		defer f.Close()
		if err := f.Truncate(int64(s.Size + s.LabelSize)); err != nil {
			return BackingInfo{}, err
		}
		info := BackingInfo{BackingSize: s.Size + s.LabelSize, Size: s.Size, LabelSize: s.LabelSize, Align: 2 << 20, Created: true}
		if s.Slot >= 0 {
			slot := s.Slot
			info.Slot = &slot
		}
		return info, nil
	}
	if err != nil {
		return BackingInfo{}, err
	}
	total := uint64(fi.Size())
	if s.Size != 0 && s.Size+s.LabelSize != total {
		return BackingInfo{}, fmt.Errorf("existing backing is %d bytes, want %d", total, s.Size+s.LabelSize)
	}
	return BackingInfo{BackingSize: total, Size: total - s.LabelSize, LabelSize: s.LabelSize, Align: 2 << 20}, nil
}

type flockCloser struct{ f *os.File }

func (c flockCloser) Close() error { return c.f.Close() }

func (fileBackings) Lock(path string, ro bool) (io.Closer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w", path, ErrBackingLocked)
		}
		return nil, err
	}
	return flockCloser{f}, nil
}

func (fileBackings) Remove(path string) error { return os.Remove(path) }

// fakeVM is an in-process QEMU stand-in behind the QMPConn interface.
type fakeVM struct {
	mu sync.Mutex
	// +checklocks:mu
	calls    []string
	args     []map[string]any
	objects  map[string]bool
	devices  map[string]map[string]any
	chardevs map[string]bool
	// chardevQueries counts query-chardev answers per chardev: a new
	// client chardev is reported "disconnected:" once, as QEMU's
	// asynchronous reconnect-ms connect is; neverConnect keeps it so.
	// +checklocks:mu
	chardevQueries map[string]int
	neverConnect   bool
	refuse         map[string]*QEMUError // command -> refusal
	hideDevs       bool                  // query-memory-devices omits everything
	allowDel       bool                  // device_del succeeds (and the device goes)
	gone           chan struct{}
	goneOnce       sync.Once
	// +checklocks:mu
	closed bool
}

func newFakeVM() *fakeVM {
	return &fakeVM{objects: map[string]bool{}, devices: map[string]map[string]any{},
		chardevs: map[string]bool{}, chardevQueries: map[string]int{}, refuse: map[string]*QEMUError{}, gone: make(chan struct{})}
}

func (v *fakeVM) Gone() <-chan struct{} { return v.gone }
func (v *fakeVM) Close() error {
	v.mu.Lock()
	v.closed = true
	v.mu.Unlock()
	return nil
}
func (v *fakeVM) exit() { v.goneOnce.Do(func() { close(v.gone) }) }

func (v *fakeVM) Execute(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	var a map[string]any
	if args != nil {
		b, _ := json.Marshal(args)
		_ = json.Unmarshal(b, &a)
	}
	v.calls = append(v.calls, cmd)
	v.args = append(v.args, a)
	if r, ok := v.refuse[cmd]; ok {
		return nil, &QEMUError{Class: r.Class, Desc: r.Desc}
	}
	id, _ := a["id"].(string)
	switch cmd {
	case "object-add":
		if v.objects[id] {
			return nil, &QEMUError{Class: "GenericError", Desc: "attempt to add duplicate property"}
		}
		v.objects[id] = true
	case "object-del":
		for _, d := range v.devices {
			if d["memdev"] == id {
				return nil, &QEMUError{Class: "GenericError", Desc: "object '" + id + "' is in use, can not be deleted"}
			}
		}
		delete(v.objects, id)
	case "chardev-add":
		v.chardevs[id] = true
	case "chardev-remove":
		delete(v.chardevs, id)
	case "query-chardev":
		out := []map[string]any{{"label": "compat_monitor0", "filename": "stdio", "frontend-open": true}}
		for c := range v.chardevs {
			fn := "unix:/fake.sock"
			if v.neverConnect || v.chardevQueries[c] == 0 {
				fn = "disconnected:unix:/fake.sock"
			}
			v.chardevQueries[c]++
			out = append(out, map[string]any{"label": c, "filename": fn, "frontend-open": false})
		}
		b, _ := json.Marshal(out)
		return b, nil
	case "device_add":
		if m, ok := a["memdev"].(string); ok && !v.objects[m] {
			return nil, &QEMUError{Class: "GenericError", Desc: "can't find memdev"}
		}
		v.devices[id] = a
	case "device_del":
		if v.allowDel {
			delete(v.devices, id)
			return json.RawMessage("{}"), nil
		}
		return nil, &QEMUError{Class: "GenericError", Desc: "nvdimm device hot unplug is not supported yet."}
	case "query-memory-devices":
		var out []map[string]any
		if !v.hideDevs {
			for id, d := range v.devices {
				t := "nvdimm"
				if d["driver"] == "virtio-pmem-pci" {
					t = "virtio-pmem"
				} else if d["driver"] != "nvdimm" {
					continue
				}
				out = append(out, map[string]any{"type": t, "data": map[string]any{"id": id, "addr": 4 << 30, "memaddr": 5 << 30, "memdev": "/objects/" + d["memdev"].(string)}})
			}
		}
		b, _ := json.Marshal(out)
		if out == nil {
			b = []byte("[]")
		}
		return b, nil
	case "qom-get":
		p, _ := a["path"].(string)
		d, ok := v.devices[filepath.Base(p)]
		if !ok {
			return nil, &QEMUError{Class: "DeviceNotFound", Desc: "Device '" + p + "' not found"}
		}
		b, _ := json.Marshal(d["driver"])
		return b, nil
	}
	return json.RawMessage("{}"), nil
}

func (v *fakeVM) callList() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]string(nil), v.calls...)
}

// fakeServer is a VhostUserServer that records its closing.
type fakeServer struct {
	ln net.Listener
	mu sync.Mutex
	// +checklocks:mu
	closed bool
}

func (s *fakeServer) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *fakeServer) Close(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	return s.ln.Close()
}

type env struct {
	t        *testing.T
	stateDir string
	backDir  string
	qmpPath  string
	vm       *fakeVM
	d        *Daemon
	servers  []*fakeServer
}

// newEnv makes a daemon with file backings and one fake VM whose "QMP
// socket" is a real listening Unix socket (the dialer checks it is one).
func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, stateDir: t.TempDir(), vm: newFakeVM()}
	e.backDir = filepath.Join(e.stateDir, "backings")
	e.qmpPath = listenDummy(t, filepath.Join(t.TempDir(), "vm1.qmp"))
	e.d = e.open()
	return e
}

func (e *env) open() *Daemon {
	e.t.Helper()
	d, err := New(Config{
		StateDir: e.stateDir,
		Backings: fileBackings{},
		DialQMP: func(ctx context.Context, path string) (QMPConn, error) {
			if path != e.qmpPath {
				return nil, fmt.Errorf("no VM at %s", path)
			}
			return e.vm, nil
		},
		VhostUser: func(dev Device, sock string) (VhostUserServer, error) {
			ln, err := net.Listen("unix", sock)
			if err != nil {
				return nil, err
			}
			s := &fakeServer{ln: ln}
			e.servers = append(e.servers, s)
			return s, nil
		},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = d.Close(context.Background()) })
	return d
}

func listenDummy(t *testing.T, path string) string {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return path
}
