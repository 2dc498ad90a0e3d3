package vhostuser

import (
	"bytes"
	"encoding"
	"errors"
	"strings"
	"testing"
)

type codec interface {
	encoding.BinaryMarshaler
}

func TestPayloadRoundTripAndExactLength(t *testing.T) {
	cases := []struct {
		name string
		v    codec
		dec  encoding.BinaryUnmarshaler
		size int
	}{
		{"u64", U64{0x1122334455667788}, new(U64), 8},
		{"state", VringState{3, 256}, new(VringState), 8},
		{"addr", VringAddr{1, 0, 0x1000, 0x2000, 0x3000, 0}, new(VringAddr), 40},
		{"region", MemRegion{0x1000, 0x2000, 0x7f0000001000, 0}, new(MemRegion), 32},
		{"single", SingleMemRegion{MemRegion{1, 2, 3, 4}}, new(SingleMemRegion), 40},
		{"table2", MemTable{[]MemRegion{{1, 2, 3, 4}, {5, 6, 7, 8}}}, new(MemTable), 8 + 64},
		{"log", LogPayload{4096, 0}, new(LogPayload), 16},
		{"config", ConfigPayload{0, 0, make([]byte, 16)}, new(ConfigPayload), 28},
		{"area", VringArea{1, 2, 3}, new(VringArea), 24},
		{"inflight", InflightPayload{4096, 0, 1, 128}, new(InflightPayload), 24},
		{"uuid", SharedObject{[16]byte{1, 2, 3}}, new(SharedObject), 16},
		{"devstate", DeviceStateFd{1, 0}, new(DeviceStateFd), 8},
		{"shmemmap", ShmemMapReq{0, 0, 0, 1 << 30, 1}, new(ShmemMapReq), 40},
		{"shmemconfig", ShmemConfig{NRegions: 1, Sizes: [256]uint64{1 << 30}}, new(ShmemConfig), 2056},
	}
	for _, c := range cases {
		b, err := c.v.MarshalBinary()
		if err != nil {
			t.Fatalf("%s: marshal: %v", c.name, err)
		}
		if len(b) != c.size {
			t.Errorf("%s: %d bytes, want %d", c.name, len(b), c.size)
		}
		if err := c.dec.UnmarshalBinary(b); err != nil {
			t.Errorf("%s: unmarshal: %v", c.name, err)
		}
		b2, _ := c.dec.(codec).MarshalBinary()
		if !bytes.Equal(b, b2) {
			t.Errorf("%s: round trip changed bytes", c.name)
		}
		if err := c.dec.UnmarshalBinary(b[:len(b)-1]); err == nil {
			t.Errorf("%s: truncated payload accepted", c.name)
		}
		if err := c.dec.UnmarshalBinary(append(b, 0)); err == nil {
			t.Errorf("%s: oversized payload accepted", c.name)
		}
	}
}

func TestShmemMapLayout(t *testing.T) {
	b, _ := ShmemMapReq{ShmID: 2, FdOffset: 0x10, ShmOffset: 0x20, Len: 0x30, Flags: 1}.MarshalBinary()
	if b[0] != 2 || !bytes.Equal(b[1:8], make([]byte, 7)) || wire.Uint64(b[8:]) != 0x10 ||
		wire.Uint64(b[16:]) != 0x20 || wire.Uint64(b[24:]) != 0x30 || wire.Uint64(b[32:]) != 1 {
		t.Fatalf("SHMEM_MAP layout wrong: % x", b)
	}
}

func hdr(rt RequestType, flags uint32, n int) Header {
	return Header{Request: uint32(rt), Flags: flags, Size: uint32(n)}
}

