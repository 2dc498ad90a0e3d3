package vhostuser

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/sync"
)

// A keeper makes a front-end connection outlive the back-end process.
// QEMU 11.1's generic vhost-user device cannot take a reconnect: it tears
// its vhost device down when the socket closes and aborts when the next
// connection starts it. So the server hands a keeper (a separate, small
// process) a duplicate of the connection and of every message it receives
// from the front-end, with their descriptors. When the back-end process
// dies, the keeper's duplicates keep the socket and the shared memory,
// eventfds and back-end channel open, and QEMU sees nothing. A restarted
// server asks the keeper for the connection and the journal, replays the
// journal without answering (the front-end had its answers) and without
// mapping shared memory again (QEMU still has the mappings), restarts the
// started rings from the used index in guest memory, and carries on. The
// keeper exits when the front-end hangs up.

// Keeper control requests, framed like vhost-user messages on the keeper
// socket; every other request number is a journalled front-end message.
const (
	keeperReqBase = 0xff00 // the lowest keeper request number
	keeperReqConn = 0xff00 // server -> keeper, one fd: the front-end connection; keeper -> server: the same
	keeperReqGet  = 0xff01 // server -> keeper: send the connection and the journal
	keeperReqEnd  = 0xff02 // keeper -> server: end of the journal
	keeperReqDrop = 0xff03 // server -> keeper: let the connection go and exit
	keeperReqPeek = 0xff07 // tests, diagnostics -> keeper: send the connection and the journal, without taking it over
)

// keeperDrainTimeout bounds how long a takeover waits for the keeper to
// read the rest of the previous server's channel (that server is dead or
// closing, so its channel ends soon).
const keeperDrainTimeout = 5 * time.Second

// keeperNoConnTimeout ends a keeper that is never given a connection.
const keeperNoConnTimeout = 30 * time.Second

// Keeper configures a Server to keep its front-end connections in a
// keeper process at Path. Start starts that process (listening on Path)
// and returns once it accepts connections.
type Keeper struct {
	Path  string
	Start func(path string) error
	// JournalLimit is the number of records (or descriptors) the
	// server appends to the keeper's journal before it compacts it; 0
	// means DefaultJournalLimit. The journal is also compacted at every
	// takeover.
	JournalLimit int
}

func (k Keeper) journalLimit() int {
	if k.JournalLimit > 0 {
		return k.JournalLimit
	}
	return DefaultJournalLimit
}

// SetKeeper enables the keeper; call it before Serve.
func (s *Server) SetKeeper(k Keeper) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keeper = k
}

func (s *Server) keeperConfig() Keeper {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.keeper
}

type journalEntry struct {
	h   Header
	p   []byte
	fds []int
}

