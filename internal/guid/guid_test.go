package guid

import (
	"bytes"
	"testing"
)

func TestPersistentMemoryGUIDBytes(t *testing.T) {
	// Stored bytes of the NFIT persistent-memory range type (reference §1.2).
	want := []byte{0x79, 0xd3, 0xf0, 0x66, 0xf3, 0xb4, 0x74, 0x40, 0xac, 0x43, 0x0d, 0x33, 0x18, 0xb7, 0x8c, 0xdb}
	g, err := Parse("66F0D379-b4f3-4074-ac43-0d3318b78cdb")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(g[:], want) {
		t.Fatalf("bytes % x, want % x", g[:], want)
	}
	if s := g.String(); s != "66f0d379-b4f3-4074-ac43-0d3318b78cdb" {
		t.Fatalf("String() = %s", s)
	}
	if g.IsZero() || !(GUID{}).IsZero() {
		t.Fatal("IsZero wrong")
	}
}

func TestParseRejects(t *testing.T) {
	for _, s := range []string{"", "66f0d379b4f34074ac430d3318b78cdb", "66f0d379-b4f3-4074-ac43-0d3318b78cdg", "66f0d379-b4f3-4074-ac430-d3318b78cdb"} {
		if _, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) accepted", s)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add("66f0d379-b4f3-4074-ac43-0d3318b78cdb")
	f.Add("zz")
	f.Fuzz(func(t *testing.T, s string) {
		g, err := Parse(s)
		if err != nil {
			return
		}
		if back, err := Parse(g.String()); err != nil || back != g {
			t.Fatalf("round trip of %q: %v %v", s, back, err)
		}
	})
}
