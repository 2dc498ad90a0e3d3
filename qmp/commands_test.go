package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// wire runs f against an echo server and returns what the server saw
// as {"cmd": ..., "args": ...} for each command.
func wire(t *testing.T, greeting string, f func(ctx context.Context, c *Client)) []string {
	t.Helper()
	var seen []string
	path, wait := fakeServer(t, func(fc *fakeConn) {
		fc.sendRaw(greeting)
		first, err := fc.readCommand()
		if err != nil {
			return
		}
		fc.reply(first, map[string]any{})
		for {
			c, err := fc.readCommand()
			if err != nil {
				return
			}
			seen = append(seen, c.Execute+" "+string(c.Arguments))
			fc.reply(c, map[string]any{})
		}
	})
	c, err := Dial(tctx(t), path, quiet)
	if err != nil {
		t.Fatal(err)
	}
	f(tctx(t), c)
	c.Close()
	wait()
	return seen
}

// canon re-encodes a JSON object with sorted keys.
func canon(t *testing.T, s string) string {
	t.Helper()
	cmd, args, _ := strings.Cut(s, " ")
	var v any
	if err := json.Unmarshal([]byte(args), &v); err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	b, _ := json.Marshal(v)
	return cmd + " " + string(b)
}

func TestHelpersOnTheWire(t *testing.T) {
	slot, node := 2, uint32(1)
	var got []string
	seen := wire(t, fakeGreeting, func(ctx context.Context, c *Client) {
		must := func(err error) {
			if err != nil {
				t.Error(err)
			}
		}
		must(c.ObjectAddMemoryBackendFile(ctx, MemoryBackendFile{ID: "mb0", MemPath: "/srv/a.img", Size: 1 << 30, Share: true, Align: 2 << 20, PMem: true, ReadOnly: true}))
		must(c.ObjectAddMemoryBackendFile(ctx, MemoryBackendFile{ID: "mb1", MemPath: "/srv/b.img", Size: 4096}))
		must(c.DeviceAdd(ctx, NVDIMMDevice{ID: "nv0", Memdev: "mb0", LabelSize: 128 << 10, Unarmed: true, Slot: &slot, Node: &node}))
		must(c.DeviceAdd(ctx, NVDIMMDevice{ID: "nv1", Memdev: "mb1"}))
		must(c.DeviceAdd(ctx, VirtioPMEMPCIDevice{ID: "vp0", Memdev: "mb1", Bus: "rp1", Addr: "0.0"}))
		must(c.DeviceAdd(ctx, VhostUserTestDevicePCI{ID: "vu0", Chardev: "ch0", VirtioID: VirtioIDPMEM, NumVQs: 1, VQSize: 256, ConfigSize: 16}))
		must(c.DeviceAdd(ctx, GenericDevice{Driver: "pc-dimm", ID: "d0", Props: map[string]any{"memdev": "mb1", "id": "ignored"}}))
		must(c.ChardevAddUnixSocket(ctx, ChardevSocket{ID: "ch0", Path: "/run/vu.sock", ReconnectMs: 1500}))
		must(c.ChardevAddUnixSocket(ctx, ChardevSocket{ID: "ch1", Path: "/run/s.sock", Server: true}))
		must(c.ChardevRemove(ctx, "ch1"))
		must(c.ObjectDel(ctx, "mb0"))
		must(c.DeviceDel(ctx, "nv0"))
		must(c.QOMSet(ctx, "/objects/io0", "poll-max-ns", 5))
		var v any
		must(c.QOMGet(ctx, "/objects/io0", "poll-max-ns", &v))
		must(c.CloseFD(ctx, "fd0"))
		fd := 3
		must(c.RemoveFD(ctx, 1, &fd))
	})
	for _, s := range seen {
		got = append(got, canon(t, s))
	}
	want := []string{
		`object-add {"align":2097152,"id":"mb0","mem-path":"/srv/a.img","pmem":true,"qom-type":"memory-backend-file","readonly":true,"share":true,"size":1073741824}`,
		`object-add {"id":"mb1","mem-path":"/srv/b.img","qom-type":"memory-backend-file","share":false,"size":4096}`,
		`device_add {"driver":"nvdimm","id":"nv0","label-size":131072,"memdev":"mb0","node":1,"slot":2,"unarmed":true}`,
		`device_add {"driver":"nvdimm","id":"nv1","memdev":"mb1"}`,
		`device_add {"addr":"0.0","bus":"rp1","driver":"virtio-pmem-pci","id":"vp0","memdev":"mb1"}`,
		`device_add {"chardev":"ch0","config_size":16,"driver":"vhost-user-test-device-pci","id":"vu0","num_vqs":1,"virtio-id":27,"vq_size":256}`,
		`device_add {"driver":"pc-dimm","id":"d0","memdev":"mb1"}`,
		`chardev-add {"backend":{"data":{"addr":{"data":{"path":"/run/vu.sock"},"type":"unix"},"reconnect-ms":1500,"server":false},"type":"socket"},"id":"ch0"}`,
		`chardev-add {"backend":{"data":{"addr":{"data":{"path":"/run/s.sock"},"type":"unix"},"server":true,"wait":false},"type":"socket"},"id":"ch1"}`,
		`chardev-remove {"id":"ch1"}`,
		`object-del {"id":"mb0"}`,
		`device_del {"id":"nv0"}`,
		`qom-set {"path":"/objects/io0","property":"poll-max-ns","value":5}`,
		`qom-get {"path":"/objects/io0","property":"poll-max-ns"}`,
		`closefd {"fdname":"fd0"}`,
		`remove-fd {"fd":3,"fdset-id":1}`,
	}
	if len(got) != len(want) {
		t.Fatalf("server saw %d commands, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("command %d:\n got %s\nwant %s", i, got[i], want[i])
		}
	}
}