// RunKeeper is the keeper process's main loop: it listens on path (mode
// 0600), holds the connection and journal the server sends, hands them to
// a restarted server, and returns when the front-end hangs up (or when no
// connection arrives within 30 s).
func RunKeeper(path string, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	ln, err := listenSocket(path, "keeper")
	if err != nil {
		return err
	}
	defer ln.Close()
	var (
		mu      sync.Mutex
		conn    = -1
		journal []journalEntry
		// owner is the channel of the server that journals (the one
		// that gave the connection or took it over last); records
		// from any other channel are stale and dropped. ownerDone is
		// closed when the keeper has read all of owner's channel.
		owner     *net.UnixConn
		ownerDone chan struct{}
	)
	isOwner := func(c *net.UnixConn) bool {
		mu.Lock()
		defer mu.Unlock()
		return owner == c
	}
	hup := make(chan struct{})
	var hupOnce sync.Once
	gotConn := make(chan struct{}, 1)
	watch := func(fd int) {
		// Wait for the front-end to hang up without reading its data.
		for {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
			n, err := unix.Poll(pfd, -1)
			if err == unix.EINTR {
				continue
			}
			if err != nil || (n > 0 && pfd[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0) {
				mu.Lock()
				current := conn == fd
				mu.Unlock()
				if current {
					hupOnce.Do(func() { close(hup) })
				}
				return
			}
		}
	}
	serve := func(c *net.UnixConn) {
		done := make(chan struct{})
		defer close(done)
		defer c.Close()
		mc := &msgConn{c: c, name: "keeper " + path}
		// A replacement journal being received (keeperReqCompact up to
		// keeperReqCommit); dropped unless committed.
		var pending []journalEntry
		compacting := false
		defer func() {
			for _, e := range pending {
				closeFds(e.fds)
			}
		}()
		for {
			h, p, fds, err := mc.readMessage(false)
			if err != nil {
				return
			}
			switch h.Request {
			case keeperReqCompact:
				closeFds(fds)
				for _, e := range pending {
					closeFds(e.fds)
				}
				pending, compacting = nil, true
			case keeperReqCommit:
				closeFds(fds)
				if !compacting || !isOwner(c) {
					continue
				}
				mu.Lock()
				for _, e := range journal {
					closeFds(e.fds)
				}
				journal, pending, compacting = pending, nil, false
				n := len(journal)
				mu.Unlock()
				log.Debug("keeper: journal compacted", "keeper", path, "records", n)
			case keeperReqConn:
				if len(fds) != 1 {
					closeFds(fds)
					continue
				}
				mu.Lock()
				if conn >= 0 {
					unix.Close(conn)
				}
				for _, e := range journal {
					closeFds(e.fds)
				}
				conn, journal = fds[0], nil
				owner, ownerDone = c, done
				mu.Unlock()
				go watch(fds[0])
				select {
				case gotConn <- struct{}{}:
				default:
				}
				log.Info("keeper: holding a front-end connection", "keeper", path)
			case keeperReqGet, keeperReqPeek:
				closeFds(fds)
				if h.Request == keeperReqGet {
					// A takeover: first read the rest of the previous
					// server's channel (what it journalled before it
					// died belongs in the journal), then journal only
					// from this one.
					mu.Lock()
					prev, prevDone := owner, ownerDone
					mu.Unlock()
					if prev != nil && prev != c {
						select {
						case <-prevDone:
						case <-time.After(keeperDrainTimeout):
							log.Warn("keeper: the previous server's channel is still open; taking over without its last records", "keeper", path)
						}
					}
					mu.Lock()
					owner, ownerDone = c, done
					mu.Unlock()
				}
				n, err := handOver(&mu, &conn, &journal, mc)
				if err != nil {
					log.Warn("keeper: handing over", "keeper", path, "err", err)
					return
				}
				log.Info("keeper: handed the connection over", "keeper", path, "messages", n)
			case keeperReqDrop:
				closeFds(fds)
				mu.Lock()
				if conn >= 0 {
					unix.Close(conn)
					conn = -1
				}
				mu.Unlock()
				log.Info("keeper: told to let the connection go; exiting", "keeper", path)
				select {
				case gotConn <- struct{}{}:
				default:
				}
				hupOnce.Do(func() { close(hup) })
				return
			default:
				if !isOwner(c) {
					closeFds(fds)
					log.Warn("keeper: a record from a server that is not the current one dropped", "keeper", path, "request", h.Request)
					continue
				}
				if compacting {
					pending = append(pending, journalEntry{h: h, p: p, fds: fds})
					continue
				}
				mu.Lock()
				journal = append(journal, journalEntry{h: h, p: p, fds: fds})
				mu.Unlock()
			}
		}
	}
	go func() {
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			go serve(c)
		}
	}()
	select {
	case <-gotConn:
	case <-time.After(keeperNoConnTimeout):
		return fmt.Errorf("keeper %s: no connection within %s", path, keeperNoConnTimeout)
	}
	<-hup
	log.Info("keeper: the front-end hung up; exiting", "keeper", path)
	return nil
}

