package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/sync"
)

// ErrClosed is wrapped by the error of every command that could not
// complete because the connection closed (QEMU exited, the socket broke,
// or Close was called).
var ErrClosed = errors.New("QMP connection closed")

// DefaultHandshakeTimeout bounds the greeting and capabilities
// negotiation when Dial's context has no deadline of its own.
const DefaultHandshakeTimeout = 30 * time.Second

// DefaultMaxMessageSize is the default bound on one server message. It
// is far above anything QEMU sends (query-qmp-schema is a few MiB) and
// only stops a broken or hostile peer from exhausting memory.
const DefaultMaxMessageSize = 512 << 20

// Option changes how Dial connects.
type Option func(*options)

type options struct {
	logger  *slog.Logger
	maxMsg  int64
	timeout time.Duration
}

// WithLogger sets the logger for stray replies and undecodable messages
// (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithMaxMessageSize bounds one server message to n bytes; n <= 0 means
// no bound at all.
func WithMaxMessageSize(n int64) Option { return func(o *options) { o.maxMsg = n } }

// WithHandshakeTimeout sets the handshake bound used when Dial's context
// has no deadline.
func WithHandshakeTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// Client is a connection to one QMP socket. All methods are safe for
// concurrent use.
type Client struct {
	path     string
	conn     *net.UnixConn
	log      *slog.Logger
	greeting Greeting
	dec      *json.Decoder
	in       *limitReader
	done     chan struct{}
	nextID   atomic.Uint64
	closing  atomic.Bool

	// writeMu serialises writes so that commands never interleave.
	writeMu sync.Mutex
	// fdMu serialises commands that carry file descriptors: QEMU hands
	// the most recently received descriptor to the next getfd/add-fd.
	fdMu sync.Mutex

	mu sync.Mutex
	// +checklocks:mu
	pending map[uint64]chan reply
	// +checklocks:mu
	subs map[*Subscription]struct{}
	// +checklocks:mu
	closed bool
	// +checklocks:mu
	err error
}

type reply struct {
	ret json.RawMessage
	err error
}

// Dial connects to the QMP socket at path, reads the greeting and
// negotiates capabilities (no optional capability is enabled). ctx bounds
// the handshake only; without a deadline DefaultHandshakeTimeout applies.
func Dial(ctx context.Context, path string, opt ...Option) (*Client, error) {
	o := options{logger: slog.Default(), maxMsg: DefaultMaxMessageSize, timeout: DefaultHandshakeTimeout}
	for _, f := range opt {
		f(&o)
	}
	if _, ok := ctx.Deadline(); !ok && o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, connectErr(path, err)
	}
	c := &Client{
		path:    path,
		conn:    nc.(*net.UnixConn),
		log:     o.logger,
		done:    make(chan struct{}),
		pending: make(map[uint64]chan reply),
		subs:    make(map[*Subscription]struct{}),
	}
	c.in = &limitReader{r: c.conn, max: o.maxMsg}
	c.dec = json.NewDecoder(c.in)
	if err := c.readGreeting(ctx); err != nil {
		c.conn.Close()
		return nil, err
	}
	go c.readLoop()
	if err := c.execute(ctx, "qmp_capabilities", nil, nil, nil); err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp %s: capabilities negotiation: %w", path, err)
	}
	return c, nil
}

// connectError is a failure to connect to the socket at path. net's own
// error ("dial unix PATH: connect: ...") names the path again, so the text
// is built from its system error and a reason; the net error stays in the
// chain for errors.Is (fs.ErrNotExist, syscall.ECONNREFUSED, ...) and
// errors.As (*net.OpError, net.Error).
type connectError struct {
	path, reason string
	err          error
}

func (e *connectError) Error() string { return "qmp " + e.path + ": " + e.reason }
func (e *connectError) Unwrap() error { return e.err }

