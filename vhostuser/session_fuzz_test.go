package vhostuser_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/nvdimm-backend/nvdimm-backend/vhostuser"
	"github.com/nvdimm-backend/nvdimm-backend/vhostuser/frontend"
)

// FuzzSession feeds an arbitrary byte stream to a whole session over a
// real socket: whatever arrives, the server must neither panic nor hang,
// and must end the session when the stream ends.
func FuzzSession(f *testing.F) {
	msg := func(rt vhostuser.RequestType, flags uint32, p []byte) []byte {
		h, _ := vhostuser.Header{Request: uint32(rt), Flags: flags, Size: uint32(len(p))}.MarshalBinary()
		return append(h, p...)
	}
	nr := vhostuser.FlagVersion | vhostuser.FlagNeedReply
	var seq []byte
	seq = append(seq, msg(vhostuser.ReqGetFeatures, vhostuser.FlagVersion, nil)...)
	seq = append(seq, msg(vhostuser.ReqSetProtocolFeatures, nr, frontend.U64(qemuProto))...)
	seq = append(seq, msg(vhostuser.ReqSetFeatures, nr, frontend.U64(1<<30|1<<32))...)
	seq = append(seq, msg(vhostuser.ReqSetVringNum, nr, frontend.State(0, 16))...)
	seq = append(seq, msg(vhostuser.ReqGetVringBase, vhostuser.FlagVersion, frontend.State(0, 0))...)
	f.Add(seq)
	f.Add(msg(99, nr, []byte{1, 2, 3}))
	f.Add(msg(vhostuser.ReqGetConfig, vhostuser.FlagVersion, make([]byte, 20)))
	f.Add(msg(vhostuser.ReqSetVringKick, nr, frontend.U64(vhostuser.VringNoFd)))
	f.Add(msg(vhostuser.ReqGetInflightFd, vhostuser.FlagVersion, make([]byte, 24)))
	f.Add([]byte{1, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		srv, err := vhostuser.NewServer(&echoDev{}, quietLog())
		if err != nil {
			t.Fatal(err)
		}
		fe, sc, err := frontend.Pair()
		if err != nil {
			t.Fatal(err)
		}
		defer fe.Conn.Close()
		done := make(chan error, 1)
		go func() { done <- srv.ServeConn(context.Background(), sc) }()
		go io.Copy(io.Discard, fe.Conn) // replies
		fe.WriteRaw(data, nil)
		fe.Conn.CloseWrite()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("session did not end after the stream ended")
		}
	})
}
