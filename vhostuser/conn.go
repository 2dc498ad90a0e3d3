package vhostuser

import (
	"fmt"
	"io"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// msgConn reads and writes vhost-user messages on a Unix stream socket.
// fds travel with the first byte of the header (SCM_RIGHTS).
type msgConn struct {
	c    *net.UnixConn
	name string // for errors: the socket path or channel name
}

// closeFds closes received descriptors we do not keep.
func closeFds(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// readMessage reads one message: the header (with any fds) and its
// payload. A header announcing more than MaxPayload bytes is an error that
// ends the connection: the stream cannot be resynchronised safely.
func (m *msgConn) readMessage(wantReply bool) (Header, []byte, []int, error) {
	var h Header
	hb := make([]byte, HeaderSize)
	oob := make([]byte, unix.CmsgSpace(4*MaxFds))
	n, oobn, flags, _, err := m.c.ReadMsgUnix(hb, oob)
	if err != nil {
		return h, nil, nil, err
	}
	if n == 0 {
		return h, nil, nil, io.EOF
	}
	var fds []int
	if oobn > 0 {
		cmsgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
		if perr != nil {
			return h, nil, nil, fmt.Errorf("%s: control message: %w", m.name, perr)
		}
		for _, cm := range cmsgs {
			got, rerr := unix.ParseUnixRights(&cm)
			if rerr == nil {
				fds = append(fds, got...)
			}
		}
	}
	if flags&unix.MSG_CTRUNC != 0 {
		closeFds(fds)
		return h, nil, nil, fmt.Errorf("%s: more than %d fds with one message", m.name, MaxFds)
	}
	if n < HeaderSize {
		if _, err := io.ReadFull(m.c, hb[n:]); err != nil {
			closeFds(fds)
			return h, nil, nil, fmt.Errorf("%s: truncated header (%d of %d bytes): %w", m.name, n, HeaderSize, err)
		}
	}
	_ = h.UnmarshalBinary(hb)
	if h.Size > MaxPayload {
		closeFds(fds)
		return h, nil, nil, fmt.Errorf("%s: %v announces a %d-byte payload, limit %d", m.name, RequestType(h.Request), h.Size, MaxPayload)
	}
	if err := h.Check(wantReply); err != nil && wantReply {
		closeFds(fds)
		return h, nil, nil, fmt.Errorf("%s: %w", m.name, err)
	}
	p := make([]byte, h.Size)
	if _, err := io.ReadFull(m.c, p); err != nil {
		closeFds(fds)
		return h, nil, nil, fmt.Errorf("%s: %v: truncated payload (want %d bytes): %w", m.name, RequestType(h.Request), h.Size, err)
	}
	return h, p, fds, nil
}

// writeMessage sends header and payload in one sendmsg, with fds.
func (m *msgConn) writeMessage(h Header, payload []byte, fds []int) error {
	h.Size = uint32(len(payload))
	hb, _ := h.MarshalBinary()
	buf := append(hb, payload...)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, _, err := m.c.WriteMsgUnix(buf, oob, nil)
	if err != nil {
		return fmt.Errorf("%s: write: %w", m.name, err)
	}
	if n != len(buf) {
		return fmt.Errorf("%s: short write %d of %d", m.name, n, len(buf))
	}
	return nil
}

// reply sends a reply to request h with the exact reply flags.
func (m *msgConn) reply(h Header, payload []byte, fds []int) error {
	return m.writeMessage(Header{Request: h.Request, Flags: ReplyFlags}, payload, fds)
}

// unixConnFromFd wraps a received socket fd; it takes ownership of fd.
func unixConnFromFd(fd int, name string) (*net.UnixConn, error) {
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("%s: fd is not a Unix socket", name)
	}
	return uc, nil
}