// handOver sends the held connection and the journal (or just the end
// marker when nothing is held) on mc.
func handOver(mu *sync.Mutex, conn *int, jp *[]journalEntry, mc *msgConn) (int, error) {
	mu.Lock()
	defer mu.Unlock()
	journal := *jp
	if *conn < 0 {
		return 0, mc.writeMessage(Header{Request: keeperReqEnd, Flags: FlagVersion}, nil, nil)
	}
	if err := mc.writeMessage(Header{Request: keeperReqConn, Flags: FlagVersion}, nil, []int{*conn}); err != nil {
		return 0, err
	}
	for _, e := range journal {
		if err := mc.writeMessage(e.h, e.p, e.fds); err != nil {
			return 0, err
		}
	}
	return len(journal), mc.writeMessage(Header{Request: keeperReqEnd, Flags: FlagVersion}, nil, nil)
}

// dropKeeper tells the keeper at path (if any) to let its connection go,
// so that the front-end sees the back-end leave.
func dropKeeper(path string) {
	if path == "" {
		return
	}
	uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return
	}
	defer uc.Close()
	uc.SetDeadline(time.Now().Add(2 * time.Second))
	mc := &msgConn{c: uc, name: "keeper " + path}
	_ = mc.writeMessage(Header{Request: keeperReqDrop, Flags: FlagVersion}, nil, nil)
}

// attachKeeper gives the keeper (started when not running) a duplicate of
// the front-end connection c and returns the channel to journal on.
func (s *Server) attachKeeper(k Keeper, c *net.UnixConn) (*msgConn, error) {
	kc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: k.Path, Net: "unix"})
	if err != nil {
		if k.Start == nil {
			return nil, fmt.Errorf("keeper %s: %w", k.Path, err)
		}
		if err := k.Start(k.Path); err != nil {
			return nil, fmt.Errorf("starting keeper %s: %w", k.Path, err)
		}
		if kc, err = net.DialUnix("unix", nil, &net.UnixAddr{Name: k.Path, Net: "unix"}); err != nil {
			return nil, fmt.Errorf("keeper %s: %w", k.Path, err)
		}
	}
	// Not c.File().Fd(): Fd switches the file description, which the
	// duplicate shares with c, to blocking mode, and a session blocked
	// in recvmsg could then not be closed.
	fd, err := dupFd(c)
	if err != nil {
		kc.Close()
		return nil, fmt.Errorf("keeper %s: duplicating the connection: %w", k.Path, err)
	}
	defer unix.Close(fd)
	mc := &msgConn{c: kc, name: "keeper " + k.Path}
	if err := mc.writeMessage(Header{Request: keeperReqConn, Flags: FlagVersion}, nil, []int{fd}); err != nil {
		kc.Close()
		return nil, err
	}
	return mc, nil
}

// fetchKeeper asks a running keeper for a connection it holds; ok is
// false when there is no keeper or it holds nothing.
// With peek, the keeper only shows what it holds (tests, diagnostics):
// the journalling server stays the current one.
func (s *Server) fetchKeeper(k Keeper, peek bool) (c *net.UnixConn, kc *msgConn, journal []journalEntry, ok bool, err error) {
	if k.Path == "" {
		return nil, nil, nil, false, nil
	}
	uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: k.Path, Net: "unix"})
	if err != nil {
		return nil, nil, nil, false, nil
	}
	mc := &msgConn{c: uc, name: "keeper " + k.Path}
	fail := func(err error) (*net.UnixConn, *msgConn, []journalEntry, bool, error) {
		uc.Close()
		for _, e := range journal {
			closeFds(e.fds)
		}
		return nil, nil, nil, false, fmt.Errorf("keeper %s: %w", k.Path, err)
	}
	uc.SetDeadline(time.Now().Add(10 * time.Second))
	req := uint32(keeperReqGet)
	if peek {
		req = keeperReqPeek
	}
	if err := mc.writeMessage(Header{Request: req, Flags: FlagVersion}, nil, nil); err != nil {
		return fail(err)
	}
	h, _, fds, err := mc.readMessage(false)
	if err != nil {
		return fail(err)
	}
	if h.Request == keeperReqEnd {
		uc.Close()
		return nil, nil, nil, false, nil
	}
	if h.Request != keeperReqConn || len(fds) != 1 {
		closeFds(fds)
		return fail(fmt.Errorf("unexpected answer %#x with %d fds", h.Request, len(fds)))
	}
	fc, err := unixConnFromFd(fds[0], "vhost-user socket (kept)")
	if err != nil {
		return fail(err)
	}
	for {
		h, p, fds, err := mc.readMessage(false)
		if err != nil {
			fc.Close()
			return fail(err)
		}
		if h.Request == keeperReqEnd {
			break
		}
		journal = append(journal, journalEntry{h: h, p: p, fds: fds})
	}
	uc.SetDeadline(time.Time{})
	return fc, mc, journal, true, nil
}

