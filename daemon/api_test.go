package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

// serve runs the control API on a real Unix socket and returns a client.
func (e *env) serve() (*Client, string) {
	e.t.Helper()
	sock := filepath.Join(e.t.TempDir(), "ctl", "control.sock")
	l, err := ListenControl(sock)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.d.Serve(ctx, l) }()
	e.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("Serve: %v", err)
		}
	})
	return NewClient(sock), sock
}

// apiDo sends one request to h as a peer with the test's own uid.
func apiDo(h http.Handler, method, path, body string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	r = r.WithContext(context.WithValue(r.Context(), peerKey{}, &unix.Ucred{Uid: uint32(os.Getuid()), Pid: 1}))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// do sends one request to the daemon's handler.
func (e *env) do(method, path, body string) *httptest.ResponseRecorder {
	return apiDo(e.d.Handler(), method, path, body)
}

func TestAPIEndToEnd(t *testing.T) {
	e := newEnv(t)
	c, sock := e.serve()
	ctx := context.Background()
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket mode: %v %v", fi, err)
	}
	if _, err := ListenControl(sock); err == nil || !strings.Contains(err.Error(), "another daemon") {
		t.Fatalf("second listener: %v", err)
	}
	h, err := c.Health(ctx)
	if err != nil || h.Status != "ok" {
		t.Fatalf("healthz: %+v %v", h, err)
	}
	dv, err := c.Create(ctx, CreateRequest{Name: "pm0", Backing: e.backDir + "/pm0.img", Size: 16 << 20, LabelSize: 128 << 10})
	if err != nil || dv.Name != "pm0" {
		t.Fatalf("create: %+v %v", dv, err)
	}
	list, err := c.List(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("list: %v %v", list, err)
	}
	dv, err = c.Attach(ctx, "pm0", AttachRequest{QMP: e.qmpPath, As: KindNVDIMM})
	if err != nil || dv.Attached == nil {
		t.Fatalf("attach: %+v %v", dv, err)
	}
	_, err = c.Detach(ctx, "pm0")
	var re *RemoteError
	if !errors.As(err, &re) || re.Code != "qemu_refused" || re.QEMUClass != "GenericError" || re.Status != http.StatusConflict {
		t.Fatalf("detach: %#v", err)
	}
	if _, err := c.Get(ctx, "nope"); !errors.As(err, &re) || re.Code != "not_found" || re.Status != 404 {
		t.Fatalf("get unknown: %v", err)
	}
	if _, err := c.Create(ctx, CreateRequest{Name: "x", Backing: "/etc/shadow", Size: 1 << 20}); !errors.As(err, &re) || re.Code != "confinement" {
		t.Fatalf("create outside: %v", err)
	}
	m, err := c.Metrics(ctx)
	if err != nil || !strings.Contains(m, "nvdimm_backend_devices_attached 1") || !strings.Contains(m, `nvdimm_backend_attach_total{kind="nvdimm",result="ok"} 1`) {
		t.Fatalf("metrics: %v\n%s", err, m)
	}
}

func TestAPIMalformedRequests(t *testing.T) {
	e := newEnv(t)
	h := e.d.Handler()
	self := &unix.Ucred{Uid: uint32(os.Getuid()), Pid: 1}
	cases := []struct {
		method, path, body string
		status             int
		want               string
	}{
		{"POST", "/v1/devices", "{", 400, "request body"},
		{"POST", "/v1/devices", `{"name":"a","bogus":1}`, 400, "unknown field"},
		{"POST", "/v1/devices", `{"name":"a"} {"x":1}`, 400, "trailing data"},
		{"POST", "/v1/devices", `{"name":"a","size":-1}`, 400, "request body"},
		{"POST", "/v1/devices", `[]`, 400, "request body"},
		{"POST", "/v1/devices/nope/attach", `{"qmp":"/x","as":"nvdimm"}`, 404, "no such device"},
		{"DELETE", "/v1/devices/nope?purge=maybe", ``, 400, "purge"},
		{"GET", "/v2/whatever", ``, 404, "no route"},
		{"PUT", "/v1/devices", ``, 405, "method not allowed (allowed: GET, HEAD, POST)"},
	}
	for _, tc := range cases {
		r := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
		r = r.WithContext(context.WithValue(r.Context(), peerKey{}, self))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tc.status || !strings.Contains(w.Body.String(), tc.want) {
			t.Errorf("%s %s %q: %d %s; want %d %q", tc.method, tc.path, tc.body, w.Code, w.Body, tc.status, tc.want)
		}
	}
	big := `{"name":"` + strings.Repeat("a", maxBody) + `"}`
	r := httptest.NewRequest("POST", "/v1/devices", strings.NewReader(big))
	r = r.WithContext(context.WithValue(r.Context(), peerKey{}, self))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 400 {
		t.Errorf("oversized body: %d %s", w.Code, w.Body)
	}
}