func TestChardevReconnectOnOldQEMU(t *testing.T) {
	old := strings.Replace(fakeGreeting, `"minor": 0, "major": 10`, `"minor": 2, "major": 7`, 1)
	seen := wire(t, old, func(ctx context.Context, c *Client) {
		if err := c.ChardevAddUnixSocket(ctx, ChardevSocket{ID: "ch0", Path: "/run/vu.sock", ReconnectMs: 1500}); err != nil {
			t.Error(err)
		}
	})
	if len(seen) != 1 || canon(t, seen[0]) != `chardev-add {"backend":{"data":{"addr":{"data":{"path":"/run/vu.sock"},"type":"unix"},"reconnect":2,"server":false},"type":"socket"},"id":"ch0"}` {
		t.Errorf("QEMU 7.2 got %q", seen)
	}
}

func TestHelpersRejectBadArguments(t *testing.T) {
	neg := -1
	seen := wire(t, fakeGreeting, func(ctx context.Context, c *Client) {
		errs := []error{
			c.ObjectAddMemoryBackendFile(ctx, MemoryBackendFile{ID: "", MemPath: "/a", Size: 1}),
			c.ObjectAddMemoryBackendFile(ctx, MemoryBackendFile{ID: "1mb", MemPath: "/a", Size: 1}),
			c.ObjectAddMemoryBackendFile(ctx, MemoryBackendFile{ID: "mb,x=y", MemPath: "/a", Size: 1}),
			c.ObjectAddMemoryBackendFile(ctx, MemoryBackendFile{ID: "mb", MemPath: "", Size: 1}),
			c.ObjectAddMemoryBackendFile(ctx, MemoryBackendFile{ID: "mb", MemPath: "/a", Size: 0}),
			c.ObjectAddMemoryBackendFile(ctx, MemoryBackendFile{ID: "mb", MemPath: "/a", Size: 1, Align: 3 << 20}),
			c.DeviceAdd(ctx, nil),
			c.DeviceAdd(ctx, NVDIMMDevice{ID: "nv0"}),
			c.DeviceAdd(ctx, NVDIMMDevice{ID: "nv0", Memdev: "mb", LabelSize: 4096}),
			c.DeviceAdd(ctx, NVDIMMDevice{ID: "nv0", Memdev: "mb", Slot: &neg}),
			c.DeviceAdd(ctx, NVDIMMDevice{ID: strings.Repeat("a", 200), Memdev: "mb"}),
			c.DeviceAdd(ctx, VirtioPMEMPCIDevice{ID: "vp0", Memdev: "mb", Bus: "a b"}),
			c.DeviceAdd(ctx, VirtioPMEMPCIDevice{ID: "vp0", Memdev: "mb", Addr: "1,multifunction=on"}),
			c.DeviceAdd(ctx, VhostUserTestDevicePCI{ID: "vu0", Chardev: "ch0"}),
			c.DeviceAdd(ctx, VhostUserTestDevicePCI{ID: "vu0", Chardev: "ch0", VirtioID: 27, VQSize: 100}),
			c.DeviceAdd(ctx, GenericDevice{ID: "x"}),
			c.ChardevAddUnixSocket(ctx, ChardevSocket{ID: "ch0"}),
			c.ChardevAddUnixSocket(ctx, ChardevSocket{ID: "ch0", Path: "/s", ReconnectMs: -1}),
			c.ChardevAddUnixSocket(ctx, ChardevSocket{ID: "ch0", Path: "/s", Server: true, ReconnectMs: 10}),
			c.ChardevRemove(ctx, ""),
			c.ObjectDel(ctx, "a/b"),
			c.DeviceDel(ctx, ""),
			c.QOMGet(ctx, "", "x", nil),
			c.QOMSet(ctx, "/x", "", 1),
		}
		for i, err := range errs {
			if !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("case %d: %v, want ErrInvalidArgument", i, err)
			} else if !strings.Contains(err.Error(), c.Path()) {
				t.Errorf("case %d: %q does not name the socket", i, err)
			}
		}
		if _, err := c.AddFD(ctx, &neg, nil, ""); err == nil {
			t.Error("add-fd with a negative set id succeeded")
		}
	})
	if len(seen) != 0 {
		t.Errorf("invalid arguments reached the server: %q", seen)
	}
}

