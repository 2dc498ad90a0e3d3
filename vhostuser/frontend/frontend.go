// Package frontend is a vhost-user front-end written for tests: it plays
// QEMU's part over a real Unix socket with memfd guest memory and real
// eventfds, and lets a test drive a split virtqueue as a guest driver
// would (or as a hostile one).
package frontend

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/nvdimm-backend/nvdimm-backend/vhostuser"
)

var le = binary.LittleEndian

// UserOffset is added to a region's GPA to make its front-end user
// address, so tests catch a back-end that confuses the two.
const UserOffset = 0x7f00_0000_0000

// Region is one memfd-backed guest memory region.
type Region struct {
	vhostuser.MemRegion
	File *os.File
	Mem  []byte
}

// NewRegion creates a region of size bytes at gpa.
func NewRegion(gpa, size uint64) (*Region, error) {
	fd, err := unix.MemfdCreate("guest-ram", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "guest-ram")
	if err := f.Truncate(int64(size)); err != nil {
		f.Close()
		return nil, err
	}
	m, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Region{MemRegion: vhostuser.MemRegion{GPA: gpa, Size: size, UserAddr: gpa + UserOffset}, File: f, Mem: m}, nil
}

// Close unmaps and closes the region.
func (r *Region) Close() {
	unix.Munmap(r.Mem)
	r.File.Close()
}

// Frontend is the fake front-end.
type Frontend struct {
	Conn    *net.UnixConn
	Regions []*Region
	// Backend is our end of the back-end channel once SetBackendReqFd ran.
	Backend *net.UnixConn
	// Timeout bounds every reply wait.
	Timeout time.Duration
}

// Dial connects to a back-end listening at path.
func Dial(path string) (*Frontend, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	return &Frontend{Conn: c, Timeout: 5 * time.Second}, nil
}

// Pair returns a connected socket pair: the front-end and the back-end's
// end (for Server.ServeConn).
func Pair() (*Frontend, *net.UnixConn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	a, err := fileConn(fds[0])
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	b, err := fileConn(fds[1])
	if err != nil {
		a.Close()
		return nil, nil, err
	}
	return &Frontend{Conn: a, Timeout: 5 * time.Second}, b, nil
}

func fileConn(fd int) (*net.UnixConn, error) {
	f := os.NewFile(uintptr(fd), "socket")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	return c.(*net.UnixConn), nil
}

// Close closes the connection and the guest memory.
func (f *Frontend) Close() {
	f.Conn.Close()
	if f.Backend != nil {
		f.Backend.Close()
	}
	for _, r := range f.Regions {
		r.Close()
	}
}

// WriteRaw sends raw bytes with fds on the first byte.
func (f *Frontend) WriteRaw(b []byte, fds []int) error {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_, _, err := f.Conn.WriteMsgUnix(b, oob, nil)
	return err
}

// Send sends a request; needReply sets NEED_REPLY.
func (f *Frontend) Send(rt vhostuser.RequestType, needReply bool, payload []byte, fds []int) error {
	flags := vhostuser.FlagVersion
	if needReply {
		flags |= vhostuser.FlagNeedReply
	}
	h, _ := vhostuser.Header{Request: uint32(rt), Flags: flags, Size: uint32(len(payload))}.MarshalBinary()
	return f.WriteRaw(append(h, payload...), fds)
}

