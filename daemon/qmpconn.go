package daemon

import (
	"context"
	"encoding/json"
	"errors"
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
		return nil, err
	}
	return raw, nil
}

func (q *qmpConn) Gone() <-chan struct{} { return q.gone }

func (q *qmpConn) Close() error {
	q.sub.Close()
	return q.c.Close()
}
