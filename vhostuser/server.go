package vhostuser

import (
	"context"
	"encoding/binary"
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

// backendReplyTimeout bounds the wait for the front-end's answer to a
// back-end request (QEMU answers SHMEM_MAP from its main loop at once).
const backendReplyTimeout = 30 * time.Second

// StatusNeedsReset is the virtio DEVICE_NEEDS_RESET status bit.
const StatusNeedsReset = 0x40

// coreProtocolFeatures are the protocol features the core implements.
const coreProtocolFeatures = ProtoMQ | ProtoReplyAck | ProtoConfig | ProtoBackendReq |
	ProtoBackendSendFd | ProtoConfigureMemSlots | ProtoInflightShmfd | ProtoResetDevice | ProtoStatus

// Stats are counters of one Server, safe to read at any time.
type Stats struct {
	Connections atomic.Uint64
	Requests    atomic.Uint64 // chains handed to the device
	BadChains   atomic.Uint64 // chains or rings refused (device needs reset)
	ShmemMaps   atomic.Uint64 // SHMEM_MAP requests acknowledged (or sent without ack)
}

// Server serves one Backend to one front-end at a time; when the
// front-end disconnects it resets and accepts the next connection (QEMU's
// reconnect).
type Server struct {
	backend Backend
	log     *slog.Logger
	Stats   Stats

	mu sync.Mutex
	// +checklocks:mu
	ln *net.UnixListener
	// +checklocks:mu
	cur *session
	// +checklocks:mu
	closed bool
	// detached: Detach was called, so Close leaves the front-end
	// connection with the keeper instead of telling it to let go.
	// +checklocks:mu
	detached bool
	// +checklocks:mu
	keeper Keeper
}

// NewServer checks the backend's description and returns a server for it.
func NewServer(b Backend, log *slog.Logger) (*Server, error) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		return nil, errors.New("vhost-user back-end: big-endian hosts are not supported (ring index words are accessed as little-endian halves of 32-bit words)")
	}
	if err := checkBackend(b); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	return &Server{backend: b, log: log}, nil
}

// ProtocolFeatures is what the server offers: the core set, the device's
// extras and, for a device with shared-memory regions, the SHMEM feature
// without CONFIGURE_MEM_SLOTS (QEMU 11.1.2 crashes on the next start after
// a reboot with both).
func (s *Server) ProtocolFeatures() uint64 {
	p := uint64(coreProtocolFeatures) | s.backend.ProtocolFeatures()
	if len(s.backend.ShmemRegions()) > 0 {
		p |= ProtoShmem
		p &^= ProtoConfigureMemSlots
	}
	return p
}

// Listen creates the Unix socket at path (mode 0600), replacing a stale
// socket file but nothing else (see listenSocket).
func (s *Server) Listen(path string) error {
	ln, err := listenSocket(path, "listen")
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		ln.Close()
		return fmt.Errorf("listen %s: server closed", path)
	}
	s.ln = ln
	return nil
}

// Serve accepts front-ends one at a time until ctx ends or Close.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	ln := s.ln
	s.mu.Unlock()
	if ln == nil {
		return errors.New("serve: Listen was not called")
	}
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	if k := s.keeperConfig(); k.Path != "" {
		c, kc, journal, ok, err := s.fetchKeeper(k, false)
		if err != nil {
			s.log.Warn("keeper: cannot take the connection over", "err", err)
		} else if ok {
			if err := s.resume(ctx, c, kc, journal); err != nil {
				s.log.Warn("vhost-user front-end session ended", "err", err)
			}
		}
	}
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil || s.isClosed() {
				return nil
			}
			return fmt.Errorf("accept on %s: %w", ln.Addr(), err)
		}
		if err := s.ServeConn(ctx, c); err != nil {
			s.log.Warn("vhost-user front-end session ended", "err", err)
		}
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Close stops listening and ends the current session. Unless Detach was
// called first, it tells the keeper to let the front-end connection go, so
// the front-end sees the back-end leave.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	ln, cur, k, detached := s.ln, s.cur, s.keeper, s.detached
	s.mu.Unlock()
	// A release lets the front-end see the back-end leave (a kept
	// connection would leave QEMU waiting for answers forever); a crash
	// or a Detach leaves the connection to the keeper, for the next
	// server on the same keeper path to take over.
	if !detached {
		dropKeeper(k.Path)
	}
	if cur != nil {
		cur.conn.c.Close()
	}
	if ln != nil {
		return ln.Close()
	}
	return nil
}

