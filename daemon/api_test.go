package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
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
