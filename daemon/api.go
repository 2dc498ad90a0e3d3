package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

// APIError is the JSON body of every failed control-API request.
type APIError struct {
	// Code is a stable machine-readable category. 400: invalid (a
	// malformed or impossible request, or a QMP socket with no VM's
	// monitor behind it), bad_layout (a size or label size memfile's
	// layout or the filesystem refuses); 403: confinement (backing path
	// outside the backing directories), forbidden (peer not allowed);
	// 404: not_found; 405: method_not_allowed (the Allow header lists the
	// route's methods); 409: exists, conflict (the request contradicts
	// the existing backing or registry), locked, qemu_refused; 422:
	// unusable_backing (an existing backing or image file that cannot be
	// used as it is: gone, not a backing, a bad metadata record); 500:
	// internal (I/O and other server-side failures); 503: unavailable
	// (the daemon is shutting down); 504: timeout (QEMU or the guest did
	// not answer within the daemon's timeout); 507: no_space (no room for
	// a new backing).
	Code string `json:"code"`
	// Error is the human-readable explanation.
	Error string `json:"error"`
	// QEMUClass is QEMU's error class when QEMU refused a command.
	QEMUClass string `json:"qemu_class,omitempty"`
}

// DeviceList is the body of GET /v1/devices.
type DeviceList struct {
	Devices []Device `json:"devices"`
}

// Health is the body of GET /healthz.
type Health struct {
	Status  string `json:"status"`
	Devices int    `json:"devices"`
}

// maxBody bounds request bodies.
const maxBody = 1 << 20

type peerKey struct{}

// Handler returns the control API's HTTP handler.
func (d *Daemon) Handler() http.Handler {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nvdimm_backend_api_requests_total",
		Help: "Control API requests by route and status code.",
	}, []string{"route", "code"})
	if err := d.reg.Register(requests); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			requests = are.ExistingCollector.(*prometheus.CounterVec)
		}
	}
	mux := http.NewServeMux()
	route := func(pattern string, h func(w http.ResponseWriter, r *http.Request) int) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			code := h(w, r)
			requests.WithLabelValues(pattern, strconv.Itoa(code)).Inc()
		})
	}
	route("GET /healthz", func(w http.ResponseWriter, r *http.Request) int {
		return writeJSON(w, http.StatusOK, Health{Status: "ok", Devices: len(d.List())})
	})
	metrics := promhttp.HandlerFor(d.reg, promhttp.HandlerOpts{})
	route("GET /metrics", func(w http.ResponseWriter, r *http.Request) int {
		metrics.ServeHTTP(w, r)
		return http.StatusOK
	})
	route("GET /v1/devices", func(w http.ResponseWriter, r *http.Request) int {
		return writeJSON(w, http.StatusOK, DeviceList{Devices: d.List()})
	})
	route("POST /v1/devices", func(w http.ResponseWriter, r *http.Request) int {
		var req CreateRequest
		if err := decodeBody(r, &req); err != nil {
			return writeErr(w, err)
		}
		dv, err := d.Create(r.Context(), req)
		if err != nil {
			return writeErr(w, err)
		}
		return writeJSON(w, http.StatusCreated, dv)
	})
	route("GET /v1/devices/{name}", func(w http.ResponseWriter, r *http.Request) int {
		dv, err := d.Get(r.PathValue("name"))
		if err != nil {
			return writeErr(w, err)
		}
		return writeJSON(w, http.StatusOK, dv)
	})
	route("DELETE /v1/devices/{name}", func(w http.ResponseWriter, r *http.Request) int {
		purge := false
		if v := r.URL.Query().Get("purge"); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return writeErr(w, fmt.Errorf("%w: query parameter purge=%q: want true or false", ErrInvalid, v))
			}
			purge = b
		}
		if err := d.Delete(r.Context(), r.PathValue("name"), purge); err != nil {
			return writeErr(w, err)
		}
		w.WriteHeader(http.StatusNoContent)
		return http.StatusNoContent
	})
	route("POST /v1/devices/{name}/attach", func(w http.ResponseWriter, r *http.Request) int {
		var req AttachRequest
		if err := decodeBody(r, &req); err != nil {
			return writeErr(w, err)
		}
		dv, err := d.Attach(r.Context(), r.PathValue("name"), req)
		if err != nil {
			return writeErr(w, err)
		}
		return writeJSON(w, http.StatusOK, dv)
	})
	route("POST /v1/devices/{name}/detach", func(w http.ResponseWriter, r *http.Request) int {
		if err := d.Detach(r.Context(), r.PathValue("name")); err != nil {
			return writeErr(w, err)
		}
		dv, err := d.Get(r.PathValue("name"))
		if err != nil {
			return writeErr(w, err)
		}
		return writeJSON(w, http.StatusOK, dv)
	})
	route("/", func(w http.ResponseWriter, r *http.Request) int {
		if allow := allowedMethods(mux, r); len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			return writeJSON(w, http.StatusMethodNotAllowed, APIError{Code: "method_not_allowed",
				Error: fmt.Sprintf("%s %s: method not allowed (allowed: %s)", r.Method, r.URL.Path, strings.Join(allow, ", "))})
		}
		return writeJSON(w, http.StatusNotFound, APIError{Code: "not_found", Error: fmt.Sprintf("no route %s %s", r.Method, r.URL.Path)})
	})
	return peerCheck(mux)
}