// connectErr explains err, from connecting to path: a path that is not a
// socket at all (connect(2) says ECONNREFUSED, as for a socket nobody
// listens on) says what it is instead.
func connectErr(path string, err error) error {
	cause := err
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		cause = oe.Err
		var se *os.SyscallError
		if errors.As(cause, &se) && se.Err != nil {
			cause = se.Err
		}
	}
	reason := "connect: " + cause.Error()
	switch {
	case errors.Is(err, unix.ECONNREFUSED):
		if what := notSocket(path); what != "" {
			reason = "not a Unix socket (it is " + what + ")"
		} else {
			reason += " (nothing listens on it: the VM has exited, or this is not its QMP socket)"
		}
	case errors.Is(err, unix.ENOENT):
		reason += " (no socket at this path: is the VM running, and is this its -qmp path?)"
	}
	return &connectError{path: path, reason: reason, err: err}
}

// notSocket describes what is at path when it exists and is not a socket
// ("a regular file", "a directory", ...), else "".
func notSocket(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return ""
	}
	return NotSocket(fi)
}

// NotSocket describes what fi is when it is not a socket ("a regular
// file", "a directory", "a named pipe", ...), else "": the words of Dial's
// "not a Unix socket (it is ...)".
func NotSocket(fi os.FileInfo) string {
	if fi.Mode()&os.ModeSocket != 0 {
		return ""
	}
	switch {
	case fi.Mode().IsRegular():
		return "a regular file"
	case fi.IsDir():
		return "a directory"
	case fi.Mode()&os.ModeNamedPipe != 0:
		return "a named pipe"
	case fi.Mode()&os.ModeCharDevice != 0:
		return "a character device"
	case fi.Mode()&os.ModeDevice != 0:
		return "a block device"
	}
	return "not a socket"
}

func (c *Client) readGreeting(ctx context.Context) error {
	if dl, ok := ctx.Deadline(); ok {
		c.conn.SetReadDeadline(dl)
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		c.conn.SetReadDeadline(time.Unix(1, 0))
		close(fired)
	})
	raw, err := c.readRaw()
	if !stop() {
		<-fired
	}
	c.conn.SetReadDeadline(time.Time{})
	if err != nil {
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			// Only our deadlines, which come from ctx, time reads out.
			cause := context.Cause(ctx)
			if cause == nil {
				cause = context.DeadlineExceeded
			}
			return fmt.Errorf("qmp %s: no QMP greeting (not a QMP socket, or another client holds the monitor): %w", c.path, cause)
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			return fmt.Errorf("qmp %s: connection closed before the QMP greeting (not a QMP socket?): %w", c.path, err)
		}
		return fmt.Errorf("qmp %s: not a QMP socket: reading greeting: %w", c.path, err)
	}
	m, err := DecodeMessage(raw)
	if err != nil {
		return fmt.Errorf("qmp %s: not a QMP socket: first message: %w", c.path, err)
	}
	if m.Kind != KindGreeting {
		return fmt.Errorf("qmp %s: not a QMP socket: first message is a %s, not the greeting: %w", c.path, m.Kind, ErrMalformed)
	}
	c.greeting = *m.Greeting
	return nil
}

// Path is the socket path the client was dialled with.
func (c *Client) Path() string { return c.path }

// Greeting is the server's greeting (QEMU version and capabilities).
func (c *Client) Greeting() Greeting { return c.greeting }

// Done is closed once the connection has closed and every pending
// command has failed.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is why the connection closed ("qmp PATH: ..."), or nil while it is
// open.
func (c *Client) Err() error {
	if err := c.closeCause(); err != nil {
		return fmt.Errorf("qmp %s: %w", c.path, err)
	}
	return nil
}

// closeCause is why the connection closed, without the path, or nil.
func (c *Client) closeCause() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close closes the connection, fails pending commands with ErrClosed and
// closes every subscription. It waits for the reader to stop. Closing a
// closed client is a no-op.
func (c *Client) Close() error {
	c.closing.Store(true)
	c.conn.Close()
	<-c.done
	return nil
}

