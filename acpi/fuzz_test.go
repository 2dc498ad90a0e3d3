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
