package acpi

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
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