// Detach stops serving like Close but leaves the front-end connection
// with the keeper (when one is set), as a crash would: a server started
// later on the same keeper path takes the session over and the front-end
// notices nothing. It is for a back-end restart (daemon shutdown while
// guests run); without a keeper it is Close.
func (s *Server) Detach() error {
	s.mu.Lock()
	s.detached = true
	s.mu.Unlock()
	return s.Close()
}

// current returns the session being served, or an error.
func (s *Server) current() (*session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil {
		return nil, errors.New("no front-end is connected")
	}
	return s.cur, nil
}

// UnmapShmem sends SHMEM_UNMAP for a mapping the device made (QEMU drops
// every mapping itself when the device stops; this is for a device that
// withdraws one while running). It must not be called from a Backend
// method that runs inside the message loop.
func (s *Server) UnmapShmem(m ShmemMapping) error {
	sess, err := s.current()
	if err != nil {
		return err
	}
	proto := sess.proto.Load()
	if proto&ProtoShmem == 0 {
		return errors.New("SHMEM_UNMAP: the front-end did not negotiate the shared-memory feature")
	}
	p, _ := ShmemMapReq{ShmID: m.ShmID, FdOffset: m.FdOffset, ShmOffset: m.ShmOffset, Len: m.Len}.MarshalBinary()
	return sess.backendRequest(BackendShmemUnmap, p, nil, proto&ProtoReplyAck != 0)
}

// NotifyConfigChange tells the front-end that the config space changed
// (CONFIG_CHANGE_MSG); the guest gets a config interrupt.
func (s *Server) NotifyConfigChange() error {
	sess, err := s.current()
	if err != nil {
		return err
	}
	return sess.backendRequest(BackendConfigChangeMsg, nil, nil, sess.proto.Load()&ProtoReplyAck != 0)
}

// ServeConn runs one front-end session on c until it disconnects, then
// resets every queue (requests still in flight complete without touching
// the ring, so a new back-end can resubmit them from the inflight area).
func (s *Server) ServeConn(ctx context.Context, c *net.UnixConn) error {
	sess := newSession(s, c)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return errors.New("server closed")
	}
	s.cur = sess
	k := s.keeper
	s.mu.Unlock()
	if k.Path != "" {
		kc, err := s.attachKeeper(k, c)
		if err != nil {
			s.log.Warn("keeper: not available; this connection will not survive a restart", "err", err)
		}
		sess.keeper = kc
		sess.journalLimit = k.journalLimit()
	}
	s.Stats.Connections.Add(1)
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	err := sess.loop()
	sess.teardown()
	s.mu.Lock()
	s.cur = nil
	s.mu.Unlock()
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// session is the state of one front-end connection. Apart from what is
// marked, it is touched only by the message loop's goroutine.
type session struct {
	srv    *Server
	conn   msgConn
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc

	acked     atomic.Uint64 // acked virtio features
	featSet   bool
	proto     atomic.Uint64 // acked protocol features
	mem       atomic.Pointer[memTable]
	queues    []*queue
	status    atomic.Uint64
	needReset atomic.Bool

	// backendMu serialises request/reply pairs on the back-end channel;
	// backendCh can be swapped or closed without it, so a front-end that
	// never answers cannot keep the session from ending.
	backendMu sync.Mutex
	backendCh atomic.Pointer[msgConn]

	inflight      []byte // mapping of the inflight area
	inflightQSize uint16
	// inflightFd is a duplicate of the area's fd and inflightSize,
	// inflightOff and inflightNQ its SET_INFLIGHT_FD values, kept for
	// snapshot (valid while inflight is set).
	inflightFd   int
	inflightSize uint64
	inflightOff  uint64
	inflightNQ   uint16
	mapped       bool // SHMEM_MAP sent for the current start
	// keeper receives every front-end message (nil: no keeper);
	// replaying is set while a journal from the keeper is replayed:
	// nothing is answered, mapped or started then.
	keeper    *msgConn
	replaying bool
	// appended counts the records (and the fds they carry) sent to the
	// keeper since its journal was last compacted; journalLimit is the
	// count that triggers the next compaction.
	appended, appendedFds int
	journalLimit          int
	mapWG                 sync.WaitGroup
}