// ReadReply reads one reply (with fds) from conn.
func ReadReply(c *net.UnixConn, timeout time.Duration) (vhostuser.Header, []byte, []int, error) {
	var h vhostuser.Header
	c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	hb := make([]byte, vhostuser.HeaderSize)
	oob := make([]byte, unix.CmsgSpace(4*vhostuser.MaxFds))
	n, oobn, _, _, err := c.ReadMsgUnix(hb, oob)
	if err != nil {
		return h, nil, nil, err
	}
	if n == 0 {
		return h, nil, nil, io.EOF
	}
	var fds []int
	if oobn > 0 {
		cms, _ := unix.ParseSocketControlMessage(oob[:oobn])
		for _, cm := range cms {
			if got, err := unix.ParseUnixRights(&cm); err == nil {
				fds = append(fds, got...)
			}
		}
	}
	if n < len(hb) {
		if _, err := io.ReadFull(c, hb[n:]); err != nil {
			return h, nil, fds, err
		}
	}
	h.UnmarshalBinary(hb)
	if h.Size > vhostuser.MaxPayload {
		return h, nil, fds, fmt.Errorf("reply size %d", h.Size)
	}
	p := make([]byte, h.Size)
	_, err = io.ReadFull(c, p)
	return h, p, fds, err
}

// Call sends a request and reads its reply, checking the reply header.
func (f *Frontend) Call(rt vhostuser.RequestType, needReply bool, payload []byte, fds []int) ([]byte, []int, error) {
	if err := f.Send(rt, needReply, payload, fds); err != nil {
		return nil, nil, err
	}
	h, p, rfds, err := ReadReply(f.Conn, f.Timeout)
	if err != nil {
		return nil, nil, fmt.Errorf("%v reply: %w", rt, err)
	}
	if h.Request != uint32(rt) || h.Flags != vhostuser.ReplyFlags {
		return nil, nil, fmt.Errorf("%v reply: header request %d flags %#x", rt, h.Request, h.Flags)
	}
	return p, rfds, nil
}

// GetU64 sends a request without payload and decodes a u64 reply.
func (f *Frontend) GetU64(rt vhostuser.RequestType) (uint64, error) {
	p, _, err := f.Call(rt, false, nil, nil)
	if err != nil {
		return 0, err
	}
	var v vhostuser.U64
	if err := v.UnmarshalBinary(p); err != nil {
		return 0, err
	}
	return v.Value, nil
}

// Ack sends a request with NEED_REPLY and returns an error unless the
// u64 ack is 0.
func (f *Frontend) Ack(rt vhostuser.RequestType, payload []byte, fds []int) error {
	p, _, err := f.Call(rt, true, payload, fds)
	if err != nil {
		return err
	}
	var v vhostuser.U64
	if err := v.UnmarshalBinary(p); err != nil {
		return fmt.Errorf("%v ack: %w", rt, err)
	}
	if v.Value != 0 {
		return fmt.Errorf("%v: back-end answered failure %d", rt, v.Value)
	}
	return nil
}

// U64 encodes a u64 payload.
func U64(v uint64) []byte { b, _ := vhostuser.U64{Value: v}.MarshalBinary(); return b }

// State encodes a vring state payload.
func State(i, n uint32) []byte {
	b, _ := vhostuser.VringState{Index: i, Num: n}.MarshalBinary()
	return b
}

// AddRegion creates a guest region (not yet sent).
func (f *Frontend) AddRegion(gpa, size uint64) (*Region, error) {
	r, err := NewRegion(gpa, size)
	if err != nil {
		return nil, err
	}
	f.Regions = append(f.Regions, r)
	return r, nil
}

// SetMemTable sends every region with SET_MEM_TABLE (acked).
func (f *Frontend) SetMemTable() error {
	var mt vhostuser.MemTable
	var fds []int
	for _, r := range f.Regions {
		mt.Regions = append(mt.Regions, r.MemRegion)
		fds = append(fds, int(r.File.Fd()))
	}
	p, err := mt.MarshalBinary()
	if err != nil {
		return err
	}
	return f.Ack(vhostuser.ReqSetMemTable, p, fds)
}

// SetBackendReqFd creates the back-end channel and sends its other end.
func (f *Frontend) SetBackendReqFd() error {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fds[1])
	c, err := fileConn(fds[0])
	if err != nil {
		return err
	}
	f.Backend = c
	return f.Ack(vhostuser.ReqSetBackendReqFd, nil, []int{fds[1]})
}

