package acpi

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nvdimm-backend/nvdimm-backend/qmp"
)

// FuzzParseNFIT: any bytes either fail to parse with an error or decode
// into a table whose every method works without panicking; re-encoding
// a parsed table and parsing it again gives the same structures.
// Allocation is bounded by the input: ParseNFIT refuses a header Length
// that disagrees with the buffer, and every count field (interleave
// lines, flush hints) is checked against the structure length before
// anything is allocated.
func FuzzParseNFIT(f *testing.F) {
	bins, _ := filepath.Glob("testdata/*.bin")
	for _, p := range bins {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	var all []Structure
	all = append(all, everyStructure()...)
	n := &NFIT{Header: QEMUHeader(), Structures: all}
	if b, err := n.MarshalBinary(); err == nil {
		f.Add(b)
	}
	f.Add(table(spaBytes(60, 0)))
	f.Add(table(structBytes(TypeInterleave, 16)))
	hostile := table(structBytes(TypeInterleave, 20))
	le.PutUint32(hostile[48:], 0xffffffff) // line count
	f.Add(hostile)
	hostile = table(structBytes(TypeFlushHint, 24))
	le.PutUint16(hostile[48:], 0xffff) // hint count
	f.Add(hostile)
	f.Add([]byte("NFIT\xff\xff\xff\xff"))

	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := ParseNFIT(b)
		if err != nil {
			return
		}
		_ = n.Validate()
		_, _ = Cookies(n)
		_, _ = TopologyFromNFIT(n)
		_ = MakeDump(n)
		var sb bytes.Buffer
		if err := WriteText(&sb, n); err != nil {
			t.Fatal(err)
		}
		re, err := n.MarshalBinary()
		if err != nil {
			t.Fatalf("re-encode a parsed table: %v", err)
		}
		if len(re) != len(b) {
			t.Fatalf("re-encoded %d bytes from %d", len(re), len(b))
		}
		// Only the checksum byte may change.
		if !bytes.Equal(re[:9], b[:9]) || !bytes.Equal(re[10:], b[10:]) {
			t.Fatalf("re-encoding changed bytes other than the checksum")
		}
	})
}

// FuzzParseQEMUTopology: any bytes either fail with an error or give a
// topology that passes Check, whose strict QEMU check and builder return
// without panicking, and whose built table (when CheckQEMU accepts it)
// parses back to the same topology.
func FuzzParseQEMUTopology(f *testing.F) {
	jsons, _ := filepath.Glob("testdata/qemu-*.json")
	for _, p := range jsons {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(`{"persistence":"mem-ctrl","dimms":[{"slot":3,"addr":4294967296,"size":268435456,"node":1,"unarmed":true,"flush_hints":[4276092928]}]}`))
	f.Add([]byte(`{"dimms":[{"slot":0,"addr":1,"size":3}]}`))
	f.Add([]byte(`{"dimms":[{"slot":0,"addr":18446744073709551615,"size":2}]}`))
	f.Add([]byte(`{"dimms":[{"slot":-1,"addr":0,"size":4096}]}`))
	f.Add([]byte(`{"dimms":[]} {}`))
	f.Add([]byte(`{"dimms":[{"slot":0,"addr":0,"size":4096,"flush_hints":null}]}`))
	f.Add([]byte(`[]`))

	f.Fuzz(func(t *testing.T, b []byte) {
		top, err := ParseQEMUTopology(b)
		if err != nil {
			return
		}
		if err := top.Check(); err != nil {
			t.Fatalf("ParseQEMUTopology returned a topology Check refuses: %v", err)
		}
		if _, err := top.CheckQEMU(); err != nil {
			if _, berr := BuildQEMU(top); berr == nil {
				t.Fatalf("BuildQEMU accepted a topology CheckQEMU refuses: %v", err)
			}
			return
		}
		tb, err := BuildQEMU(top)
		if err != nil {
			t.Fatalf("BuildQEMU after CheckQEMU passed: %v", err)
		}
		n, err := ParseNFIT(tb)
		if err != nil {
			t.Fatalf("re-parse built table: %v", err)
		}
		back, err := TopologyFromNFIT(n)
		if err != nil {
			t.Fatalf("TopologyFromNFIT of a built table: %v", err)
		}
		if len(back.DIMMs) != len(top.DIMMs) || back.Persistence != top.Persistence {
			t.Fatalf("round trip: %+v -> %+v", top, back)
		}
		for i := range top.DIMMs {
			w, g := top.DIMMs[i], back.DIMMs[i]
			if w.Slot != g.Slot || w.Addr != g.Addr || w.Size != g.Size || w.Node != g.Node || w.Unarmed != g.Unarmed || len(w.FlushHints) != len(g.FlushHints) {
				t.Fatalf("round trip dimms[%d]: %+v -> %+v", i, w, g)
			}
		}
		if diffs, err := CompareQEMU(n, top); err != nil || len(diffs) != 0 {
			t.Fatalf("CompareQEMU of the built table: %v %v", diffs, err)
		}
	})
}