func newSession(s *Server, c *net.UnixConn) *session {
	ctx, cancel := context.WithCancel(context.Background())
	sess := &session{srv: s, conn: msgConn{c: c, name: "vhost-user socket"}, log: s.log, ctx: ctx, cancel: cancel, inflightFd: -1}
	for i := 0; i < s.backend.NumQueues(); i++ {
		sess.queues = append(sess.queues, &queue{s: sess, index: i})
	}
	return sess
}

// acquireMem returns the current table with a reference, or nil.
func (s *session) acquireMem() *memTable {
	for {
		t := s.mem.Load()
		if t == nil {
			return nil
		}
		if t.tryRef() {
			return t
		}
	}
}

// deviceError marks the device as needing a reset and tells the front-end
// through the queue's error eventfd.
func (s *session) deviceError(q *queue, err error) {
	s.srv.Stats.BadChains.Add(1)
	s.needReset.Store(true)
	s.log.Error("virtqueue error: device needs reset", "vring", q.index, "err", err)
	q.signalErr()
}

func (s *session) loop() error {
	for {
		h, payload, fds, err := s.conn.readMessage(false)
		if err != nil {
			return err
		}
		s.journal(h, payload, fds)
		if err := s.dispatch(h, payload, fds); err != nil {
			return err
		}
		if s.keeper != nil && (s.appended >= s.journalLimit || s.appendedFds >= s.journalLimit) {
			s.compactJournal()
		}
	}
}

// mandatoryReply lists requests that are always answered.
func mandatoryReply(rt RequestType) bool {
	switch rt {
	case ReqGetFeatures, ReqGetProtocolFeatures, ReqGetVringBase, ReqGetQueueNum,
		ReqGetConfig, ReqGetInflightFd, ReqGetMaxMemSlots, ReqGetStatus, ReqGetShmemConfig,
		ReqPostcopyAdvise, ReqPostcopyEnd, ReqIOTLBMsg, ReqCreateCryptoSession,
		ReqGetSharedObject, ReqSetDeviceStateFd, ReqCheckDeviceState:
		return true
	}
	return false
}

func u64(v uint64) []byte { b, _ := U64{v}.MarshalBinary(); return b }

func boolU64(err error) []byte {
	if err != nil {
		return u64(1)
	}
	return u64(0)
}

// dispatch handles one message. An error return ends the session.
func (s *session) dispatch(h Header, payload []byte, fds []int) error {
	rt := RequestType(h.Request)
	m, err := DecodeMessage(h, payload, len(fds))
	if err != nil {
		closeFds(fds)
		s.log.Warn("vhost-user request refused", "err", err)
		switch {
		case errors.Is(err, ErrUnknownRequest):
			if h.NeedReply() {
				return s.reply(h, u64(1), nil)
			}
			return nil
		case mandatoryReply(rt):
			return fmt.Errorf("malformed %v, which needs a reply: %w", rt, err)
		case h.NeedReply():
			return s.reply(h, u64(1), nil)
		}
		return nil
	}
	s.log.Debug("vhost-user request", "req", rt.String(), "flags", h.Flags, "size", h.Size, "fds", len(fds))
	reply, replyFds, herr := s.handle(m, fds)
	if herr != nil {
		s.log.Warn("vhost-user request failed", "req", rt.String(), "err", herr)
	}
	if reply != nil {
		err := s.reply(h, reply, replyFds)
		closeFds(replyFds)
		return err
	}
	if mandatoryReply(rt) {
		// An unsupported request that needs an answer gets a failure.
		return s.reply(h, u64(1), nil)
	}
	if h.NeedReply() {
		return s.reply(h, boolU64(herr), nil)
	}
	return nil
}

// reply answers the front-end, except while replaying a journal.
func (s *session) reply(h Header, payload []byte, fds []int) error {
	if s.replaying {
		return nil
	}
	return s.conn.reply(h, payload, fds)
}

func (s *session) queue(i uint32) (*queue, error) {
	if int(i) >= len(s.queues) {
		return nil, fmt.Errorf("vring index %d: the device has %d queues", i, len(s.queues))
	}
	return s.queues[i], nil
}

