package label

import (
	"os"
	"testing"
)

// FuzzParseArea feeds arbitrary bytes as a label area: parsing, listing,
// checking and repairing must never panic, and whatever Parse accepts as
// labelled must survive an editor round (create + destroy) when space
// allows.
func FuzzParseArea(f *testing.F) {
	if b, err := os.ReadFile("testdata/golden-v1.1-fsdax/label.bin"); err == nil {
		f.Add(b[:4096])
		f.Add(b)
	}
	for _, v := range []Version{V11, V12} {
		d := &memDev{b: make([]byte, 4096)}
		e, _ := NewEditor(d, 4096)
		_ = e.Init(InitOptions{Version: v})
		_, _ = e.Create(NamespaceSpec{UUID: uuidA, Name: "x", Mode: ModeFSDAX, DIMMSize: 64 << 20, Cookies: slot0Cookies})
		f.Add(append([]byte(nil), d.b...))
	}
	f.Add(make([]byte, MinAreaSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 16<<10 {
			return
		}
		a, err := ParseBytes(b)
		if err != nil {
			if len(b) >= MinAreaSize {
				t.Fatalf("rejected a %d-byte area: %v", len(b), err)
			}
			return
		}
		_ = a.Namespaces()
		_ = a.FreeExtents(1<<30, 0)
		for k := uint32(0); k < a.Geometry.NSlot && k < 64; k++ {
			_ = a.DecodeSlot(k)
		}
		probs := Check(a, CheckOptions{Cookies: &slot0Cookies, DIMMSize: 1 << 30})
		d := &memDev{b: append([]byte(nil), b...)}
		e, err := NewEditor(d, int64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.Repair(CheckOptions{Cookies: &slot0Cookies, DIMMSize: 1 << 30}); err != nil && a.Labelled && len(probs) > 0 {
			// Repair may fail for lack of free slots; it must not panic.
			_ = err
		}
		if a.Labelled {
			ns, err := e.Create(NamespaceSpec{UUID: uuidB, Name: "f", Size: 16 << 20, Mode: ModeDevDAX, DIMMSize: 1 << 30, Cookies: slot0Cookies})
			if err == nil {
				if ns.Size != 16<<20 {
					t.Fatalf("created %d bytes", ns.Size)
				}
				if err := e.Destroy(uuidB); err != nil {
					t.Fatalf("destroy after create: %v", err)
				}
			}
		}
	})
}

// FuzzInfoBlock decodes arbitrary 4 KiB blocks: no panic, and encoding
// what was decoded gives the same bytes.
func FuzzInfoBlock(f *testing.F) {
	if b, err := os.ReadFile("testdata/golden-v1.1-fsdax/infoblock-db.bin"); err == nil {
		f.Add(b, uint64(520093696))
	}
	if ib, err := NewInfoBlock(InfoParams{Mode: ModeDevDAX, Size: 1 << 30, Align: 1 << 30 >> 9}); err == nil {
		b, _ := ib.MarshalBinary()
		f.Add(b, uint64(1<<30))
	}
	f.Add(make([]byte, InfoBlockSize), uint64(0))
	f.Fuzz(func(t *testing.T, b []byte, nsSize uint64) {
		in := make([]byte, InfoBlockSize)
		copy(in, b)
		var ib InfoBlock
		if err := ib.UnmarshalBinary(in); err != nil {
			t.Fatal(err)
		}
		_ = ib.Validate(nsSize, ib.ParentUUID)
		out, _ := ib.MarshalBinary()
		if string(out) != string(in) {
			t.Fatal("round trip changed the block")
		}
		if err := ib.UnmarshalBinary(b); err == nil && len(b) != InfoBlockSize {
			t.Fatalf("accepted %d bytes", len(b))
		}
		if nsSize > 0 {
			nb, err := NewInfoBlock(InfoParams{Mode: ModeFSDAX, Size: nsSize &^ 4095, Align: uint64(ib.Align)})
			if err == nil {
				if err := nb.Validate(nsSize&^4095, UUID{}); err != nil {
					t.Fatalf("own block for %d bytes align %d fails validation: %v", nsSize&^4095, ib.Align, err)
				}
			}
		}
	})
}

// BenchmarkParse128K parses and validates a populated 128 KiB area and
// lists its namespaces (target: under 50 µs).
func BenchmarkParse128K(b *testing.B) {
	d := &memDev{b: make([]byte, 128<<10)}
	e, _ := NewEditor(d, 128<<10)
	_ = e.Init(InitOptions{Version: V12})
	for i := 0; i < 8; i++ {
		u := uuidA
		u[0] = byte(i)
		if _, err := e.Create(NamespaceSpec{UUID: u, Name: "n", Size: 16 << 20, Mode: ModeFSDAX, DIMMSize: 1 << 30, Cookies: slot0Cookies}); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(128 << 10)
	b.ReportAllocs()
	for b.Loop() {
		a, err := Parse(d, 128<<10)
		if err != nil || len(a.Namespaces()) != 8 {
			b.Fatal(err)
		}
		if !Clean(Check(a, CheckOptions{Cookies: &slot0Cookies, DIMMSize: 1 << 30})) {
			b.Fatal("not clean")
		}
	}
}