func (f *Frontend) find(gpa, n uint64) ([]byte, error) {
	for _, r := range f.Regions {
		if gpa >= r.GPA && gpa+n <= r.GPA+r.Size {
			return r.Mem[gpa-r.GPA : gpa-r.GPA+n], nil
		}
	}
	return nil, fmt.Errorf("gpa %#x+%d outside the fake guest memory", gpa, n)
}

// Mem returns guest memory [gpa, gpa+n) (within one region).
func (f *Frontend) Mem(gpa, n uint64) []byte {
	b, err := f.find(gpa, n)
	if err != nil {
		panic(err)
	}
	return b
}

// Desc is a split-ring descriptor.
type Desc struct {
	Addr  uint64
	Len   uint32
	Flags uint16
	Next  uint16
}

// Descriptor flags.
const (
	DescNext     = 1
	DescWrite    = 2
	DescIndirect = 4
)

// Put writes d at b.
func (d Desc) Put(b []byte) {
	le.PutUint64(b, d.Addr)
	le.PutUint32(b[8:], d.Len)
	le.PutUint16(b[12:], d.Flags)
	le.PutUint16(b[14:], d.Next)
}

// Vring is the driver side of a split virtqueue in fake guest memory.
type Vring struct {
	f                 *Frontend
	Index             uint32
	Size              uint16
	Desc, Avail, Used uint64 // GPAs
	Kick, Call, Err   int    // our eventfds
	availIdx          uint16
	lastUsed          uint16
	callFile          *os.File // a pollable dup of Call
}

// NewVring lays a ring of size entries out at gpa (16-byte aligned) and
// creates its eventfds. It needs 16*size + 6+2*size + 6+8*size bytes plus
// alignment.
func (f *Frontend) NewVring(index uint32, size uint16, gpa uint64) (*Vring, error) {
	v := &Vring{f: f, Index: index, Size: size, Desc: gpa}
	v.Avail = gpa + 16*uint64(size)
	v.Used = (v.Avail + 6 + 2*uint64(size) + 63) &^ 63
	if _, err := f.find(gpa, v.Used+6+8*uint64(size)+8-gpa); err != nil {
		return nil, err
	}
	var err error
	for _, p := range []*int{&v.Kick, &v.Call, &v.Err} {
		if *p, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
			return nil, err
		}
	}
	dup, err := unix.Dup(v.Call)
	if err != nil {
		return nil, err
	}
	v.callFile = os.NewFile(uintptr(dup), "call eventfd")
	return v, nil
}

// Close closes the eventfds.
func (v *Vring) Close() {
	v.callFile.Close()
	unix.Close(v.Kick)
	unix.Close(v.Call)
	unix.Close(v.Err)
}

// Setup sends QEMU's start sequence for the ring: SET_VRING_NUM, BASE,
// ADDR, KICK, CALL, ERR (each acked) and, with enable, SET_VRING_ENABLE(1).
// The driver-side indices are taken from guest memory, so a ring can be
// set up again after a reconnect.
func (v *Vring) Setup(base uint16, enable bool) error {
	f := v.f
	if err := f.Ack(vhostuser.ReqSetVringNum, State(v.Index, uint32(v.Size)), nil); err != nil {
		return err
	}
	if err := f.Ack(vhostuser.ReqSetVringBase, State(v.Index, uint32(base)), nil); err != nil {
		return err
	}
	v.availIdx = le.Uint16(f.Mem(v.Avail+2, 2))
	v.lastUsed = le.Uint16(f.Mem(v.Used+2, 2))
	a, _ := vhostuser.VringAddr{Index: v.Index, Desc: v.Desc + UserOffset, Used: v.Used + UserOffset, Avail: v.Avail + UserOffset}.MarshalBinary()
	if err := f.Ack(vhostuser.ReqSetVringAddr, a, nil); err != nil {
		return err
	}
	if err := f.Ack(vhostuser.ReqSetVringKick, U64(uint64(v.Index)), []int{v.Kick}); err != nil {
		return err
	}
	if err := f.Ack(vhostuser.ReqSetVringCall, U64(uint64(v.Index)), []int{v.Call}); err != nil {
		return err
	}
	if err := f.Ack(vhostuser.ReqSetVringErr, U64(uint64(v.Index)), []int{v.Err}); err != nil {
		return err
	}
	if enable {
		return f.Ack(vhostuser.ReqSetVringEnable, State(v.Index, 1), nil)
	}
	return nil
}