// handle performs a decoded request; it owns fds and must close those it
// does not keep. reply non-nil is sent as the reply payload.
func (s *session) handle(m Message, fds []int) (reply []byte, replyFds []int, err error) {
	be := s.srv.backend
	switch m.Type() {
	case ReqGetFeatures:
		return u64(be.Features() | FeatureProtocolFeatures), nil, nil
	case ReqSetFeatures:
		return nil, nil, s.setFeatures(m.Payload.(U64).Value)
	case ReqGetProtocolFeatures:
		return u64(s.srv.ProtocolFeatures()), nil, nil
	case ReqSetProtocolFeatures:
		v := m.Payload.(U64).Value
		if extra := v &^ s.srv.ProtocolFeatures(); extra != 0 {
			return nil, nil, fmt.Errorf("SET_PROTOCOL_FEATURES %#x: bits %#x were not offered", v, extra)
		}
		s.proto.Store(v)
		return nil, nil, nil
	case ReqSetOwner:
		return nil, nil, nil
	case ReqResetOwner, ReqResetDevice:
		s.reset()
		return nil, nil, nil
	case ReqGetQueueNum:
		return u64(uint64(len(s.queues))), nil, nil
	case ReqGetMaxMemSlots:
		return u64(MaxMemSlots), nil, nil
	case ReqSetMemTable:
		return nil, nil, s.setMemTable(m.Payload.(MemTable), fds)
	case ReqAddMemReg:
		return nil, nil, s.addMemReg(m.Payload.(SingleMemRegion).Region, fds[0])
	case ReqRemMemReg:
		closeFds(fds)
		return nil, nil, s.remMemReg(m.Payload.(SingleMemRegion).Region)
	case ReqSetVringNum:
		return nil, nil, s.setVringNum(m.Payload.(VringState))
	case ReqSetVringAddr:
		return nil, nil, s.setVringAddr(m.Payload.(VringAddr))
	case ReqSetVringBase:
		return nil, nil, s.setVringBase(m.Payload.(VringState))
	case ReqGetVringBase:
		st, err := s.getVringBase(m.Payload.(VringState))
		b, _ := st.MarshalBinary()
		return b, nil, err
	case ReqSetVringKick, ReqSetVringCall, ReqSetVringErr:
		return nil, nil, s.setVringFd(m.Type(), m.Payload.(U64).Value, fds)
	case ReqSetVringEnable:
		return nil, nil, s.setVringEnable(m.Payload.(VringState))
	case ReqVringKick:
		q, err := s.queue(m.Payload.(VringState).Index)
		if err == nil {
			q.wake()
		}
		return nil, nil, err
	case ReqSetBackendReqFd:
		return nil, nil, s.setBackendReqFd(fds[0])
	case ReqGetConfig:
		p := m.Payload.(ConfigPayload)
		data, err := be.GetConfig(p.Offset, uint32(len(p.Data)))
		if err == nil && len(data) != len(p.Data) {
			err = fmt.Errorf("device returned %d config bytes, %d asked", len(data), len(p.Data))
		}
		if err != nil {
			return []byte{}, nil, fmt.Errorf("GET_CONFIG offset %d size %d: %w", p.Offset, len(p.Data), err)
		}
		b, _ := ConfigPayload{Offset: p.Offset, Flags: p.Flags, Data: data}.MarshalBinary()
		return b, nil, nil
	case ReqSetConfig:
		p := m.Payload.(ConfigPayload)
		return nil, nil, be.SetConfig(p.Offset, p.Data)
	case ReqGetInflightFd:
		return s.getInflightFd(m.Payload.(InflightPayload))
	case ReqSetInflightFd:
		defer closeFds(fds)
		return nil, nil, s.setInflightFd(m.Payload.(InflightPayload), fds[0])
	case ReqSetStatus:
		s.status.Store(m.Payload.(U64).Value &^ StatusNeedsReset)
		return nil, nil, nil
	case ReqGetStatus:
		st := s.status.Load()
		if s.needReset.Load() {
			st |= StatusNeedsReset
		}
		return u64(st), nil, nil
	case ReqGetShmemConfig:
		var c ShmemConfig
		for id, sz := range be.ShmemRegions() {
			c.Sizes[id] = sz
			if sz != 0 {
				c.NRegions++
			}
		}
		b, _ := c.MarshalBinary()
		return b, nil, nil
	}
	closeFds(fds)
	return nil, nil, fmt.Errorf("%v is not supported by this back-end", m.Type())
}

