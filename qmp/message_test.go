package qmp

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

func TestDecodeMessage(t *testing.T) {
	good := []struct {
		in   string
		kind Kind
		chk  func(Message) bool
	}{
		{fakeGreeting, KindGreeting, func(m Message) bool {
			return m.Greeting.Version.QEMU == Version{10, 0, 2} && m.Greeting.Version.Package == "fake"
		}},
		{`{"return": {}, "id": 7}`, KindReturn, func(m Message) bool {
			id, ok := parseID(m.ID)
			return ok && id == 7 && string(m.Return) == "{}"
		}},
		{`{"return": [1,2], "id": "abc"}`, KindReturn, func(m Message) bool { _, ok := parseID(m.ID); return !ok && string(m.ID) == `"abc"` }},
		{`{"error": {"class": "DeviceNotFound", "desc": "Device 'x' not found"}, "id": 3}`, KindError, func(m Message) bool {
			return m.Error.Class == "DeviceNotFound" && m.Error.Error() == "DeviceNotFound: Device 'x' not found"
		}},
		{`{"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}, "timestamp": {"seconds": 1700000000, "microseconds": 123456}}`, KindEvent, func(m Message) bool {
			return m.Event.Name == "SHUTDOWN" && m.Event.Time.Equal(time.Unix(1700000000, 123456000)) && strings.Contains(string(m.Event.Data), "guest-shutdown")
		}},
		{`{"event": "STOP", "timestamp": {"seconds": -1, "microseconds": -1}}`, KindEvent, func(m Message) bool {
			return m.Event.Time.IsZero() && m.Event.Data == nil
		}},
		{`{"event": "X", "data": null}`, KindEvent, func(m Message) bool { return m.Event.Data == nil }},
	}
	for _, tc := range good {
		m, err := DecodeMessage([]byte(tc.in))
		if err != nil || m.Kind != tc.kind || !tc.chk(m) {
			t.Errorf("DecodeMessage(%s) = %+v, %v; want a %s", tc.in, m, err, tc.kind)
		}
	}
	bad := []struct{ in, want string }{
		{``, "not a JSON object"},
		{`null`, "null"},
		{`[1]`, "not a JSON object"},
		{`"QMP"`, "not a JSON object"},
		{`{"hello": 1}`, "none of"},
		{`{"QMP": 1}`, `"QMP"`},
		{`{"QMP": {"version": "10"}}`, `"QMP"`},
		{`{"return": 1, "error": {"class": "A", "desc": "b"}}`, "both"},
		{`{"error": "x", "id": 1}`, `"error"`},
		{`{"error": {"desc": "no class"}}`, "no \"class\""},
		{`{"error": {"class": 5}}`, `"error"`},
		{`{"event": 5}`, `"event"`},
		{`{"event": ""}`, "empty name"},
		{`{"event": "X", "timestamp": 5}`, `"timestamp"`},
		{`{"event": "X", "timestamp": {"seconds": "a"}}`, `"timestamp"`},
	}
	for _, tc := range bad {
		_, err := DecodeMessage([]byte(tc.in))
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("DecodeMessage(%s) error %v; want ErrMalformed mentioning %q", tc.in, err, tc.want)
		}
	}
}