func TestDecodeMessage(t *testing.T) {
	tbl, _ := MemTable{[]MemRegion{{0, 4096, 0, 0}}}.MarshalBinary()
	ok := []struct {
		rt  RequestType
		p   []byte
		fds int
	}{
		{ReqGetFeatures, nil, 0},
		{ReqSetFeatures, make([]byte, 8), 0},
		{ReqSetMemTable, tbl, 1},
		{ReqSetVringKick, make([]byte, 8), 1},
		{ReqSetVringKick, wire.AppendUint64(nil, VringNoFd), 0},
		{ReqRemMemReg, make([]byte, 40), 0},
		{ReqRemMemReg, make([]byte, 40), 1},
		{ReqGetShmemConfig, nil, 0},
	}
	for _, c := range ok {
		if _, err := DecodeMessage(hdr(c.rt, FlagVersion, len(c.p)), c.p, c.fds); err != nil {
			t.Errorf("%v: %v", c.rt, err)
		}
	}
	bad := []struct {
		name string
		h    Header
		p    []byte
		fds  int
		want string
	}{
		{"unknown", hdr(99, FlagVersion, 0), nil, 0, "unknown request"},
		{"zero", hdr(0, FlagVersion, 0), nil, 0, "unknown request"},
		{"version", hdr(ReqGetFeatures, 2, 0), nil, 0, "version"},
		{"reply bit", hdr(ReqGetFeatures, ReplyFlags, 0), nil, 0, "reply bit"},
		{"unknown flag", hdr(ReqGetFeatures, FlagVersion|0x100, 0), nil, 0, "unknown bits"},
		{"payload on none", hdr(ReqSetOwner, FlagVersion, 8), make([]byte, 8), 0, "payload"},
		{"short u64", hdr(ReqSetFeatures, FlagVersion, 4), make([]byte, 4), 0, "want 8"},
		{"size mismatch", hdr(ReqSetFeatures, FlagVersion, 9), make([]byte, 8), 0, "header size"},
		{"fd on owner", hdr(ReqSetOwner, FlagVersion, 0), nil, 1, "fds"},
		{"missing kick fd", hdr(ReqSetVringKick, FlagVersion, 8), make([]byte, 8), 0, "fds"},
		{"table fds", hdr(ReqSetMemTable, FlagVersion, len(tbl)), tbl, 2, "fds"},
		{"table count", hdr(ReqSetMemTable, FlagVersion, 8), wire.AppendUint64(nil, 9), 0, "exceeds"},
		{"oversized", hdr(ReqSetFeatures, FlagVersion, MaxPayload+1), nil, 0, "limit"},
		{"config size", hdr(ReqGetConfig, FlagVersion, 12), append(wire.AppendUint32(make([]byte, 4), 300), 0, 0, 0, 0), 0, "exceeds"},
	}
	for _, c := range bad {
		_, err := DecodeMessage(c.h, c.p, c.fds)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want one mentioning %q", c.name, err, c.want)
		}
	}
	if _, err := DecodeMessage(hdr(77, FlagVersion, 0), nil, 0); !errors.Is(err, ErrUnknownRequest) {
		t.Errorf("unknown request: %v, want ErrUnknownRequest", err)
	}
}

func TestRequestNames(t *testing.T) {
	if ReqGetShmemConfig.String() != "GET_SHMEM_CONFIG" || BackendShmemMap.String() != "SHMEM_MAP" || RequestType(200).String() != "request 200" {
		t.Fatal("request names wrong")
	}
	for rt := reqFirst; rt <= maxRequest; rt++ {
		if requests[rt].name == "" {
			t.Errorf("request %d has no entry", rt)
		}
	}
}

// FuzzDecodeMessage feeds arbitrary headers and payloads (with an fd
// count) to the decoder: it must never panic, and what it accepts must
// re-encode to the same payload.
func FuzzDecodeMessage(f *testing.F) {
	tbl, _ := MemTable{[]MemRegion{{0x1000, 0x1000, 0x7f0000001000, 0}}}.MarshalBinary()
	cfg, _ := ConfigPayload{Data: make([]byte, 16)}.MarshalBinary()
	addr, _ := VringAddr{Desc: 0x1000, Used: 0x2000, Avail: 0x3000}.MarshalBinary()
	inf, _ := InflightPayload{4096, 0, 1, 128}.MarshalBinary()
	for _, s := range []struct {
		rt  RequestType
		p   []byte
		fds int
	}{
		{ReqGetFeatures, nil, 0}, {ReqSetFeatures, make([]byte, 8), 0}, {ReqSetMemTable, tbl, 1},
		{ReqGetConfig, cfg, 0}, {ReqSetVringAddr, addr, 0}, {ReqSetInflightFd, inf, 1},
		{ReqAddMemReg, make([]byte, 40), 1}, {ReqSetVringCall, make([]byte, 8), 1}, {99, []byte{1}, 0},
	} {
		h, _ := hdr(s.rt, FlagVersion|FlagNeedReply, len(s.p)).MarshalBinary()
		f.Add(append(h, s.p...), uint8(s.fds))
	}
	f.Fuzz(func(t *testing.T, data []byte, nfds uint8) {
		if len(data) < HeaderSize {
			var h Header
			if h.UnmarshalBinary(data) == nil {
				t.Fatal("short header accepted")
			}
			return
		}
		var h Header
		if err := h.UnmarshalBinary(data[:HeaderSize]); err != nil {
			t.Fatal(err)
		}
		m, err := DecodeMessage(h, data[HeaderSize:], int(nfds%10))
		if err != nil {
			return
		}
		if m.Payload == nil {
			if len(data) != HeaderSize {
				t.Fatalf("%v: payload dropped", m.Type())
			}
			return
		}
		var b []byte
		switch p := m.Payload.(type) {
		case []byte:
			b = p
		case encoding.BinaryMarshaler:
			b, err = p.MarshalBinary()
			if err != nil {
				t.Fatalf("%v: re-encode: %v", m.Type(), err)
			}
		}
		if !bytes.Equal(b, data[HeaderSize:]) && !hasPadding(m.Type()) {
			t.Fatalf("%v: re-encoded payload differs", m.Type())
		}
	})
}

// hasPadding reports requests whose payload has padding we do not keep.
func hasPadding(rt RequestType) bool {
	switch rt {
	case ReqSetMemTable, ReqAddMemReg, ReqRemMemReg, ReqGetInflightFd, ReqSetInflightFd:
		return true
	}
	return false
}