func (s *session) setFeatures(v uint64) error {
	offered := s.srv.backend.Features() | FeatureProtocolFeatures
	if extra := v &^ offered; extra != 0 {
		return fmt.Errorf("SET_FEATURES %#x: bits %#x were not offered", v, extra)
	}
	if err := s.srv.backend.SetFeatures(v &^ FeatureProtocolFeatures); err != nil {
		return fmt.Errorf("SET_FEATURES %#x: %w", v, err)
	}
	s.acked.Store(v)
	s.featSet = true
	if !s.anyStarted() {
		// A new start of the device: a driver that needed a reset got one.
		s.needReset.Store(false)
	}
	if v&FeatureProtocolFeatures == 0 {
		for _, q := range s.queues {
			q.enabled.Store(true)
			q.wake()
		}
	}
	s.startShmem()
	return nil
}

// startShmem sends the device's SHMEM_MAP requests once per start, from
// another goroutine: QEMU answers them from its main loop, which is
// blocked while it waits for our reply to the current message.
func (s *session) startShmem() {
	maps := s.srv.backend.ShmemMappings()
	if s.mapped || len(maps) == 0 || s.proto.Load()&ProtoShmem == 0 {
		return
	}
	if s.replaying {
		s.mapped = true // QEMU still has the previous process's mappings
		return
	}
	s.mapped = true
	needReply := s.proto.Load()&ProtoReplyAck != 0
	s.mapWG.Add(1)
	go func() {
		defer s.mapWG.Done()
		for _, m := range maps {
			if err := s.sendShmemMap(m, needReply); err != nil {
				s.log.Error("SHMEM_MAP failed: the guest will not see the region", "shmid", m.ShmID, "err", err)
				return
			}
			s.srv.Stats.ShmemMaps.Add(1)
		}
	}()
}

func (s *session) sendShmemMap(m ShmemMapping, needReply bool) error {
	req := ShmemMapReq{ShmID: m.ShmID, FdOffset: m.FdOffset, ShmOffset: m.ShmOffset, Len: m.Len}
	if m.Writable {
		req.Flags = ShmemMapFlagWritable
	}
	p, _ := req.MarshalBinary()
	return s.backendRequest(BackendShmemMap, p, []int{int(m.File.Fd())}, needReply)
}

// backendRequest sends a request on the back-end channel and, with
// needReply, waits for its u64 ack.
func (s *session) backendRequest(rt BackendRequestType, payload []byte, fds []int, needReply bool) error {
	s.backendMu.Lock()
	defer s.backendMu.Unlock()
	ch := s.backendCh.Load()
	if ch == nil {
		return fmt.Errorf("%v: the front-end gave no back-end channel (SET_BACKEND_REQ_FD)", rt)
	}
	flags := FlagVersion
	if needReply {
		flags |= FlagNeedReply
	}
	ch.c.SetWriteDeadline(time.Now().Add(backendReplyTimeout))
	err := ch.writeMessage(Header{Request: uint32(rt), Flags: flags}, payload, fds)
	ch.c.SetWriteDeadline(time.Time{})
	if err != nil {
		return fmt.Errorf("%v: %w", rt, err)
	}
	if !needReply {
		return nil
	}
	ch.c.SetReadDeadline(time.Now().Add(backendReplyTimeout))
	h, p, rfds, err := ch.readMessage(true)
	ch.c.SetReadDeadline(time.Time{})
	closeFds(rfds)
	if err != nil {
		return fmt.Errorf("%v reply: %w", rt, err)
	}
	if h.Request != uint32(rt) {
		return fmt.Errorf("%v reply: got a reply to %v", rt, BackendRequestType(h.Request))
	}
	var v U64
	if err := v.UnmarshalBinary(p); err != nil {
		return fmt.Errorf("%v reply: %w", rt, err)
	}
	if v.Value != 0 {
		return fmt.Errorf("%v: the front-end answered failure %d", rt, v.Value)
	}
	return nil
}

func (s *session) setBackendReqFd(fd int) error {
	c, err := unixConnFromFd(fd, "back-end channel")
	if err != nil {
		return err
	}
	if old := s.backendCh.Swap(&msgConn{c: c, name: "back-end channel"}); old != nil {
		old.c.Close()
	}
	return nil
}