func FuzzDecodeMessage(f *testing.F) {
	for _, s := range []string{
		fakeGreeting,
		`{"return": {}, "id": 1}`,
		`{"return": [{"type": "nvdimm", "data": {}}], "id": 18446744073709551615}`,
		`{"error": {"class": "GenericError", "desc": "x"}, "id": 2}`,
		`{"error": {"class": "GenericError", "desc": "JSON parse error"}}`,
		`{"event": "DEVICE_DELETED", "data": {"device": "nv0", "path": "/machine/peripheral/nv0"}, "timestamp": {"seconds": 1, "microseconds": 2}}`,
		`{"event": "E", "timestamp": {"seconds": 9223372036854775807, "microseconds": 999999}}`,
		`{"QMP": {}}`, `{}`, `[]`, `{"id": {}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMessage(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		switch m.Kind {
		case KindGreeting:
			if m.Greeting == nil {
				t.Fatal("greeting without Greeting")
			}
		case KindReturn:
			if m.Return == nil || !json.Valid(m.Return) {
				t.Fatalf("return %q", m.Return)
			}
		case KindError:
			if m.Error == nil || m.Error.Class == "" {
				t.Fatal("error without class")
			}
		case KindEvent:
			if m.Event == nil || m.Event.Name == "" {
				t.Fatal("event without name")
			}
		default:
			t.Fatalf("kind %v", m.Kind)
		}
	})
}

func TestDecodeMemoryDevicesCapture(t *testing.T) {
	raw, err := os.ReadFile("testdata/query-memory-devices-qemu-10.0.json")
	if err != nil {
		t.Fatal(err)
	}
	m, err := DecodeMessage(raw)
	if err != nil || m.Kind != KindReturn {
		t.Fatalf("capture: %+v, %v", m, err)
	}
	ds, err := DecodeMemoryDevices(m.Return)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 3 {
		t.Fatalf("%d devices, want 3", len(ds))
	}
	if d := ds[0]; d.Type != "virtio-pmem" || d.VirtioPMEM == nil || *d.VirtioPMEM != (VirtioPMEMDeviceInfo{ID: "vp0", MemAddr: 4294967296, Size: 64 << 20, Memdev: "/objects/m"}) {
		t.Errorf("virtio-pmem: %+v", d.VirtioPMEM)
	}
	nv, ok := FindMemoryDevice(ds, "nv0")
	if !ok || nv.NVDIMM == nil || *nv.NVDIMM != (PCDIMMDeviceInfo{ID: "nv0", Addr: 4362076160, Size: 128 << 20, Memdev: "/objects/n", Hotplugged: true, Hotpluggable: true}) {
		t.Errorf("nvdimm: %+v", nv)
	}
	if d := ds[2]; d.Type != "dimm" || d.DIMM == nil || d.DIMM.Slot != 1 || d.ID() != "" {
		t.Errorf("dimm: %+v", d)
	}
}

func TestDecodeMemoryDevices(t *testing.T) {
	ds, err := DecodeMemoryDevices([]byte(`[{"type": "virtio-mem", "data": {"id": "vm0", "requested-size": 0}}, {"type": "sgx-epc", "data": {"memaddr": 1}}]`))
	if err != nil || len(ds) != 2 || ds[0].ID() != "vm0" || ds[0].Raw == nil || ds[1].ID() != "" {
		t.Errorf("other types: %+v, %v", ds, err)
	}
	for _, in := range []string{`{}`, `[{"data": {}}]`, `[{"type": "nvdimm"}]`, `[{"type": "nvdimm", "data": []}]`, `[{"type": "virtio-pmem", "data": {"size": -1}}]`, `[{"type": "nvdimm", "data": {"addr": "x"}}]`} {
		if _, err := DecodeMemoryDevices([]byte(in)); !errors.Is(err, ErrMalformed) {
			t.Errorf("DecodeMemoryDevices(%s): %v", in, err)
		}
	}
}

func FuzzDecodeMemoryDevices(f *testing.F) {
	if raw, err := os.ReadFile("testdata/query-memory-devices-qemu-10.0.json"); err == nil {
		if m, err := DecodeMessage(raw); err == nil {
			f.Add([]byte(m.Return))
		}
	}
	f.Add([]byte(`[{"type": "virtio-mem", "data": {"id": 5}}]`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`[{"type": "dimm", "data": {"id": "d0", "addr": 1, "size": 2, "slot": 0}}, {"type": "sgx-epc", "data": null}, {"type": "virtio-pmem", "data": {"id": "v"}}]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ds, err := DecodeMemoryDevices(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatal(err)
			}
			return
		}
		var members []json.RawMessage
		if err := json.Unmarshal(b, &members); err != nil || len(members) != len(ds) {
			t.Fatalf("%d devices from %d members (%v)", len(ds), len(members), err)
		}
		for i, d := range ds {
			if d.Type == "" || d.Raw == nil || !json.Valid(d.Raw) {
				t.Fatalf("member %d: %+v", i, d)
			}
			// Exactly the member's type is decoded, and ID reads it.
			set := 0
			for _, p := range []bool{d.DIMM != nil, d.NVDIMM != nil, d.VirtioPMEM != nil} {
				if p {
					set++
				}
			}
			var id string
			switch d.Type {
			case "dimm":
				if set != 1 || d.DIMM == nil {
					t.Fatalf("member %d (dimm): %+v", i, d)
				}
				id = d.DIMM.ID
			case "nvdimm":
				if set != 1 || d.NVDIMM == nil {
					t.Fatalf("member %d (nvdimm): %+v", i, d)
				}
				id = d.NVDIMM.ID
			case "virtio-pmem":
				if set != 1 || d.VirtioPMEM == nil {
					t.Fatalf("member %d (virtio-pmem): %+v", i, d)
				}
				id = d.VirtioPMEM.ID
			default:
				if set != 0 {
					t.Fatalf("member %d (%s) decoded as a known type: %+v", i, d.Type, d)
				}
				var o struct {
					ID string `json:"id"`
				}
				if json.Unmarshal(d.Raw, &o) == nil {
					id = o.ID
				}
			}
			if d.ID() != id {
				t.Fatalf("member %d: ID() %q, data says %q", i, d.ID(), id)
			}
			if got, ok := FindMemoryDevice(ds, id); id != "" && (!ok || got.ID() != id) {
				t.Fatalf("FindMemoryDevice(%q) = %+v, %v", id, got, ok)
			}
		}
	})
}