// FuzzTopologyFromMemoryDevices: any bytes either give a topology that
// passes Check or an error prefixed "acpi:"; a bare array's error names
// the entry; and an accepted reply that the qmp package decodes too gives
// the same NVDIMMs in the same order (the two decoders were written
// separately, so a field read differently shows up here).
func FuzzTopologyFromMemoryDevices(f *testing.F) {
	if b, err := os.ReadFile("testdata/qmp-query-memory-devices.json"); err == nil {
		f.Add(b)
	}
	for _, s := range []string{
		`[{"type":"virtio-pmem","data":{"memaddr":1,"size":2}},{"type":"nvdimm","data":{"addr":4294967296,"size":268435456,"slot":3,"node":1}}]`,
		`{"return":[{"type":"nvdimm","data":{"addr":4294967296,"size":4096,"slot":0,"node":0,"id":"nv0","memdev":"/objects/m","hotplugged":true,"hotpluggable":true}}]}`,
		`{"query-memory-devices":{"return":[{"type":"nvdimm","data":{"addr":1,"size":1,"slot":255}}]}}`,
		`[{"type":"nvdimm","data":{"addr":"x"}}]`,
		`[{"type":"nvdimm","data":{"addr":0,"size":4096,"slot":0}},{"type":"nvdimm","data":{"addr":0,"size":4096,"slot":1}}]`,
		`[null]`, `null`, `{}`, `[`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		top, err := TopologyFromMemoryDevices(b)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "acpi: ") {
				t.Fatalf("error %q lacks the package prefix", err)
			}
			return
		}
		if err := top.Check(); err != nil {
			t.Fatalf("accepted a topology Check refuses: %v", err)
		}
		raw := b
		if m, err := qmp.DecodeMessage(b); err == nil && m.Kind == qmp.KindReturn {
			raw = m.Return
		}
		ds, err := qmp.DecodeMemoryDevices(raw)
		if err != nil {
			return // not a reply qmp reads (a capture file, or looser data)
		}
		var nv []qmp.PCDIMMDeviceInfo
		for _, d := range ds {
			if d.NVDIMM != nil {
				nv = append(nv, *d.NVDIMM)
			}
		}
		if len(nv) != len(top.DIMMs) {
			t.Fatalf("acpi read %d NVDIMMs, qmp %d", len(top.DIMMs), len(nv))
		}
		for i, d := range top.DIMMs {
			q := nv[i]
			if d.Slot != q.Slot || d.Addr != q.Addr || d.Size != q.Size || int(d.Node) != q.Node {
				t.Fatalf("nvdimm %d: acpi %+v, qmp %+v", i, d, q)
			}
		}
	})
}

// TestTopologyFromMemoryDevicesErrors: a bad field of a bare array is
// reported as that entry's field; it used to come back as a failure to
// decode the array into the wrapped reply's struct type.
func TestTopologyFromMemoryDevicesErrors(t *testing.T) {
	for in, want := range map[string]string{
		`[{"type":"virtio-pmem","data":{}},{"type":"nvdimm","data":{"addr":"x"}}]`: "entry 1: json: cannot unmarshal string into Go struct field",
		`[{"type":"nvdimm","data":{"addr":1,"size":2,"slot":0,"node":-1}}]`:        "entry 0: json: cannot unmarshal number -1",
		`{"return":[{"type":"nvdimm","data":{"addr":-1}}]}`:                        "entry 0: json: cannot unmarshal number -1",
		`[{"type":"nvdimm","data":{"size":1}}]`:                                    "entry 0: nvdimm without addr, size or slot",
		`[1`:                                                                       "query-memory-devices JSON",
		`{"return":5}`:                                                             "query-memory-devices JSON",
	} {
		_, err := TopologyFromMemoryDevices([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "Go value of type struct") {
			t.Errorf("%s: %v, want an error with %q", in, err, want)
		}
	}
}