// SetDesc writes descriptor i of the table.
func (v *Vring) SetDesc(i uint16, d Desc) { d.Put(v.f.Mem(v.Desc+16*uint64(i), 16)) }

func word(b []byte) *uint32 { return (*uint32)(unsafe.Pointer(&b[0])) }

// Publish puts heads in the avail ring and moves avail idx past them.
func (v *Vring) Publish(heads ...uint16) {
	for _, h := range heads {
		slot := uint64(v.availIdx % v.Size)
		le.PutUint16(v.f.Mem(v.Avail+4+2*slot, 2), h)
		v.availIdx++
	}
	v.SetAvailIdx(v.availIdx)
}

// SetAvailIdx stores avail->idx (with flags 0) atomically.
func (v *Vring) SetAvailIdx(idx uint16) {
	v.availIdx = idx
	atomic.StoreUint32(word(v.f.Mem(v.Avail, 4)), uint32(idx)<<16|uint32(v.AvailFlags()))
}

// AvailFlags reads avail->flags.
func (v *Vring) AvailFlags() uint16 { return le.Uint16(v.f.Mem(v.Avail, 2)) }

// SetNoInterrupt sets or clears VRING_AVAIL_F_NO_INTERRUPT.
func (v *Vring) SetNoInterrupt(on bool) {
	var fl uint32
	if on {
		fl = 1
	}
	atomic.StoreUint32(word(v.f.Mem(v.Avail, 4)), uint32(v.availIdx)<<16|fl)
}

// SetUsedEvent writes used_event (EVENT_IDX).
func (v *Vring) SetUsedEvent(e uint16) {
	le.PutUint16(v.f.Mem(v.Avail+4+2*uint64(v.Size), 2), e)
}

// AvailEvent reads avail_event (written by the device with EVENT_IDX).
func (v *Vring) AvailEvent() uint16 {
	return le.Uint16(v.f.Mem(v.Used+4+8*uint64(v.Size), 2))
}

// UsedIdx loads used->idx atomically.
func (v *Vring) UsedIdx() uint16 {
	return uint16(atomic.LoadUint32(word(v.f.Mem(v.Used, 4))) >> 16)
}

// Kicked signals the kick eventfd.
func (v *Vring) Kicked() error {
	_, err := unix.Write(v.Kick, U64(1))
	return err
}

// Used is one used-ring element.
type Used struct {
	ID, Len uint32
}

// Reap returns the used elements published since the last call.
func (v *Vring) Reap() []Used {
	var out []Used
	idx := v.UsedIdx()
	for v.lastUsed != idx {
		e := v.f.Mem(v.Used+4+8*uint64(v.lastUsed%v.Size), 8)
		out = append(out, Used{le.Uint32(e), le.Uint32(e[4:])})
		v.lastUsed++
	}
	return out
}

// ErrTimeout is returned when a wait runs out.
var ErrTimeout = errors.New("timed out")

// WaitEvent waits until eventfd fd is signalled and consumes it.
func WaitEvent(fd int, timeout time.Duration) error {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	deadline := time.Now().Add(timeout)
	for {
		ms := int(time.Until(deadline) / time.Millisecond)
		if ms <= 0 {
			return ErrTimeout
		}
		n, err := unix.Poll(pfd, ms)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n > 0 {
			var b [8]byte
			unix.Read(fd, b[:])
			return nil
		}
	}
}