func TestAPIPeerCheck(t *testing.T) {
	e := newEnv(t)
	h := e.d.Handler()
	for _, tc := range []struct {
		cred   *unix.Ucred
		status int
	}{
		{nil, 403},
		{&unix.Ucred{Uid: 424242, Pid: 7}, 403},
		{&unix.Ucred{Uid: 0}, 200},
		{&unix.Ucred{Uid: uint32(os.Getuid())}, 200},
	} {
		r := httptest.NewRequest("GET", "/healthz", nil)
		if tc.cred != nil {
			r = r.WithContext(context.WithValue(r.Context(), peerKey{}, tc.cred))
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tc.status {
			t.Errorf("cred %+v: status %d %s, want %d", tc.cred, w.Code, w.Body, tc.status)
		}
		if tc.status == 403 && !strings.Contains(w.Body.String(), "forbidden") {
			t.Errorf("refusal body %s", w.Body)
		}
	}
}

func TestClientNoDaemon(t *testing.T) {
	c := NewClient(filepath.Join(t.TempDir(), "none.sock"))
	_, err := c.List(context.Background())
	if err == nil || !strings.Contains(err.Error(), "is the daemon running") {
		t.Fatalf("err = %v", err)
	}
}

// TestAPIErrorStatuses: user mistakes come back as 4xx with a stable code,
// not as internal errors: a new backing without a size or with a size
// memfile's layout refuses is 400, a name or backing already in use 409,
// a method a route does not serve 405 with an Allow header; a
// confinement refusal names the path, not "invalid request".
func TestAPIErrorStatuses(t *testing.T) {
	stateDir := t.TempDir()
	backDir := filepath.Join(stateDir, "backings")
	d, err := New(Config{StateDir: stateDir, Backings: MemfileBackings{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close(context.Background()) })
	h := d.Handler()
	self := &unix.Ucred{Uid: uint32(os.Getuid()), Pid: 1}
	do := func(method, path, body string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, path, strings.NewReader(body))
		r = r.WithContext(context.WithValue(r.Context(), peerKey{}, self))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	create := func(name, backing string, size uint64) string {
		return fmt.Sprintf(`{"name":%q,"backing":%q,"size":%d}`, name, filepath.Join(backDir, backing), size)
	}
	if w := do("POST", "/v1/devices", create("d1", "d1.img", 16<<20)); w.Code != http.StatusCreated {
		t.Fatalf("create d1: %d %s", w.Code, w.Body)
	}
	cases := []struct {
		name, method, path, body string
		status                   int
		code, want, notWant      string
	}{
		{"no size", "POST", "/v1/devices", fmt.Sprintf(`{"name":"d2","backing":%q}`, filepath.Join(backDir, "d2.img")), 400, "invalid", "does not exist and no size was given", ""},
		{"3 MiB", "POST", "/v1/devices", create("d2", "d2.img", 3<<20), 400, "bad_layout", "not a multiple of", ""},
		{"2^64-1", "POST", "/v1/devices", create("d2", "d2.img", math.MaxUint64), 400, "bad_layout", "beyond", ""},
		{"name exists", "POST", "/v1/devices", create("d1", "other.img", 16<<20), 409, "exists", "already exists", ""},
		{"backing registered", "POST", "/v1/devices", create("d3", "other1.img", 16<<20), 409, "conflict", "already registered", ""},
		{"size mismatch", "POST", "/v1/devices", fmt.Sprintf(`{"name":"d4","backing":%q,"size":%d}`, filepath.Join(backDir, "d1.img"), 32<<20), 409, "", "not the requested", ""},
		{"confinement", "POST", "/v1/devices", `{"name":"d5","backing":"/etc/d5.img","size":16777216}`, 403, "confinement", `"error": "backing path \"/etc/d5.img\"`, "invalid request"},
		{"PUT on a device", "PUT", "/v1/devices/d1", "{}", 405, "method_not_allowed", "PUT /v1/devices/d1", ""},
		{"GET on attach", "GET", "/v1/devices/d1/attach", "", 405, "method_not_allowed", "allowed: POST", ""},
		{"unknown path", "GET", "/v2/x", "", 404, "not_found", "no route", ""},
	}
	// The size mismatch needs d1 unregistered (its backing is taken).
	if w := do("DELETE", "/v1/devices/d1", ""); w.Code != http.StatusNoContent {
		t.Fatalf("delete d1: %d %s", w.Code, w.Body)
	}
	if w := do("POST", "/v1/devices", create("d1", "other1.img", 16<<20)); w.Code != http.StatusCreated {
		t.Fatalf("create d1 again: %d %s", w.Code, w.Body)
	}
	for _, c := range cases {
		w := do(c.method, c.path, c.body)
		var e APIError
		_ = json.Unmarshal(w.Body.Bytes(), &e)
		if w.Code != c.status || (c.code != "" && e.Code != c.code) || !strings.Contains(w.Body.String(), c.want) || (c.notWant != "" && strings.Contains(w.Body.String(), c.notWant)) {
			t.Errorf("%s: %s %s: %d %s; want %d code %q containing %q", c.name, c.method, c.path, w.Code, w.Body, c.status, c.code, c.want)
		}
		if e.Code == "internal" {
			t.Errorf("%s: a user error reported as internal: %s", c.name, w.Body)
		}
	}
	if w := do("PUT", "/v1/devices/d1", "{}"); w.Header().Get("Allow") != "DELETE, GET, HEAD" {
		t.Errorf("PUT /v1/devices/d1: Allow %q", w.Header().Get("Allow"))
	}
	if w := do("DELETE", "/v1/devices", ""); w.Code != 405 || w.Header().Get("Allow") != "GET, HEAD, POST" {
		t.Errorf("DELETE /v1/devices: %d Allow %q", w.Code, w.Header().Get("Allow"))
	}
	// The client surfaces the status and code.
	if _, err := os.Stat(filepath.Join(backDir, "d2.img")); err == nil {
		t.Error("a refused create left a backing behind")
	}
}

// TestAPIUserErrorStatuses: every user mistake the production backings,
// registry and attach flow can meet comes back through the HTTP handler as
// a 4xx with a stable code and a message naming what was wrong (a backing
// too large for the free space: 507 no_space); none is "internal".
func TestAPIUserErrorStatuses(t *testing.T) {
	stateDir := t.TempDir()
	backDir := filepath.Join(stateDir, "backings")
	d, err := New(Config{StateDir: stateDir, Backings: MemfileBackings{}, DialQMP: DialQMP,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close(context.Background()) })
	h := d.Handler()
	bp := func(n string) string { return filepath.Join(backDir, n) }
	write := func(p string, size int64) {
		t.Helper()
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, size); err != nil {
			t.Fatal(err)
		}
	}
	mcreate := func(p string, o memfile.CreateOptions) {
		t.Helper()
		b, err := memfile.Create(p, o)
		if err != nil {
			t.Fatal(err)
		}
		b.Close()
	}
	// Existing files that are not usable backings.
	write(bp("small.img"), 1<<20) // no metadata; below the 2 MiB alignment
	write(bp("badmeta.img"), 16<<20)
	if err := os.WriteFile(memfile.MetaPath(bp("badmeta.img")), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	mcreate(bp("resized.img"), memfile.CreateOptions{Size: 16 << 20})
	if err := os.Truncate(bp("resized.img"), 18<<20); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(bp("adir"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(bp("fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	mcreate(bp("ro.img"), memfile.CreateOptions{Size: 16 << 20, ReadOnly: true})
	// Devices to attach: a labelled one, and one whose backing goes away.
	for _, b := range []string{`{"name":"lab","backing":%q,"size":16777216,"label_size":131072}`, `{"name":"gone","backing":%q,"size":16777216}`} {
		var name struct{ Name string }
		_ = json.Unmarshal([]byte(fmt.Sprintf(b, "x")), &name)
		if w := apiDo(h, "POST", "/v1/devices", fmt.Sprintf(b, bp(name.Name+".img"))); w.Code != http.StatusCreated {
			t.Fatalf("create %s: %d %s", name.Name, w.Code, w.Body)
		}
	}
	if err := memfile.Remove(bp("gone.img")); err != nil {
		t.Fatal(err)
	}
	// QMP sockets with no VM's monitor behind them.
	sockDir := t.TempDir()
	plain := filepath.Join(sockDir, "plain")
	write(plain, 0)
	qmpDir := filepath.Join(sockDir, "qmpdir")
	if err := os.Mkdir(qmpDir, 0o700); err != nil {
		t.Fatal(err)
	}
	stale := listenDummy(t, filepath.Join(sockDir, "stale.qmp")) // bound, not listening
	notQMP := filepath.Join(sockDir, "ssh.qmp")
	ln, err := net.Listen("unix", notQMP)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("SSH-2.0-OpenSSH_9.2\r\n"))
			c.Close()
		}
	}()

	create := func(name, backing, extra string) string {
		return fmt.Sprintf(`{"name":%q,"backing":%q%s}`, name, backing, extra)
	}
	attach := func(qmp, as string) string { return fmt.Sprintf(`{"qmp":%q,"as":%q}`, qmp, as) }
	var backings []string
	for _, n := range []string{"x.img", "y.img", "small.img", "badmeta.img", "resized.img", "adir", "fifo", "ro.img", "lab.img", "gone.img"} {
		backings = append(backings, bp(n))
	}
	cases := []struct {
		name, method, path, body string
		status                   int
		code, want               string
	}{
		// Create: request mistakes.
		{"bad name", "POST", "/v1/devices", create("-x", bp("x.img"), `,"size":16777216`), 400, "invalid", `device name \"-x\"`},
		{"long name", "POST", "/v1/devices", create(strings.Repeat("n", 65), bp("x.img"), `,"size":16777216`), 400, "invalid", "1 to 64 characters"},
		{"bad mode", "POST", "/v1/devices", create("x", bp("x.img"), `,"size":16777216,"label_size":131072,"namespace":"n","mode":"dax"`), 400, "invalid", `mode \"dax\"`},
		{"namespace without mode", "POST", "/v1/devices", create("x", bp("x.img"), `,"size":16777216,"label_size":131072,"namespace":"n"`), 400, "invalid", "needs a mode"},
		{"slot without namespace", "POST", "/v1/devices", create("x", bp("x.img"), `,"size":16777216,"slot":1`), 400, "invalid", "slot is only meaningful"},
		{"small label", "POST", "/v1/devices", create("x", bp("x.img"), `,"size":16777216,"label_size":4096`), 400, "invalid", "at least 128 KiB"},
		{"no size", "POST", "/v1/devices", create("x", bp("x.img"), ``), 400, "invalid", "no size was given"},
		{"bad size", "POST", "/v1/devices", create("x", bp("x.img"), `,"size":3145728`), 400, "bad_layout", "not a multiple of"},
		// A layout that is valid but needs more free space (the 2 EiB
		// label area of a sparse backing) than any test filesystem has:
		// memfile's up-front refusal, 507 like a full filesystem.
		{"no free space", "POST", "/v1/devices", create("x", bp("x.img"), `,"size":2305843009213693952,"label_size":2305843009213693952`), 507, "no_space", "not enough free space in " + backDir},
		{"image without catalog", "POST", "/v1/devices", `{"name":"x","image":"base"}`, 400, "invalid", "no image catalog"},
		{"confinement", "POST", "/v1/devices", create("x", "/etc/x.img", `,"size":16777216`), 403, "confinement", `backing path \"/etc/x.img\" refused`},
		{"relative backing", "POST", "/v1/devices", create("x", "x.img", `,"size":16777216`), 403, "confinement", "must be absolute"},
		// Create: existing files that are not usable backings.
		{"no metadata, too small", "POST", "/v1/devices", create("x", bp("small.img"), ``), 422, "unusable_backing", "below the align"},
		{"garbage metadata", "POST", "/v1/devices", create("x", bp("badmeta.img"), ``), 422, "unusable_backing", filepath.Base(memfile.MetaPath(bp("badmeta.img")))},
		{"resized", "POST", "/v1/devices", create("x", bp("resized.img"), ``), 422, "unusable_backing", "resized outside"},
		{"directory", "POST", "/v1/devices", create("x", bp("adir"), ``), 422, "unusable_backing", "is a directory"},
		{"fifo", "POST", "/v1/devices", create("x", bp("fifo"), ``), 422, "unusable_backing", "named pipe"},
		// Create: the existing backing contradicts the request.
		{"writable of read-only", "POST", "/v1/devices", create("x", bp("ro.img"), ``), 409, "conflict", "refusing a writable device"},
		{"backing registered", "POST", "/v1/devices", create("x", bp("lab.img"), `,"size":33554432`), 409, "conflict", "already registered"},
		{"namespace in existing", "POST", "/v1/devices", create("x", bp("ro.img"), `,"label_size":131072,"namespace":"n","mode":"raw"`), 409, "conflict", "only provisioned in a backing created now"},
		{"name taken", "POST", "/v1/devices", create("lab", bp("y.img"), `,"size":16777216`), 409, "exists", "already exists"},
		// Attach.
		{"unknown device", "POST", "/v1/devices/nope/attach", attach(stale, "nvdimm"), 404, "not_found", "no such device"},
		{"bad kind", "POST", "/v1/devices/lab/attach", attach(stale, "dimm"), 400, "invalid", "want nvdimm"},
		{"relative QMP", "POST", "/v1/devices/lab/attach", attach("vm.qmp", "nvdimm"), 400, "invalid", "absolute"},
		{"labelled as virtio-pmem", "POST", "/v1/devices/lab/attach", attach(stale, "virtio-pmem"), 400, "invalid", "128 KiB label area"},
		{"vhost-user unsupported", "POST", "/v1/devices/gone/attach", attach(stale, "vhost-user"), 400, "invalid", "no vhost-user server support"},
		{"backing gone", "POST", "/v1/devices/gone/attach", attach(stale, "nvdimm"), 422, "unusable_backing", "no such file"},
		{"QMP missing", "POST", "/v1/devices/lab/attach", attach(filepath.Join(sockDir, "none.qmp"), "nvdimm"), 400, "invalid", "no such file"},
		{"QMP parent not a directory", "POST", "/v1/devices/lab/attach", attach(filepath.Join(plain, "vm.qmp"), "nvdimm"), 400, "invalid", "not a directory"},
		{"QMP not a socket", "POST", "/v1/devices/lab/attach", attach(plain, "nvdimm"), 400, "invalid", "not a Unix socket (it is a regular file)"},
		{"QMP directory", "POST", "/v1/devices/lab/attach", attach(qmpDir, "nvdimm"), 400, "invalid", "not a Unix socket (it is a directory)"},
		{"QMP nobody listening", "POST", "/v1/devices/lab/attach", attach(stale, "nvdimm"), 400, "invalid", "connection refused (nothing listens on it"},
		{"QMP not QMP", "POST", "/v1/devices/lab/attach", attach(notQMP, "nvdimm"), 400, "invalid", "not a QMP socket"},
		// Detach and delete.
		{"detach unattached", "POST", "/v1/devices/lab/detach", "", 409, "conflict", "not attached"},
		{"delete unknown", "DELETE", "/v1/devices/nope", "", 404, "not_found", "no such device"},
		{"bad purge", "DELETE", "/v1/devices/lab?purge=maybe", "", 400, "invalid", "purge"},
	}
	for _, c := range cases {
		w := apiDo(h, c.method, c.path, c.body)
		var e APIError
		if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
			t.Errorf("%s: body %s: %v", c.name, w.Body, err)
			continue
		}
		if w.Code != c.status || e.Code != c.code || !strings.Contains(w.Body.String(), c.want) {
			t.Errorf("%s: %s %s: %d %s; want %d %q containing %q", c.name, c.method, c.path, w.Code, w.Body, c.status, c.code, c.want)
		}
		// The daemon and memfile both name the backing: the message
		// has it once (its metadata record's path aside), and an
		// unusable backing is always named.
		named := 0
		for _, p := range backings {
			n := strings.Count(e.Error, p) - strings.Count(e.Error, memfile.MetaPath(p))
			if n > 1 {
				t.Errorf("%s: backing %s named %d times: %s", c.name, p, n, e.Error)
			}
			named += n
		}
		if c.status == http.StatusUnprocessableEntity && named != 1 {
			t.Errorf("%s: %d backing paths in %q, want 1", c.name, named, e.Error)
		}
		// A refused QMP socket is named exactly once (the daemon, qmp and
		// net each used to add it), net's "dial unix" text is not repeated.
		if strings.HasPrefix(c.name, "QMP ") {
			var req AttachRequest
			_ = json.Unmarshal([]byte(c.body), &req)
			if n := strings.Count(e.Error, req.QMP); req.QMP == "" || n != 1 {
				t.Errorf("%s: QMP socket %q named %d times in %q, want 1", c.name, req.QMP, n, e.Error)
			}
			if strings.Contains(e.Error, "dial unix") || strings.Contains(e.Error, "stat ") {
				t.Errorf("%s: %q repeats a system call's own path text", c.name, e.Error)
			}
		}
		t.Logf("%s: %d %s: %s", c.name, w.Code, e.Code, e.Error)
	}
	for _, n := range []string{"lab", "gone"} {
		if g, err := d.Get(n); err != nil || g.Attached != nil {
			t.Errorf("%s after the refusals: %+v %v", n, g, err)
		}
	}
	assertMemfileUnlocked(t, bp("lab.img"))
	if list := d.List(); len(list) != 2 {
		t.Errorf("refused creates registered devices: %+v", list)
	}
	if _, err := os.Stat(bp("x.img")); err == nil {
		t.Error("a refused create left a backing behind")
	}
}

// TestAPIServerSideStatuses: failures that are not the user's are 5xx with
// their own codes: a daemon shutting down 503, QEMU not answering within
// the timeout 504, no space 507, and any other I/O error 500.
func TestAPIServerSideStatuses(t *testing.T) {
	// Timeout: the vhost-user chardev never connects.
	e := newEnv(t)
	e.createPlain("vu0")
	e.vm.neverConnect = true
	e.d.cfg.Timeout = 200 * time.Millisecond
	w := e.do("POST", "/v1/devices/vu0/attach", fmt.Sprintf(`{"qmp":%q,"as":"vhost-user"}`, e.qmpPath))
	if w.Code != http.StatusGatewayTimeout || !strings.Contains(w.Body.String(), `"code": "timeout"`) || !strings.Contains(w.Body.String(), "did not connect") {
		t.Errorf("timeout: %d %s", w.Code, w.Body)
	}
	// Shutting down: the daemon is closed while a request reaches QMP.
	e2 := newEnv(t)
	e2.create("pm0")
	h := e2.d.Handler()
	_ = e2.d.Close(context.Background())
	w = apiDo(h, "POST", "/v1/devices/pm0/attach", fmt.Sprintf(`{"qmp":%q,"as":"nvdimm"}`, e2.qmpPath))
	if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), `"code": "unavailable"`) {
		t.Errorf("shutting down: %d %s", w.Code, w.Body)
	}
	// The categories of system errors, as memfile and qmp wrap them.
	pe := func(op string, errno syscall.Errno) error {
		return fmt.Errorf("create /b/x.img: %w", &fs.PathError{Op: op, Path: "/b/x.img", Err: errno})
	}
	for _, c := range []struct {
		name   string
		err    error
		status int
		code   string
	}{
		{"create ENOSPC", createErr(pe("fallocate", syscall.ENOSPC)), 507, "no_space"},
		{"create free-space refusal", createErr(fmt.Errorf("create /b/x.img: %w in /b: 1 MiB free, 2 MiB needed", memfile.ErrNoSpace)), 507, "no_space"},
		{"create EDQUOT", createErr(pe("write", syscall.EDQUOT)), 507, "no_space"},
		{"create EFBIG", createErr(pe("truncate", syscall.EFBIG)), 400, "bad_layout"},
		{"create EIO", createErr(pe("fsync", syscall.EIO)), 500, "internal"},
		{"create refusal", createErr(errors.New("create /b/x.img: already exists as a directory")), 409, "conflict"},
		{"open EIO", backingErr(pe("read", syscall.EIO)), 500, "internal"},
		{"open EACCES", backingErr(pe("open", syscall.EACCES)), 422, "unusable_backing"},
		{"open locked", backingErr(fmt.Errorf("/b/x.img: %w", memfile.ErrLocked)), 409, "locked"},
		{"provision refusal", provisionErr(errors.New("/b/x.img: name too long")), 400, "invalid"},
		{"provision EIO", provisionErr(pe("pwrite", syscall.EIO)), 500, "internal"},
		{"QMP EMFILE", qmpErr(pe("socket", syscall.EMFILE)), 500, "internal"},
		{"QMP timeout", qmpErr(fmt.Errorf("QMP socket /b/x.img: greeting: %w", context.DeadlineExceeded)), 504, "timeout"},
	} {
		w := httptest.NewRecorder()
		// The message is the error's own text, unprefixed.
		if got := writeErr(w, c.err); got != c.status || !strings.Contains(w.Body.String(), `"code": "`+c.code+`"`) || !strings.Contains(w.Body.String(), `"error": "`+c.err.Error()[:8]) {
			t.Errorf("%s: %d %s, want %d %q", c.name, got, w.Body, c.status, c.code)
		}
	}
}
