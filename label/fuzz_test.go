package label

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

// Fuzz inputs for label areas are encoded compactly so that the fuzzer
// spends its time on meaningful bytes: two little-endian bytes give the
// area size and the rest is a prefix of the area, zero-extended. A label
// area is mostly zeros (a 128 KiB QEMU area written by a guest holds
// about 1 KiB of data), and Go's input minimiser is quadratic in the
// input length: with raw 4 KiB+ inputs every new coverage point stalled
// the worker for the whole minimisation budget (60 s by default), which
// is why the target used to manage a few hundred executions per run.
// With this encoding trailing zeros cost nothing and minimisation ends
// quickly; every area of every size up to 32 KiB and every multiple of
// 8 bytes up to 263 KiB (QEMU's 128 KiB included) is reachable.

// fuzzAreaSize decodes the size header: bit 15 clear gives MinAreaSize +
// n bytes, set gives MinAreaSize + 8*(n & 0x7fff).
func fuzzAreaSize(h uint16) int {
	if h&0x8000 == 0 {
		return MinAreaSize + int(h)
	}
	return MinAreaSize + 8*int(h&0x7fff)
}

// decodeFuzzArea turns a fuzz input into an area image, or nil when the
// input is too short to carry a size or longer than the area.
func decodeFuzzArea(in []byte) []byte {
	if len(in) < 2 {
		return nil
	}
	size := fuzzAreaSize(binary.LittleEndian.Uint16(in))
	if len(in)-2 > size {
		return nil
	}
	area := make([]byte, size)
	copy(area, in[2:])
	return area
}

// encodeFuzzArea is the inverse, for seeds.
func encodeFuzzArea(tb testing.TB, area []byte) []byte {
	tb.Helper()
	n := len(area) - MinAreaSize
	var h uint16
	switch {
	case n >= 0 && n < 0x8000:
		h = uint16(n)
	case n >= 0 && n%8 == 0 && n/8 < 0x8000:
		h = 0x8000 | uint16(n/8)
	default:
		tb.Fatalf("area size %d cannot be encoded", len(area))
	}
	trimmed := bytes.TrimRight(area, "\x00")
	out := binary.LittleEndian.AppendUint16(nil, h)
	return append(out, trimmed...)
}

func TestFuzzAreaEncoding(t *testing.T) {
	for _, size := range []int{MinAreaSize, 4096, 32 << 10, 128 << 10, 256 << 10} {
		area := make([]byte, size)
		area[0], area[size/2] = 1, 2
		got := decodeFuzzArea(encodeFuzzArea(t, area))
		if !bytes.Equal(got, area) {
			t.Fatalf("size %d: round trip gave %d bytes", size, len(got))
		}
	}
	if decodeFuzzArea([]byte{0}) != nil || decodeFuzzArea(append([]byte{0, 0}, make([]byte, MinAreaSize+1)...)) != nil {
		t.Fatal("decoded an input that does not fit its size")
	}
}

