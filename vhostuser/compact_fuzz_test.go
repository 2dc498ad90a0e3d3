package vhostuser

import (
	"bytes"
	"strings"
	"testing"
)

// FuzzSessionFlags: any bytes either decode into flags that encode back
// to the same bytes, or are refused with an error; never a panic.
func FuzzSessionFlags(f *testing.F) {
	for _, fl := range []sessionFlags{
		{},
		{Mapped: true, Queues: []queueFlags{{Enabled: true, Started: true}}},
		{NeedReset: true, Queues: []queueFlags{{}, {Enabled: true}, {Started: true}}},
	} {
		b, _ := fl.MarshalBinary()
		f.Add(b)
	}
	f.Add([]byte{1, 0, 0xff, 0xff})
	f.Add([]byte{2, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		var fl sessionFlags
		if err := fl.UnmarshalBinary(b); err != nil {
			return
		}
		out, err := fl.MarshalBinary()
		if err != nil || !bytes.Equal(out, b) {
			t.Fatalf("%x decoded to %+v, encodes to %x (%v)", b, fl, out, err)
		}
	})
}

func TestSessionFlagsRefusals(t *testing.T) {
	for _, c := range []struct {
		b    []byte
		want string
	}{
		{[]byte{1, 0, 0}, "3 bytes"},
		{[]byte{2, 0, 0, 0}, "version 2 at offset 0"},
		{[]byte{1, 4, 0, 0}, "unknown bits 0x4 at offset 1"},
		{[]byte{1, 0, 2, 0, 1}, "5 bytes for 2 queues"},
		{[]byte{1, 0, 1, 0, 8}, "queue 0: unknown bits 0x8 at offset 4"},
		{[]byte{1, 0, 0xff, 0xff}, "queue count 65535 at offset 2"},
	} {
		var fl sessionFlags
		if err := fl.UnmarshalBinary(c.b); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%x: %v, want an error with %q", c.b, err, c.want)
		}
	}
	fl := sessionFlags{Mapped: true, Queues: []queueFlags{{Enabled: true}, {Started: true}}}
	b, _ := fl.MarshalBinary()
	if want := []byte{1, 1, 2, 0, 1, 2}; !bytes.Equal(b, want) {
		t.Fatalf("encoding %x, want %x", b, want)
	}
	// A record for another device shape is refused at replay.
	s := &session{queues: []*queue{{index: 0}}}
	if err := s.applyFlags(b); err == nil || !strings.Contains(err.Error(), "2 queues, the device has 1") {
		t.Fatalf("flags for 2 queues on a 1-queue session: %v", err)
	}
}
