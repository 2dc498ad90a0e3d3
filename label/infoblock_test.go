package label

import (
	"bytes"
	"errors"
	"os"
	"testing"
)

func TestInfoBlockGolden(t *testing.T) {
	raw, err := os.ReadFile("testdata/golden-v1.1-fsdax/infoblock-db.bin")
	if err != nil {
		t.Fatal(err)
	}
	var ib InfoBlock
	if err := ib.UnmarshalBinary(raw); err != nil {
		t.Fatal(err)
	}
	parent, _ := ParseUUID("c3274052-a122-484e-9686-25c4a2f6f58d")
	pfn, _ := ParseUUID("fca4f870-4f91-446a-88bb-b4590967066d")
	const nsSize = 520093696
	if ib.Kind() != ModeFSDAX || ib.UUID != pfn || ib.ParentUUID != parent || ib.VersionMajor != 1 || ib.VersionMinor != 4 ||
		ib.DataOff != 8<<20 || ib.NPFNs != 511705088/4096 || ib.Mode != PFNModePMEM || ib.Align != 2<<20 ||
		ib.PageSize != 4096 || ib.PageStructSize != 64 || ib.StartPad != 0 || ib.EndTrunc != 0 {
		t.Errorf("decoded %+v", ib)
	}
	if err := ib.Validate(nsSize, parent); err != nil {
		t.Errorf("validate: %v", err)
	}
	if err := ib.Validate(nsSize, UUID{}); err == nil {
		t.Error("validate accepted the wrong parent uuid")
	}
	mine, err := NewInfoBlock(InfoParams{Mode: ModeFSDAX, UUID: pfn, ParentUUID: parent, Size: nsSize})
	if err != nil {
		t.Fatal(err)
	}
	enc, _ := mine.MarshalBinary()
	if !bytes.Equal(enc, raw) {
		t.Errorf("encoder differs from the kernel's block:\n got %+v\nwant %+v", mine, ib)
	}
	back, _ := ib.MarshalBinary()
	if !bytes.Equal(back, raw) {
		t.Error("decode/encode round trip changed the bytes")
	}
}

// TestInfoBlockSizes checks the kernel's derivation on a table of sizes
// (values worked by hand from nd_pfn_init).
func TestInfoBlockSizes(t *testing.T) {
	for _, c := range []struct {
		mode           string
		size, align    uint64
		dataoff, npfns uint64
		endTrunc       uint32
	}{
		// 496 MiB: memmap 64*(126976-2) = 7.75 MiB + 8K -> 8 MiB.
		{ModeFSDAX, 496 << 20, 2 << 20, 8 << 20, (488 << 20) / 4096, 0},
		{ModeDevDAX, 496 << 20, 2 << 20, 8 << 20, (488 << 20) / 4096, 0},
		// 128 MiB: 64*(32768-2)=2 MiB-128, +8K -> just above 2 MiB -> 4 MiB.
		{ModeFSDAX, 128 << 20, 2 << 20, 4 << 20, (124 << 20) / 4096, 0},
		// 1 GiB align on 4 GiB: memmap 64 MiB -> 1 GiB.
		{ModeDevDAX, 4 << 30, 1 << 30, 1 << 30, (3 << 30) / 4096, 0},
		// a size not a multiple of 2 MiB is truncated at the end.
		{ModeFSDAX, 17 << 20, 2 << 20, 2 << 20, (14 << 20) / 4096, 1 << 20},
		// 4 KiB align still uses the 2 MiB compat alignment.
		{ModeFSDAX, 64 << 20, 4096, 2 << 20, (62 << 20) / 4096, 0},
	} {
		b, err := NewInfoBlock(InfoParams{Mode: c.mode, Size: c.size, Align: c.align})
		if err != nil {
			t.Fatalf("%+v: %v", c, err)
		}
		if b.DataOff != c.dataoff || b.NPFNs != c.npfns || b.EndTrunc != c.endTrunc || b.Kind() != c.mode || uint64(b.Align) != c.align {
			t.Errorf("%s %d align %d: dataoff %d npfns %d end_trunc %d; want %d %d %d", c.mode, c.size, c.align, b.DataOff, b.NPFNs, b.EndTrunc, c.dataoff, c.npfns, c.endTrunc)
		}
		if err := b.Validate(c.size, UUID{}); err != nil {
			t.Errorf("%+v: own block does not validate: %v", c, err)
		}
	}
	for _, bad := range []InfoParams{
		{Mode: ModeRaw, Size: 64 << 20},
		{Mode: ModeFSDAX, Size: 2 << 20},
		{Mode: ModeFSDAX, Size: 64 << 20, Align: 3 << 20},
		{Mode: ModeFSDAX, Size: 64<<20 + 1},
		{Mode: ModeFSDAX, Size: 64 << 20, Start: 4096},
	} {
		if _, err := NewInfoBlock(bad); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

func TestInfoBlockReadWrite(t *testing.T) {
	dev := &memDev{b: make([]byte, 64<<20)}
	if _, err := ReadInfoBlock(dev, 0); !errors.Is(err, ErrNoInfoBlock) {
		t.Fatalf("blank device: %v", err)
	}
	b, err := NewInfoBlock(InfoParams{Mode: ModeDevDAX, Size: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteInfoBlock(dev, 16<<20, b); err != nil {
		t.Fatal(err)
	}
	got, err := ReadInfoBlock(dev, 16<<20)
	if err != nil || *got != *b {
		t.Fatalf("read back %v: %v", got, err)
	}
	if err := ClearInfoBlock(dev, 16<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadInfoBlock(dev, 16<<20); !errors.Is(err, ErrNoInfoBlock) {
		t.Fatalf("after clear: %v", err)
	}
	// A corrupted byte fails the checksum.
	b.Padding[100] = 1
	if err := b.Validate(32<<20, UUID{}); err == nil {
		t.Error("corrupted block validated")
	}
}