func TestDecodeBackendMessage(t *testing.T) {
	mp, _ := ShmemMapReq{Len: 4096, Flags: 1}.MarshalBinary()
	if m, err := DecodeBackendMessage(Header{uint32(BackendShmemMap), FlagVersion, 40}, mp, 1); err != nil || m.Payload.(ShmemMapReq).Len != 4096 {
		t.Fatalf("SHMEM_MAP: %+v %v", m, err)
	}
	bad := []struct {
		h   Header
		p   []byte
		fds int
	}{
		{Header{uint32(BackendShmemMap), FlagVersion, 40}, mp, 0},
		{Header{uint32(BackendShmemUnmap), FlagVersion, 40}, mp, 1},
		{Header{uint32(BackendShmemMap), FlagVersion, 39}, mp[:39], 1},
		{Header{uint32(BackendConfigChangeMsg), FlagVersion, 1}, []byte{0}, 0},
		{Header{77, FlagVersion, 0}, nil, 0},
	}
	for i, c := range bad {
		if _, err := DecodeBackendMessage(c.h, c.p, c.fds); err == nil {
			t.Errorf("case %d accepted", i)
		}
	}
}

// FuzzDecodeBackendMessage: the back-end channel decoder never panics;
// what it accepts has exactly the fds its request carries and a payload
// that encodes back to the bytes received (SHMEM_MAP's 7 padding bytes
// excepted); what it refuses is refused with an error naming the request.
func FuzzDecodeBackendMessage(f *testing.F) {
	mp, _ := ShmemMapReq{ShmID: 1, FdOffset: 4096, ShmOffset: 8192, Len: 4096, Flags: 1}.MarshalBinary()
	area, _ := VringArea{U64: 1, Size: 4096, Offset: 0}.MarshalBinary()
	noFd, _ := VringArea{U64: 1 | VringNoFd}.MarshalBinary()
	st, _ := VringState{Index: 1, Num: 2}.MarshalBinary()
	obj, _ := SharedObject{}.MarshalBinary()
	for _, s := range []struct {
		rt  BackendRequestType
		p   []byte
		fds uint8
	}{
		{BackendShmemMap, mp, 1}, {BackendShmemUnmap, mp, 0}, {BackendVringHostNotifier, area, 1},
		{BackendVringHostNotifier, noFd, 0}, {BackendVringCall, st, 0}, {BackendVringErr, st, 0},
		{BackendSharedObjectAdd, obj, 0}, {BackendSharedObjectLookup, obj, 1}, {BackendConfigChangeMsg, nil, 0},
		{BackendIOTLBMsg, make([]byte, 64), 0}, {77, nil, 0},
	} {
		h, _ := Header{uint32(s.rt), FlagVersion | FlagNeedReply, uint32(len(s.p))}.MarshalBinary()
		f.Add(append(h, s.p...), s.fds)
	}
	f.Fuzz(func(t *testing.T, data []byte, nfds uint8) {
		var h Header
		if len(data) < HeaderSize {
			if h.UnmarshalBinary(data) == nil {
				t.Fatal("short header accepted")
			}
			return
		}
		if err := h.UnmarshalBinary(data[:HeaderSize]); err != nil {
			t.Fatal(err)
		}
		payload := data[HeaderSize:]
		rt := BackendRequestType(h.Request)
		m, err := DecodeBackendMessage(h, payload, int(nfds%3))
		if err != nil {
			if !strings.Contains(err.Error(), rt.String()) {
				t.Fatalf("error %q does not name the request %v", err, rt)
			}
			return
		}
		if m.Header != h || h.Check(false) != nil || int(h.Size) != len(payload) {
			t.Fatalf("%v: accepted header %+v for %d payload bytes", rt, h, len(payload))
		}
		wantFds := 0
		var b []byte
		switch p := m.Payload.(type) {
		case nil:
			if len(payload) != 0 {
				t.Fatalf("%v: %d payload bytes dropped", rt, len(payload))
			}
		case []byte:
			b = p
		case ShmemMapReq:
			b, _ = p.MarshalBinary()
			if rt == BackendShmemMap {
				wantFds = 1
			}
			payload = append([]byte(nil), payload...)
			clear(payload[1:8]) // padding, not kept
		case VringArea:
			b, _ = p.MarshalBinary()
			if p.U64&VringNoFd == 0 {
				wantFds = 1
			}
		case VringState:
			b, _ = p.MarshalBinary()
		case SharedObject:
			b, _ = p.MarshalBinary()
		default:
			t.Fatalf("%v: payload type %T", rt, p)
		}
		if m.Payload != nil && !bytes.Equal(b, payload) {
			t.Fatalf("%v: payload %x re-encodes to %x", rt, payload, b)
		}
		if int(nfds%3) != wantFds {
			t.Fatalf("%v: accepted with %d fds, want %d", rt, nfds%3, wantFds)
		}
	})
}