// swapMem installs t as the current table, re-resolves the started
// queues' rings through it and drops the session's reference to the old
// one; the old mappings go once queues and requests release them.
func (s *session) swapMem(t *memTable) {
	old := s.mem.Swap(t)
	for _, q := range s.queues {
		q.mu.Lock()
		if q.started && !q.broken {
			if err := q.resolveLocked(); err != nil {
				q.broken = true
				s.deviceError(q, err)
			}
		}
		q.mu.Unlock()
	}
	old.release()
}

func (s *session) setMemTable(mt MemTable, fds []int) error {
	defer closeFds(fds)
	var rs []*region
	fail := func(err error) error {
		for _, r := range rs {
			r.release()
		}
		return fmt.Errorf("SET_MEM_TABLE: %w", err)
	}
	for i, m := range mt.Regions {
		r, err := mapRegion(m, fds[i])
		if err != nil {
			return fail(err)
		}
		rs = append(rs, r)
	}
	t, err := newMemTable(rs)
	if err != nil {
		return fail(err)
	}
	s.swapMem(t)
	return nil
}

func (s *session) addMemReg(m MemRegion, fd int) error {
	defer unix.Close(fd)
	cur := s.acquireMem()
	defer cur.release()
	if cur != nil && len(cur.regions) >= MaxMemSlots {
		return fmt.Errorf("ADD_MEM_REG gpa %#x: all %d memory slots are in use", m.GPA, MaxMemSlots)
	}
	r, err := mapRegion(m, fd)
	if err != nil {
		return fmt.Errorf("ADD_MEM_REG: %w", err)
	}
	t, err := cur.with([]*region{r}, nil)
	if err != nil {
		r.release()
		return fmt.Errorf("ADD_MEM_REG: %w", err)
	}
	s.swapMem(t)
	return nil
}

func (s *session) remMemReg(m MemRegion) error {
	cur := s.acquireMem()
	defer cur.release()
	found := false
	match := func(r *region) bool {
		if r.GPA == m.GPA && r.UserAddr == m.UserAddr && r.Size == m.Size {
			found = true
			return true
		}
		return false
	}
	if cur == nil {
		return fmt.Errorf("REM_MEM_REG gpa %#x: no memory table", m.GPA)
	}
	t, err := cur.with(nil, match)
	if err != nil {
		return fmt.Errorf("REM_MEM_REG: %w", err)
	}
	if !found {
		t.release()
		return fmt.Errorf("REM_MEM_REG gpa %#x size %#x user %#x: no such region", m.GPA, m.Size, m.UserAddr)
	}
	s.swapMem(t)
	return nil
}