func TestCheckID(t *testing.T) {
	for _, id := range []string{"a", "nvb-dev-pm0", "A.b_c-9"} {
		if err := CheckID("id", id); err != nil {
			t.Errorf("CheckID(%q): %v", id, err)
		}
	}
	for _, id := range []string{"", "0a", "-a", "a b", "a,b", "a/b", "é", strings.Repeat("x", 129)} {
		if err := CheckID("id", id); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("CheckID(%q) accepted", id)
		}
	}
}

func TestFindPCIDevice(t *testing.T) {
	var buses []PCIBus
	raw := `[{"bus":0,"devices":[{"bus":0,"slot":1,"function":0,"qdev_id":"rp1","class_info":{"class":1540},"id":{"device":12,"vendor":6966},
		"pci_bridge":{"bus":{"number":0,"secondary":1,"subordinate":1},"devices":[{"bus":1,"slot":0,"function":0,"qdev_id":"vp0","class_info":{"class":65280},"id":{"device":4187,"vendor":6900},"regions":[]}]},"regions":[]}]}]`
	if err := json.Unmarshal([]byte(raw), &buses); err != nil {
		t.Fatal(err)
	}
	d, ok := FindPCIDevice(buses, "vp0")
	if !ok || d.Bus != 1 || d.ID.Device != 0x1040+VirtioIDPMEM {
		t.Errorf("vp0 behind rp1: %+v %v", d, ok)
	}
	if _, ok := FindPCIDevice(buses, "nope"); ok {
		t.Error("found a device that is not there")
	}
}