// WaitUsed waits until at least n new used elements are there and
// returns them (it polls used->idx, so it works with or without calls).
func (v *Vring) WaitUsed(n int, timeout time.Duration) ([]Used, error) {
	var out []Used
	deadline := time.Now().Add(timeout)
	for {
		out = append(out, v.Reap()...)
		if len(out) >= n {
			return out, nil
		}
		if time.Now().After(deadline) {
			return out, fmt.Errorf("%d of %d used elements: %w", len(out), n, ErrTimeout)
		}
		v.WaitCall(time.Millisecond)
	}
}

// WaitCall waits for the call eventfd through Go's poller (a blocking
// poll(2) would keep the only P from the back-end when GOMAXPROCS=1).
func (v *Vring) WaitCall(timeout time.Duration) error {
	v.callFile.SetReadDeadline(time.Now().Add(timeout))
	var b [8]byte
	_, err := v.callFile.Read(b[:])
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return ErrTimeout
	}
	return err
}

// Negotiated is what Realize learned.
type Negotiated struct {
	Features uint64
	Protocol uint64 // acked protocol features
	QueueNum uint64
	MemSlots uint64
	Shmem    vhostuser.ShmemConfig
	HasShmem bool
	Messages []vhostuser.RequestType // in the order sent
}

// Realize runs QEMU's device-realize sequence (reference order):
// GET_FEATURES, GET/SET_PROTOCOL_FEATURES (offered & want),
// [GET_QUEUE_NUM], [GET_MAX_MEM_SLOTS], [SET_BACKEND_REQ_FD], SET_OWNER,
// GET_FEATURES, SET_VRING_CALL and SET_VRING_ERR per queue (with
// throw-away eventfds) and, with the shared-memory feature,
// GET_SHMEM_CONFIG.
func (f *Frontend) Realize(want uint64, nvqs int) (Negotiated, error) {
	var n Negotiated
	var err error
	log := func(rt vhostuser.RequestType) { n.Messages = append(n.Messages, rt) }
	log(vhostuser.ReqGetFeatures)
	if n.Features, err = f.GetU64(vhostuser.ReqGetFeatures); err != nil {
		return n, err
	}
	if n.Features&vhostuser.FeatureProtocolFeatures == 0 {
		return n, errors.New("back-end does not offer VHOST_USER_F_PROTOCOL_FEATURES")
	}
	log(vhostuser.ReqGetProtocolFeatures)
	offered, err := f.GetU64(vhostuser.ReqGetProtocolFeatures)
	if err != nil {
		return n, err
	}
	n.Protocol = offered & want
	log(vhostuser.ReqSetProtocolFeatures)
	if err := f.Send(vhostuser.ReqSetProtocolFeatures, false, U64(n.Protocol), nil); err != nil {
		return n, err
	}
	if n.Protocol&vhostuser.ProtoMQ != 0 {
		log(vhostuser.ReqGetQueueNum)
		if n.QueueNum, err = f.GetU64(vhostuser.ReqGetQueueNum); err != nil {
			return n, err
		}
	}
	if n.Protocol&vhostuser.ProtoConfigureMemSlots != 0 {
		log(vhostuser.ReqGetMaxMemSlots)
		if n.MemSlots, err = f.GetU64(vhostuser.ReqGetMaxMemSlots); err != nil {
			return n, err
		}
	}
	if n.Protocol&vhostuser.ProtoBackendReq != 0 {
		log(vhostuser.ReqSetBackendReqFd)
		if err := f.SetBackendReqFd(); err != nil {
			return n, err
		}
	}
	log(vhostuser.ReqSetOwner)
	if err := f.Ack(vhostuser.ReqSetOwner, nil, nil); err != nil {
		return n, err
	}
	log(vhostuser.ReqGetFeatures)
	if _, err := f.GetU64(vhostuser.ReqGetFeatures); err != nil {
		return n, err
	}
	for i := 0; i < nvqs; i++ {
		for _, rt := range []vhostuser.RequestType{vhostuser.ReqSetVringCall, vhostuser.ReqSetVringErr} {
			efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
			if err != nil {
				return n, err
			}
			log(rt)
			err = f.Ack(rt, U64(uint64(i)), []int{efd})
			unix.Close(efd)
			if err != nil {
				return n, err
			}
		}
	}
	if n.Protocol&vhostuser.ProtoShmem != 0 {
		log(vhostuser.ReqGetShmemConfig)
		p, _, err := f.Call(vhostuser.ReqGetShmemConfig, false, nil, nil)
		if err != nil {
			return n, err
		}
		if err := n.Shmem.UnmarshalBinary(p); err != nil {
			return n, err
		}
		n.HasShmem = true
	}
	return n, nil
}