func (s *session) setVringNum(st VringState) error {
	q, err := s.queue(st.Index)
	if err != nil {
		return err
	}
	max := s.srv.backend.MaxQueueSize()
	if st.Num == 0 || st.Num > uint32(max) || st.Num&(st.Num-1) != 0 {
		return fmt.Errorf("SET_VRING_NUM vring %d: size %d is not a power of two up to %d", st.Index, st.Num, max)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.started {
		return fmt.Errorf("SET_VRING_NUM vring %d: the ring is started", st.Index)
	}
	q.size = uint16(st.Num)
	return nil
}

func (s *session) setVringAddr(a VringAddr) error {
	q, err := s.queue(a.Index)
	if err != nil {
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.started {
		return fmt.Errorf("SET_VRING_ADDR vring %d: the ring is started", a.Index)
	}
	q.addr, q.addrSet = a, true
	return nil
}

func (s *session) setVringBase(st VringState) error {
	q, err := s.queue(st.Index)
	if err != nil {
		return err
	}
	if st.Num > 0xffff {
		return fmt.Errorf("SET_VRING_BASE vring %d: base %#x does not fit the split ring's 16 bits", st.Index, st.Num)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.started {
		return fmt.Errorf("SET_VRING_BASE vring %d: the ring is started", st.Index)
	}
	q.lastAvail = uint16(st.Num)
	return nil
}

// getVringBase stops the ring, waits for the requests in flight and
// answers the next avail index.
func (s *session) getVringBase(st VringState) (VringState, error) {
	q, err := s.queue(st.Index)
	if err != nil {
		return VringState{Index: st.Index}, err
	}
	q.mu.Lock()
	q.stopLocked(true)
	q.resumeStart = false
	res := VringState{Index: st.Index, Num: uint32(q.lastAvail)}
	q.broken = false
	q.mu.Unlock()
	q.enabled.Store(false)
	if !s.anyStarted() {
		s.mapped = false // QEMU drops the mappings on stop
	}
	return res, nil
}

func (s *session) anyStarted() bool {
	for _, q := range s.queues {
		q.mu.Lock()
		started := q.started
		q.mu.Unlock()
		if started {
			return true
		}
	}
	return false
}

func (s *session) setVringFd(rt RequestType, v uint64, fds []int) error {
	idx := uint32(v & VringIndexMask)
	q, err := s.queue(idx)
	if err != nil || v&^uint64(VringIndexMask|VringNoFd) != 0 {
		closeFds(fds)
		if err == nil {
			err = fmt.Errorf("%v: unknown bits in %#x", rt, v)
		}
		return err
	}
	var f *os.File
	if len(fds) == 1 {
		if err := unix.SetNonblock(fds[0], true); err != nil {
			closeFds(fds)
			return fmt.Errorf("%v vring %d: %w", rt, idx, err)
		}
		f = os.NewFile(uintptr(fds[0]), fmt.Sprintf("vring %d %v fd", idx, rt))
	}
	switch rt {
	case ReqSetVringCall:
		if old := q.call.Swap(f); old != nil {
			old.Close()
		}
	case ReqSetVringErr:
		if old := q.errFd.Swap(f); old != nil {
			old.Close()
		}
	case ReqSetVringKick:
		q.mu.Lock()
		defer q.mu.Unlock()
		if q.started {
			q.restartWorkerLocked(f)
			return nil
		}
		if q.kick != nil {
			q.kick.Close()
		}
		q.kick, q.pollMode = f, f == nil
		s.startShmem()
		if s.replaying {
			q.resumeStart = true
			return nil
		}
		if err := q.startLocked(); err != nil {
			return fmt.Errorf("starting vring %d: %w", idx, err)
		}
	}
	return nil
}

// restartWorkerLocked replaces the kick fd of a started ring.
// +checklocks:q.mu
func (q *queue) restartWorkerLocked(f *os.File) {
	q.stopping.Store(true)
	if q.kick != nil {
		q.kick.SetReadDeadline(time.Now())
	}
	done := q.done
	q.mu.Unlock()
	<-done
	q.mu.Lock()
	if q.kick != nil {
		q.kick.Close()
	}
	q.kick, q.pollMode = f, f == nil
	q.stopping = new(atomic.Bool)
	q.done = make(chan struct{})
	go q.run(q.kick, q.stopping, q.done, nil)
}

func (s *session) setVringEnable(st VringState) error {
	q, err := s.queue(st.Index)
	if err != nil {
		return err
	}
	if s.acked.Load()&FeatureProtocolFeatures == 0 {
		return fmt.Errorf("SET_VRING_ENABLE vring %d: VHOST_USER_F_PROTOCOL_FEATURES was not negotiated", st.Index)
	}
	if st.Num > 1 {
		return fmt.Errorf("SET_VRING_ENABLE vring %d: value %d, want 0 or 1", st.Index, st.Num)
	}
	q.enabled.Store(st.Num == 1)
	q.wake()
	return nil
}

func (s *session) getInflightFd(p InflightPayload) ([]byte, []int, error) {
	fail := func(err error) ([]byte, []int, error) {
		b, _ := InflightPayload{}.MarshalBinary()
		return b, nil, fmt.Errorf("GET_INFLIGHT_FD: %w", err)
	}
	if p.NumQueues == 0 || int(p.NumQueues) > len(s.queues) {
		return fail(fmt.Errorf("%d queues asked, the device has %d", p.NumQueues, len(s.queues)))
	}
	if p.QueueSize == 0 || p.QueueSize&(p.QueueSize-1) != 0 {
		return fail(fmt.Errorf("queue size %d is not a power of two", p.QueueSize))
	}
	size := uint64(p.NumQueues) * InflightQueueRegionSize(p.QueueSize)
	fd, err := unix.MemfdCreate("vhost-user-inflight", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return fail(err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return fail(err)
	}
	unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_GROW|unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL)
	if err := s.installInflight(fd, size, 0, p.NumQueues, p.QueueSize); err != nil {
		// A started ring keeps its area; the front-end installs the new
		// one with SET_INFLIGHT_FD at its next start.
		s.log.Debug("GET_INFLIGHT_FD: area not installed now", "err", err)
	}
	b, _ := InflightPayload{MmapSize: size, MmapOffset: 0, NumQueues: p.NumQueues, QueueSize: p.QueueSize}.MarshalBinary()
	return b, []int{fd}, nil
}

func (s *session) setInflightFd(p InflightPayload, fd int) error {
	if p.QueueSize == 0 || p.QueueSize&(p.QueueSize-1) != 0 {
		return fmt.Errorf("SET_INFLIGHT_FD: queue size %d is not a power of two", p.QueueSize)
	}
	need := uint64(min(int(p.NumQueues), len(s.queues))) * InflightQueueRegionSize(p.QueueSize)
	if p.MmapSize < need {
		return fmt.Errorf("SET_INFLIGHT_FD: area of %d bytes is smaller than the %d needed for %d queues of %d", p.MmapSize, need, p.NumQueues, p.QueueSize)
	}
	if err := s.installInflight(fd, p.MmapSize, p.MmapOffset, p.NumQueues, p.QueueSize); err != nil {
		return fmt.Errorf("SET_INFLIGHT_FD: %w", err)
	}
	return nil
}

func (s *session) installInflight(fd int, size, off uint64, nq, qsize uint16) error {
	for _, q := range s.queues {
		q.mu.Lock()
		started := q.started
		q.mu.Unlock()
		if started {
			return fmt.Errorf("vring %d is started", q.index)
		}
	}
	if size == 0 || size > 1<<30 || off%uint64(os.Getpagesize()) != 0 {
		return fmt.Errorf("area size %d offset %d cannot be mapped", size, off)
	}
	if err := checkFdCovers(fd, off+size); err != nil {
		return fmt.Errorf("area size %d offset %d: %w", size, off, err)
	}
	m, err := unix.Mmap(fd, int64(off), int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mmap: %w", err)
	}
	dfd, err := dupCloexec(fd)
	if err != nil {
		unix.Munmap(m)
		return fmt.Errorf("duplicating the area's fd: %w", err)
	}
	s.dropInflight()
	s.inflight, s.inflightQSize = m, qsize
	s.inflightFd, s.inflightSize, s.inflightOff, s.inflightNQ = dfd, size, off, nq
	rs := InflightQueueRegionSize(qsize)
	for i, q := range s.queues {
		lo := uint64(i) * rs
		q.mu.Lock()
		if lo+rs <= size {
			q.inflight = m[lo : lo+rs : lo+rs]
		}
		q.mu.Unlock()
	}
	return nil
}

func (s *session) dropInflight() {
	for _, q := range s.queues {
		q.mu.Lock()
		q.inflight = nil
		q.mu.Unlock()
	}
	if s.inflight != nil {
		unix.Munmap(s.inflight)
		unix.Close(s.inflightFd)
		s.inflight, s.inflightFd = nil, -1
	}
}

// reset stops every queue (draining them) and forgets ring state.
func (s *session) reset() {
	for _, q := range s.queues {
		q.mu.Lock()
		q.stopLocked(true)
		q.size, q.addrSet, q.lastAvail, q.broken = 0, false, 0, false
		q.resumeStart = false
		q.mu.Unlock()
		q.enabled.Store(false)
	}
	s.acked.Store(0)
	s.featSet = false
	s.status.Store(0)
	s.needReset.Store(false)
	s.mapped = false
}

// teardown ends the session after a disconnect: requests in flight are
// abandoned (their completions no longer touch the ring or the inflight
// area) and every resource is released.
func (s *session) teardown() {
	s.cancel()
	s.conn.c.Close()
	if s.keeper != nil {
		s.keeper.c.Close()
	}
	if ch := s.backendCh.Swap(nil); ch != nil {
		ch.c.Close()
	}
	s.mapWG.Wait()
	for _, q := range s.queues {
		q.abandoned.Store(true)
		q.mu.Lock()
		q.stopLocked(false)
		if q.kick != nil {
			q.kick.Close()
			q.kick = nil
		}
		q.mu.Unlock()
		for _, p := range []*atomic.Pointer[os.File]{&q.call, &q.errFd} {
			if f := p.Swap(nil); f != nil {
				f.Close()
			}
		}
	}
	s.dropInflight()
	s.mem.Swap(nil).release()
}