// readRaw reads the next JSON value from the stream.
func (c *Client) readRaw() (json.RawMessage, error) {
	c.in.start = c.dec.InputOffset()
	var raw json.RawMessage
	if err := c.dec.Decode(&raw); err != nil {
		if errors.Is(err, errTooLarge) {
			return nil, fmt.Errorf("message at byte %d is over %d bytes: %w", c.in.start, c.in.max, err)
		}
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return nil, fmt.Errorf("%w: invalid JSON at byte %d of the stream: %v", ErrMalformed, se.Offset, se)
		}
		return nil, err
	}
	return raw, nil
}

func (c *Client) readLoop() {
	var cause error
	for {
		raw, err := c.readRaw()
		if err != nil {
			cause = err
			break
		}
		c.dispatch(raw)
	}
	if c.closing.Load() {
		cause = fmt.Errorf("%w by the client", ErrClosed)
	} else if errors.Is(cause, io.EOF) {
		cause = fmt.Errorf("%w by QEMU (EOF)", ErrClosed)
	} else {
		cause = fmt.Errorf("%w: %w", ErrClosed, cause)
	}
	c.conn.Close()
	c.mu.Lock()
	c.closed = true
	c.err = cause
	for id, ch := range c.pending {
		ch <- reply{err: cause}
		delete(c.pending, id)
	}
	for s := range c.subs {
		s.close()
		delete(c.subs, s)
	}
	c.mu.Unlock()
	close(c.done)
}

func (c *Client) dispatch(raw json.RawMessage) {
	m, err := DecodeMessage(raw)
	if err != nil {
		// A reply we cannot decode still fails its command rather than
		// leaving it to time out.
		var idOnly struct {
			ID json.RawMessage `json:"id"`
		}
		if json.Unmarshal(raw, &idOnly) == nil {
			if id, ok := parseID(idOnly.ID); ok && c.deliver(id, true, reply{err: err}) {
				return
			}
		}
		c.log.Warn("qmp: ignoring undecodable message", "qmp", c.path, "err", err)
		return
	}
	switch m.Kind {
	case KindEvent:
		c.mu.Lock()
		for s := range c.subs {
			s.offer(*m.Event)
		}
		c.mu.Unlock()
	case KindReturn, KindError:
		r := reply{ret: m.Return}
		if m.Error != nil {
			r = reply{err: m.Error}
		}
		id, ok := parseID(m.ID)
		if len(m.ID) == 0 {
			// QEMU answers a request it could not parse without an id.
			// In-band commands run in order, so it belongs to the oldest.
			ok = false
		} else if !ok {
			c.log.Warn("qmp: reply with an id we never sent", "qmp", c.path, "id", string(m.ID))
			return
		}
		if !c.deliver(id, ok, r) {
			c.log.Debug("qmp: reply for a command no longer waiting", "qmp", c.path, "id", string(m.ID))
		}
	case KindGreeting:
		c.log.Warn("qmp: ignoring a second greeting", "qmp", c.path)
	}
}

// deliver hands r to the command with id (or, without one, the oldest).
func (c *Client) deliver(id uint64, haveID bool, r reply) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !haveID {
		first := true
		for k := range c.pending {
			if first || k < id {
				id, first = k, false
			}
		}
		if first {
			return false
		}
	}
	ch, ok := c.pending[id]
	if !ok {
		return false
	}
	delete(c.pending, id)
	ch <- r
	return true
}

// Execute runs cmd with args (marshalled to a JSON object; nil for none)
// and decodes the "return" value into result unless result is nil
// (a *json.RawMessage receives it verbatim). A refusal by QEMU is an
// error wrapping *Error. When ctx ends first Execute returns ctx's error;
// QEMU may still carry the command out.
func (c *Client) Execute(ctx context.Context, cmd string, args, result any) error {
	if err := c.execute(ctx, cmd, args, result, nil); err != nil {
		return c.cmdErr(cmd, err)
	}
	return nil
}

// cmdErr names the socket and the command in err, a failure of cmd: the
// one place a command's error gets the socket path.
func (c *Client) cmdErr(cmd string, err error) error {
	return fmt.Errorf("qmp %s: %s: %w", c.path, cmd, err)
}