// allowedMethods lists, sorted, the methods for which mux has a route
// (other than the catch-all) matching r's path; empty when none does.
func allowedMethods(mux *http.ServeMux, r *http.Request) []string {
	var allow []string
	for _, m := range []string{http.MethodDelete, http.MethodGet, http.MethodHead, http.MethodPatch, http.MethodPost, http.MethodPut} {
		probe := &http.Request{Method: m, URL: r.URL, Host: r.Host, Header: http.Header{}}
		if _, pattern := mux.Handler(probe); pattern != "" && pattern != "/" {
			allow = append(allow, m)
		}
	}
	return allow
}

// peerCheck refuses requests whose peer (SO_PEERCRED) is neither root nor
// the daemon's own uid.
func peerCheck(next http.Handler) http.Handler {
	self := uint32(os.Getuid())
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cred, ok := r.Context().Value(peerKey{}).(*unix.Ucred)
		if !ok || cred == nil {
			writeJSON(w, http.StatusForbidden, APIError{Code: "forbidden", Error: "peer credentials unavailable"})
			return
		}
		if cred.Uid != 0 && cred.Uid != self {
			writeJSON(w, http.StatusForbidden, APIError{Code: "forbidden", Error: fmt.Sprintf("peer uid %d (pid %d) is neither root nor the daemon's uid %d", cred.Uid, cred.Pid, self)})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// connContext stores the peer's SO_PEERCRED in the request context.
func connContext(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return ctx
	}
	return context.WithValue(ctx, peerKey{}, cred)
}

// ListenControl creates the control socket at path (mode 0600, in a
// directory created 0700 if missing). A stale socket left by a dead daemon
// is replaced; a live one is an error.
func ListenControl(path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("control socket %s: exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("control socket %s: another daemon is listening", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("control socket %s: removing stale socket: %w", path, err)
		}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	return l, nil
}

// Serve runs the control API on l until ctx is done, then shuts the HTTP
// server down gracefully (in-flight requests finish) and closes the
// daemon (vhost-user servers drain their flushes).
func (d *Daemon) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{
		Handler:           d.Handler(),
		ConnContext:       connContext,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), d.cfg.Timeout)
	defer cancel()
	shutErr := srv.Shutdown(sctx)
	closeErr := d.Close(sctx)
	if errors.Is(serveErr, http.ErrServerClosed) {
		serveErr = nil
	}
	return errors.Join(serveErr, shutErr, closeErr)
}

func decodeBody(r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && ct != "application/json" {
		return fmt.Errorf("%w: Content-Type %q: want application/json", ErrInvalid, ct)
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody+1))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: request body: %w", ErrInvalid, err)
	}
	if dec.InputOffset() > maxBody {
		return fmt.Errorf("%w: request body larger than %d bytes", ErrInvalid, maxBody)
	}
	var extra json.RawMessage
	if err := dec.Decode(&extra); err != io.EOF {
		return fmt.Errorf("%w: request body: trailing data after the JSON object", ErrInvalid)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) int {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
	return code
}

// writeErr maps an error to a status and an APIError body.
func writeErr(w http.ResponseWriter, err error) int {
	e := APIError{Error: err.Error()}
	var code int
	code, e.Code = errStatus(err)
	var qe *QEMUError
	var ce *ConfinementError
	switch {
	case errors.As(err, &qe):
		e.QEMUClass = qe.Class
	case errors.As(err, &ce):
		// The refusal says what was refused and why; the generic
		// "invalid request" category it is wrapped in adds nothing.
		e.Error = strings.TrimPrefix(e.Error, ErrInvalid.Error()+": ")
	}
	return writeJSON(w, code, e)
}

// errStatus is the status and APIError code of err's category: 500
// "internal" for an error in none.
func errStatus(err error) (int, string) {
	var qe *QEMUError
	var ce *ConfinementError
	switch {
	case errors.As(err, &qe):
		return http.StatusConflict, "qemu_refused"
	case errors.As(err, &ce):
		return http.StatusForbidden, "confinement"
	case errors.Is(err, ErrNotFound), errors.Is(err, memfile.ErrImageNotFound):
		return http.StatusNotFound, "not_found"
	case errors.Is(err, ErrExists), errors.Is(err, memfile.ErrImageExists):
		return http.StatusConflict, "exists"
	case errors.Is(err, ErrBackingLocked), errors.Is(err, memfile.ErrLocked):
		return http.StatusConflict, "locked"
	case errors.Is(err, ErrConflict):
		return http.StatusConflict, "conflict"
	case errors.Is(err, ErrBadLayout):
		return http.StatusBadRequest, "bad_layout"
	case errors.Is(err, ErrInvalid):
		return http.StatusBadRequest, "invalid"
	case errors.Is(err, ErrUnusableBacking):
		return http.StatusUnprocessableEntity, "unusable_backing"
	case errors.Is(err, ErrNoSpace):
		return http.StatusInsufficientStorage, "no_space"
	case errors.Is(err, ErrUnavailable):
		return http.StatusServiceUnavailable, "unavailable"
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, "timeout"
	}
	return http.StatusInternalServerError, "internal"
}
