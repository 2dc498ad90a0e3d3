package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"

	"github.com/nvdimm-backend/nvdimm-backend/qmp"
)

// qmpConn adapts a qmp.Client to QMPConn: Gone closes on a SHUTDOWN
// event or when the connection closes.
type qmpConn struct {
	c    *qmp.Client
	sub  *qmp.Subscription
	gone chan struct{}
	once sync.Once
}

// DialQMP is the production QMPDialer, built on qmp.Dial.
func DialQMP(ctx context.Context, path string) (QMPConn, error) {
	c, err := qmp.Dial(ctx, path)
	if err != nil {
		return nil, err
	}
	q := &qmpConn{c: c, sub: c.Subscribe(8, "SHUTDOWN"), gone: make(chan struct{})}
	go func() {
		select {
		case <-q.sub.Events(): // a SHUTDOWN, or the channel closed with the connection
		case <-c.Done():
		}
		q.once.Do(func() { close(q.gone) })
	}()
	return q, nil
}

func (q *qmpConn) Execute(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	var raw json.RawMessage
	if err := q.c.Execute(ctx, cmd, args, &raw); err != nil {
		var qe *qmp.Error
		if errors.As(err, &qe) {
			return nil, &QEMUError{Command: cmd, Class: qe.Class, Desc: qe.Desc}
		}
		// qmp names the socket and the command ("qmp S: cmd: why"); the
		// daemon's execute names the command itself, so keep only the
		// socket, in the daemon's words: "cmd: QMP socket S: why".
		prefix := "qmp " + q.c.Path() + ": " + cmd + ": "
		if msg := err.Error(); strings.HasPrefix(msg, prefix) {
			return nil, reworded{"QMP socket " + q.c.Path() + ": " + msg[len(prefix):], err}
		}
		return nil, err
	}
	return raw, nil
}

func (q *qmpConn) Gone() <-chan struct{} { return q.gone }

func (q *qmpConn) Close() error {
	q.sub.Close()
	return q.c.Close()
}

// reworded is err with another text: errors.Is and errors.As see err.
type reworded struct {
	text string
	err  error
}

func (e reworded) Error() string { return e.text }
func (e reworded) Unwrap() error { return e.err }

// inQMPSocket names the QMP socket path once in err, a failure to reach
// it, as "QMP socket PATH: why": an os.Stat error ("stat PATH: no such
// file or directory") and a qmp error ("qmp PATH: connect: connection
// refused") are reworded, an error that names path some other way is
// kept as it is, and any other gets the prefix. The reworded error still
// unwraps to err, so errors.Is and errors.As (qmpErr's errnos) see it.
func inQMPSocket(path string, err error) error {
	if pe, ok := err.(*fs.PathError); ok && pe.Path == path {
		return reworded{"QMP socket " + path + ": " + pe.Err.Error(), err}
	}
	if msg, prefix := err.Error(), "qmp "+path+": "; strings.HasPrefix(msg, prefix) {
		return reworded{"QMP socket " + path + ": " + msg[len(prefix):], err}
	}
	if namesPath(err, path) {
		return err
	}
	return fmt.Errorf("QMP socket %s: %w", path, err)
}