// execute runs one command. Its errors say what went wrong but name
// neither the socket nor the command: callers add those (cmdErr).
func (c *Client) execute(ctx context.Context, cmd string, args, result any, fds []int) error {
	id := c.nextID.Add(1)
	b, err := json.Marshal(command{Execute: cmd, Arguments: args, ID: id})
	if err != nil {
		return fmt.Errorf("encoding arguments: %w", err)
	}
	ch := make(chan reply, 1)
	c.mu.Lock()
	if c.closed {
		err := c.err
		c.mu.Unlock()
		return err
	}
	c.pending[id] = ch
	c.mu.Unlock()
	forget := func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}
	if err := c.send(ctx, b, fds); err != nil {
		forget()
		if errors.Is(err, net.ErrClosed) || errors.Is(err, unix.EPIPE) || errors.Is(err, unix.ECONNRESET) {
			err = fmt.Errorf("%w: %w", ErrClosed, err)
		}
		return fmt.Errorf("sending: %w", err)
	}
	var r reply
	select {
	case r = <-ch:
	case <-ctx.Done():
		forget()
		select { // the reply may have raced the deadline
		case r = <-ch:
		default:
			return fmt.Errorf("no reply: %w", context.Cause(ctx))
		}
	}
	if r.err != nil {
		return r.err
	}
	if result != nil {
		if err := json.Unmarshal(r.ret, result); err != nil {
			return fmt.Errorf("decoding the return value: %w: %v", ErrMalformed, err)
		}
	}
	return nil
}

// send writes one command, with fds as SCM_RIGHTS on its first bytes. A
// write that stops part-way leaves the stream unusable, so it closes the
// connection.
func (c *Client) send(ctx context.Context, b []byte, fds []int) error {
	b = append(b, '\n')
	c.writeMu.Lock()
	err := c.sendLocked(ctx, b, fds)
	c.writeMu.Unlock()
	return err
}

// sendLocked is send with writeMu held.
func (c *Client) sendLocked(ctx context.Context, b []byte, fds []int) error {
	if err := ctx.Err(); err != nil {
		return context.Cause(ctx)
	}
	dl, _ := ctx.Deadline()
	c.conn.SetWriteDeadline(dl)
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		c.conn.SetWriteDeadline(time.Unix(1, 0))
		close(fired)
	})
	defer func() {
		if !stop() {
			<-fired
		}
		c.conn.SetWriteDeadline(time.Time{})
	}()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, _, err := c.conn.WriteMsgUnix(b, oob, nil)
	if err == nil && n < len(b) {
		var m int
		m, err = c.conn.Write(b[n:])
		n += m
	}
	if err != nil {
		if n > 0 {
			c.conn.Close()
			if ctx.Err() != nil {
				err = context.Cause(ctx)
			}
			return fmt.Errorf("%w: only %d of the command's %d bytes were written: %w", ErrClosed, n, len(b), err)
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return err
	}
	return nil
}

// fileFD runs f with the descriptor of file, keeping file alive.
func fileFD(file *os.File, f func(fd int) error) error {
	if file == nil {
		return errors.New("no file given")
	}
	rc, err := file.SyscallConn()
	if err != nil {
		return fmt.Errorf("%s: %w", file.Name(), err)
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return fmt.Errorf("%s: %w", file.Name(), err)
	}
	return ferr
}

var errTooLarge = errors.New("message too large")

// limitReader fails a read once the message being decoded (which began
// at stream offset start) has exceeded max bytes. Only the reader
// goroutine (or Dial, before it starts) touches it.
type limitReader struct {
	r     io.Reader
	n     int64 // bytes read from r
	start int64 // offset where the current message began
	max   int64 // <= 0: unbounded
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.max > 0 && l.n-l.start > l.max {
		return 0, errTooLarge
	}
	n, err := l.r.Read(p)
	l.n += int64(n)
	return n, err
}