// resume serves a connection taken over from the keeper: replay, then the
// normal message loop.
func (s *Server) resume(ctx context.Context, c *net.UnixConn, kc *msgConn, journal []journalEntry) error {
	sess := newSession(s, c)
	sess.keeper = kc
	sess.journalLimit = s.keeperConfig().journalLimit()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		kc.c.Close()
		return errors.New("server closed")
	}
	s.cur = sess
	s.mu.Unlock()
	s.Stats.Connections.Add(1)
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	rerr := sess.replay(journal)
	if rerr == nil {
		rerr = sess.finishReplay()
	}
	var err error
	if rerr != nil {
		err = fmt.Errorf("replaying %d messages from the keeper: %w", len(journal), rerr)
	} else {
		s.log.Info("vhost-user session taken over from the keeper", "messages", len(journal))
		// The new process starts from a short journal.
		sess.compactJournal()
		err = sess.loop()
	}
	sess.teardown()
	s.mu.Lock()
	s.cur = nil
	s.mu.Unlock()
	if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) || errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// replay applies journal records (whose fds it consumes, on error too) to
// a fresh session with replaying set: nothing is answered, mapped or
// started. A state record sets the session's flags; any other is handled
// as the front-end message it was. The first failing record stops the
// replay and names its index and request.
func (s *session) replay(recs []journalEntry) error {
	s.replaying = true
	defer func() { s.replaying = false }()
	for i, e := range recs {
		var err error
		if e.h.Request == keeperReqState {
			closeFds(e.fds) // a state record carries none; applyFlags takes none
			err = s.applyFlags(e.p)
		} else {
			err = s.dispatch(e.h, e.p, e.fds)
		}
		if err != nil {
			for _, r := range recs[i+1:] {
				closeFds(r.fds)
			}
			return fmt.Errorf("record %d (%#x): %w", i, e.h.Request, err)
		}
	}
	return nil
}

// finishReplay starts the rings the journal left started, from the used
// index in guest memory: requests the previous process took but never
// completed are taken again.
func (s *session) finishReplay() error {
	for _, q := range s.queues {
		q.mu.Lock()
		if q.resumeStart {
			q.resumeStart = false
			q.resumeFromUsed = true
			if err := q.startLocked(); err != nil {
				q.mu.Unlock()
				return fmt.Errorf("restarting vring %d: %w", q.index, err)
			}
		}
		q.mu.Unlock()
	}
	return nil
}

// journal sends a received front-end message to the keeper (before it is
// handled, so that the keeper always has at least what the back-end
// acted on). A failing keeper is dropped with a warning.
func (s *session) journal(h Header, p []byte, fds []int) {
	if s.keeper == nil || s.replaying {
		return
	}
	if h.Request >= keeperReqBase {
		// Not a vhost-user request (dispatch refuses it without a
		// state change), and the keeper would take it for one of its
		// own: a front-end must not be able to make the keeper drop
		// the connection or freeze its journal.
		return
	}
	s.appended++
	s.appendedFds += len(fds)
	if err := s.keeper.writeMessage(h, p, fds); err != nil {
		s.log.Warn("keeper: journalling failed; this connection will not survive a restart", "err", err)
		s.keeper.c.Close()
		s.keeper = nil
	}
}