// fuzzSeedAreas returns the seed areas: the guest captures, fresh v1.1
// and v1.2 areas of several sizes, areas with live labels, and corrupted
// ones (bad checksums, torn staging block, slot mismatch, duplicate,
// overlap, another slot's cookie, garbage index).
func fuzzSeedAreas(tb testing.TB) [][]byte {
	var seeds [][]byte
	caps, _ := filepath.Glob("testdata/*/label.bin")
	if len(caps) == 0 {
		tb.Fatal("no guest captures in testdata")
	}
	for _, p := range caps {
		b, err := os.ReadFile(p)
		if err != nil {
			tb.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	edit := func(size int, v Version, f func(e *Editor)) []byte {
		d := &memDev{b: make([]byte, size)}
		e, err := NewEditor(d, int64(size))
		if err != nil {
			tb.Fatal(err)
		}
		if err := e.Init(InitOptions{Version: v}); err != nil {
			tb.Fatal(err)
		}
		if f != nil {
			f(e)
		}
		return d.b
	}
	two := func(e *Editor) {
		for _, s := range []NamespaceSpec{
			{UUID: uuidA, Name: "a", Size: 64 << 20, Mode: ModeFSDAX},
			{UUID: uuidB, Name: "b", Size: 32 << 20, Mode: ModeDevDAX},
		} {
			s.DIMMSize, s.Cookies = 512<<20, slot0Cookies
			if _, err := e.Create(s); err != nil {
				tb.Fatal(err)
			}
		}
	}
	for _, v := range []Version{V11, V12} {
		for _, size := range []int{MinAreaSize, 4096, 128 << 10} {
			seeds = append(seeds, edit(size, v, nil))
		}
		seeds = append(seeds, edit(4096, v, two), edit(128<<10, v, two))
		good := edit(128<<10, v, two)
		a, _ := ParseBytes(append([]byte(nil), good...))
		g := a.Geometry
		s0 := a.LiveSlots()[0]
		corrupt := func(f func(b []byte)) {
			b := append([]byte(nil), good...)
			f(b)
			seeds = append(seeds, b)
		}
		corrupt(func(b []byte) { b[s0.Offset+20] ^= 0xff })                                                      // name byte: v1.2 checksum
		corrupt(func(b []byte) { b[s0.Offset+120] ^= 1 })                                                        // slot field
		corrupt(func(b []byte) { b[g.IndexOffset(1-a.Current)+70] ^= 1 })                                        // torn staging block
		corrupt(func(b []byte) { b[g.IndexOffset(0)+5] ^= 1; b[g.IndexOffset(1)+5] ^= 1 })                       // both invalid
		corrupt(func(b []byte) { copy(b[g.SlotOffset(s0.Slot+2):], b[s0.Offset:s0.Offset+int64(g.LabelSize)]) }) // stray copy
		seeds = append(seeds, edit(128<<10, v, func(e *Editor) {
			two(e)
			_, _ = e.Retarget(slot1Cookies) // another slot's cookie
		}))
	}
	// A duplicate and an overlap, written through the codec.
	dup := edit(4096, V12, two)
	a, _ := ParseBytes(dup)
	s := a.LiveSlots()[0]
	l := s.Label
	l.Slot = 5
	l.Seal()
	enc, _ := l.MarshalBinary()
	copy(dup[a.Geometry.SlotOffset(5):], enc)
	x := a.CurrentIndex().clone()
	x.SetFree(5, false)
	x.Seal()
	xb, _ := x.MarshalBinary()
	copy(dup[a.Geometry.IndexOffset(a.Current):], xb)
	seeds = append(seeds, dup)
	ov := append([]byte(nil), dup...)
	l.UUID[0] ^= 1
	l.Seal()
	enc, _ = l.MarshalBinary()
	copy(ov[a.Geometry.SlotOffset(5):], enc)
	seeds = append(seeds, ov)
	return seeds
}

// FuzzParseArea feeds arbitrary label areas (see decodeFuzzArea):
// parsing, listing, checking and repairing must never panic and must
// agree with each other; an unlabelled area must initialise clean; a
// labelled one must survive an editor round (create + destroy) back to
// the same namespaces.
func FuzzParseArea(f *testing.F) {
	for _, s := range fuzzSeedAreas(f) {
		f.Add(encodeFuzzArea(f, s))
	}
	f.Add([]byte{0, 0})
	f.Fuzz(func(t *testing.T, in []byte) { fuzzAreaBody(t, in) })
}

// fuzzAreaBody is FuzzParseArea's body (a function, for the benchmark).
func fuzzAreaBody(t testing.TB, in []byte) {
	{
		b := decodeFuzzArea(in)
		if b == nil {
			return
		}
		a, err := ParseBytes(b)
		if err != nil {
			t.Fatalf("rejected a %d-byte area: %v", len(b), err)
		}
		// Parse through a ReaderAt keeps only a prefix; it must see the
		// same thing.
		pa, err := Parse(&memDev{b: b}, int64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		if pa.Labelled != a.Labelled || pa.Current != a.Current || len(pa.Namespaces()) != len(a.Namespaces()) {
			t.Fatalf("Parse and ParseBytes disagree: labelled %v/%v current %d/%d namespaces %d/%d",
				pa.Labelled, a.Labelled, pa.Current, a.Current, len(pa.Namespaces()), len(a.Namespaces()))
		}
		before := a.Namespaces()
		_ = a.FreeExtents(1<<30, 0)
		for k := uint32(0); k < a.Geometry.NSlot && k < 64; k++ {
			_ = a.DecodeSlot(k)
		}
		o := CheckOptions{Cookies: &slot0Cookies, DIMMSize: 1 << 30}
		probs := Check(a, o)
		if len(probs) == 0 && !a.Labelled {
			t.Fatal("an unlabelled area checked without any finding")
		}
		if !a.Labelled {
			e, err := NewEditor(scratchDev{b}, int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			if err := e.Init(InitOptions{Version: V12}); err == nil {
				na := e.Area()
				if !na.Labelled || len(na.Namespaces()) != 0 || !Clean(Check(na, o)) {
					t.Fatalf("init of an unlabelled area: labelled %v, %d namespaces, %v", na.Labelled, len(na.Namespaces()), Check(na, o))
				}
			}
			return
		}
		// Create then destroy returns to the same namespaces.
		e, err := NewEditor(scratchDev{b}, int64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		ns, err := e.Create(NamespaceSpec{UUID: uuidB, Name: "f", Size: 16 << 20, Mode: ModeDevDAX, DIMMSize: 1 << 30, Cookies: slot0Cookies})
		if err == nil {
			if ns.Size != 16<<20 || ns.Name != "f" {
				t.Fatalf("created %q of %d bytes", ns.Name, ns.Size)
			}
			if err := e.Destroy(uuidB); err != nil {
				t.Fatalf("destroy after create: %v", err)
			}
			if got := e.Area().Namespaces(); len(got) != len(before) {
				t.Fatalf("create+destroy: %d namespaces, had %d", len(got), len(before))
			}
		}
		// Repair: whatever it reports fixed must be gone.
		e, err = NewEditor(scratchDev{b}, int64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		r, err := e.Repair(o)
		if err != nil {
			return // e.g. no free slot to retarget into; it must not panic
		}
		if !e.Area().Labelled {
			t.Fatal("repair left the area unlabelled")
		}
		for _, p := range r.Remaining {
			if p.Repairable && p.Severity != SevInfo {
				t.Fatalf("repair left a repairable problem: %v (all: %v)", p, r.Remaining)
			}
		}
	}
}

// scratchDev reads an image and drops writes: the Editor keeps its own
// mirror of what it wrote (Editor.Area), so the fuzz body need not copy
// the image for every editor.
type scratchDev struct{ b []byte }

func (s scratchDev) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(s.b)) {
		return 0, os.ErrInvalid
	}
	return copy(p, s.b[off:]), nil
}

func (s scratchDev) WriteAt(p []byte, off int64) (int, error) { return len(p), nil }

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

// BenchmarkFuzzParseAreaBody runs the fuzz body's work on every seed, to
// keep an eye on the cost of one execution.
func BenchmarkFuzzParseAreaBody(b *testing.B) {
	seeds := fuzzSeedAreas(b)
	for b.Loop() {
		for _, s := range seeds {
			a, _ := ParseBytes(s)
			_ = Check(a, CheckOptions{Cookies: &slot0Cookies, DIMMSize: 1 << 30})
		}
	}
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
