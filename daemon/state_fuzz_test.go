package daemon

import (
	"strings"
	"testing"
)

func TestDecodeStateErrors(t *testing.T) {
	cases := map[string]string{
		`{}`:                                    `no "version"`,
		`{"version":2,"devices":[]}`:            "version 2",
		`{"version":1,"devices":[{"name":""}]}`: "devices[0]",
		`{"version":1,"devices":[{"name":"a","backing":"/x"},{"name":"a","backing":"/y"}]}`:                "duplicate",
		`{"version":1,"devices":[{"name":"a","backing":"rel"}]}`:                                           "not absolute",
		`{"version":1,"devices":[{"name":"a","backing":"/x","attached":{"qmp":""}}]}`:                      "without a QMP path",
		`{"version":1,"devices":[{"name":"a","backing":"/x","image":"base","readonly":false}]}`:            "not read-only",
		`{"version":1,"devices":[{"name":"a","backing":"/x","image":"../b","readonly":true}]}`:             "field image",
		`{"version":1,"devices":[{"name":"a","backing":"/x","image":"b","readonly":true,"created":true}]}`: "marked created",
		`not json`: "state file",
	}
	for in, want := range cases {
		_, err := decodeState("state.json", []byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", in, err, want)
		}
	}
}

func FuzzDecodeState(f *testing.F) {
	f.Add([]byte(`{"version":1,"devices":[{"name":"pm0","backing":"/b/pm0.img","backing_size":67239936,"size":67108864,"label_size":131072,"attached":{"qmp":"/run/vm.qmp","kind":"nvdimm","device_id":"nvb-dev-pm0"}}]}`))
	f.Add([]byte(`{"version":1,"devices":[{"name":"a","image":"base","backing":"/i/base.img","backing_size":4194304,"size":4194304,"readonly":true}]}`))
	f.Add([]byte(`{"version":1,"devices":[]}`))
	f.Add([]byte(`{"version":1,"devices":null}`))
	f.Add([]byte(`{"version":0}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		devs, err := decodeState("fuzz", b)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, d := range devs {
			if validName(d.Name) != nil || seen[d.Name] {
				t.Fatalf("accepted bad or duplicate name %q", d.Name)
			}
			seen[d.Name] = true
			if d.Image != "" && (!d.ReadOnly || d.Created) {
				t.Fatalf("accepted a writable or daemon-owned image device %+v", d)
			}
		}
	})
}