// ShmemMapMsg is one back-end request (SHMEM_MAP, SHMEM_UNMAP, ...); Req
// is set for the shared-memory requests.
type ShmemMapMsg struct {
	Header vhostuser.Header
	Req    vhostuser.ShmemMapReq
	Fds    []int
}

// ReadBackendRequest reads one request from the back-end channel and,
// when it asks for one, answers ack (0 = success).
func (f *Frontend) ReadBackendRequest(ack uint64) (ShmemMapMsg, error) {
	var m ShmemMapMsg
	if f.Backend == nil {
		return m, errors.New("no back-end channel")
	}
	h, p, fds, err := ReadReply(f.Backend, f.Timeout)
	if err != nil {
		return m, err
	}
	m.Header, m.Fds = h, fds
	bm, err := vhostuser.DecodeBackendMessage(h, p, len(fds))
	if err != nil {
		return m, err
	}
	m.Req, _ = bm.Payload.(vhostuser.ShmemMapReq)
	if h.NeedReply() {
		rh, _ := vhostuser.Header{Request: h.Request, Flags: vhostuser.ReplyFlags, Size: 8}.MarshalBinary()
		if _, err := f.Backend.Write(append(rh, U64(ack)...)); err != nil {
			return m, err
		}
	}
	return m, nil
}

// Write copies data into guest memory at gpa, across regions.
func (f *Frontend) Write(gpa uint64, data []byte) error {
	return f.each(gpa, uint64(len(data)), func(b []byte, off uint64) { copy(b, data[off:]) })
}

// Read copies n bytes of guest memory at gpa, across regions.
func (f *Frontend) Read(gpa, n uint64) ([]byte, error) {
	out := make([]byte, n)
	err := f.each(gpa, n, func(b []byte, off uint64) { copy(out[off:], b) })
	return out, err
}

func (f *Frontend) each(gpa, n uint64, fn func(b []byte, off uint64)) error {
	var done uint64
	for done < n {
		var r *Region
		for _, x := range f.Regions {
			if gpa+done >= x.GPA && gpa+done < x.GPA+x.Size {
				r = x
			}
		}
		if r == nil {
			return fmt.Errorf("gpa %#x outside the fake guest memory", gpa+done)
		}
		off := gpa + done - r.GPA
		k := min(n-done, r.Size-off)
		fn(r.Mem[off:off+k], done)
		done += k
	}
	return nil
}

// Rebind moves the ring to another front-end connection (a reconnect to
// a restarted back-end with the same guest memory).
func (v *Vring) Rebind(f *Frontend) { v.f = f }

// PublishNotify publishes heads and kicks only when the device asked for
// it through avail_event (EVENT_IDX), as a Linux driver does.
func (v *Vring) PublishNotify(heads ...uint16) error {
	old := v.availIdx
	v.Publish(heads...)
	ev := v.AvailEvent()
	if uint16(v.availIdx-ev-1) < uint16(v.availIdx-old) {
		return v.Kicked()
	}
	return nil
}
