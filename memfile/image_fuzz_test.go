package memfile

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nvdimm-backend/nvdimm-backend/label"
)

// FuzzParseCatalog: any bytes either parse into entries that pass
// Validate and survive a re-encode, or give an error; never a panic.
func FuzzParseCatalog(f *testing.F) {
	f.Add([]byte(`{"version":1,"images":[]}`))
	f.Add([]byte(`{"version":1,"images":[{"name":"a","path":"/srv/a.img","size":4194304,` +
		`"layout":{"format":"raw","guest_size":4194304,"align":2097152,"info_block":"none","data_offset":0,"data_size":4194304},` +
		`"sha256":"` + strings.Repeat("ab", 32) + `","data_sha256":"` + strings.Repeat("cd", 32) + `",` +
		`"created":"2026-01-02T03:04:05Z","immutable":true,"owned":false}]}`))
	f.Add([]byte(`{"version":1,"images":[{"name":"b","path":"/x","size":18446744073709551615,` +
		`"layout":{"format":"ext4","guest_size":18446744073709551615,"align":2097152,"info_block":"pfn-ram","data_offset":18446744073709551615,"data_size":1}}]}`))
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, data []byte) {
		ims, err := ParseCatalog(data, "fuzz")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "catalog fuzz: ") {
				t.Fatalf("error %q does not name the catalog", err)
			}
			return
		}
		for i := range ims {
			if err := ims[i].Validate(); err != nil {
				t.Fatalf("parsed entry fails Validate: %v", err)
			}
		}
		enc, err := json.Marshal(catalogFile{Version: CatalogVersion, Images: ims})
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseCatalog(enc, "re-encoded")
		if err != nil || len(back) != len(ims) {
			t.Fatalf("re-encoded catalog does not parse: %v", err)
		}
		// ... to the same entries.
		for i := range ims {
			a, b := ims[i], back[i]
			if !a.Created.Equal(b.Created) {
				t.Fatalf("images[%d] created %v came back as %v", i, a.Created, b.Created)
			}
			a.Created, b.Created = time.Time{}, time.Time{}
			if a != b {
				t.Fatalf("images[%d]: %+v came back as %+v", i, a, b)
			}
		}
	})
}

// FuzzProbeImageLayout: the 4 KiB at offset 4096 of an image are file
// controlled; whatever they hold, the probe returns a data range inside the
// namespace or an error.
//
// The input is a prefix of the block of at most 256 bytes (every field
// the probe reads lies in the first 128), zero-extended to 4 KiB, and,
// with fix set, the checksum field is made right first. Raw 4 KiB inputs kept
// the fuzzer minimising for most of a 60 s run (Go's minimiser is
// quadratic in the input length; a run managed under a thousand
// executions) and, with the checksum at the block's end, almost never
// got past the checksum check.
func FuzzProbeImageLayout(f *testing.F) {
	if n := len(bytes.TrimRight(mustImageInfoBlock(f)[:label.InfoBlockSize-8], "\x00")); n > maxProbeFuzzPrefix {
		f.Fatalf("an info block's fields run to byte %d, past the fuzzed prefix", n)
	}
	prefix := func(b []byte) []byte { return bytes.TrimRight(b[:label.InfoBlockSize-8], "\x00") }
	ib, err := ImageInfoBlock(16 * MiB)
	if err != nil {
		f.Fatal(err)
	}
	good, _ := ib.MarshalBinary()
	f.Add(prefix(good), uint64(16*MiB), true)
	f.Add(prefix(good), uint64(16*MiB), false)
	pm, _ := label.NewInfoBlock(label.InfoParams{Mode: label.ModeFSDAX, Size: 64 * MiB})
	raw, _ := pm.MarshalBinary()
	f.Add(prefix(raw), uint64(64*MiB), true)
	dx, _ := label.NewInfoBlock(label.InfoParams{Mode: label.ModeDevDAX, Size: 64 * MiB})
	raw, _ = dx.MarshalBinary()
	f.Add(prefix(raw), uint64(64*MiB), true)
	f.Add([]byte{}, uint64(2*MiB), false)
	f.Add(good[:100], uint64(8192), true)
	f.Fuzz(func(t *testing.T, block []byte, guestSize uint64, fix bool) {
		if len(block) > maxProbeFuzzPrefix {
			return
		}
		guestSize = guestSize % (1 << 40)
		// The file: 4 KiB of zeros, then the fuzzed block (padded).
		head := make([]byte, 2*label.InfoBlockSize)
		copy(head[label.InfoBlockSize:], block)
		if fix {
			var b label.InfoBlock
			if err := b.UnmarshalBinary(head[label.InfoBlockSize:]); err != nil {
				t.Fatal(err)
			}
			b.Checksum = b.ComputeChecksum()
			enc, _ := b.MarshalBinary()
			copy(head[label.InfoBlockSize:], enc)
		}
		r := bytes.NewReader(head)
		l, _, err := probeImageLayout(r, guestSize)
		if err != nil {
			return
		}
		if l.GuestSize != guestSize || l.DataSize == 0 && guestSize != 0 {
			t.Fatalf("layout %+v for a %d-byte namespace", l, guestSize)
		}
		if l.DataOffset > guestSize || l.DataSize > guestSize-l.DataOffset {
			t.Fatalf("data range [%d, +%d) outside the %d-byte namespace", l.DataOffset, l.DataSize, guestSize)
		}
		switch l.InfoBlock {
		case InfoNone:
			if l.DataOffset != 0 || l.DataSize != guestSize {
				t.Fatalf("no info block but data range [%d, +%d)", l.DataOffset, l.DataSize)
			}
		case InfoPFNRAM, InfoPFNPMEM, InfoDevDAX:
			if l.DataOffset < label.InfoBlockOffset+label.InfoBlockSize {
				t.Fatalf("%s: data at %d overlaps the info block", l.InfoBlock, l.DataOffset)
			}
		default:
			t.Fatalf("info block kind %q", l.InfoBlock)
		}
	})
}

const maxProbeFuzzPrefix = 256

func mustImageInfoBlock(tb testing.TB) []byte {
	ib, err := ImageInfoBlock(16 * MiB)
	if err != nil {
		tb.Fatal(err)
	}
	b, _ := ib.MarshalBinary()
	return b
}

// TestProbeImageLayoutSeeds: the fixed-up seeds of FuzzProbeImageLayout
// are accepted as the info blocks they are (the target reaches the
// accepting paths, not only refusals).
func TestProbeImageLayoutSeeds(t *testing.T) {
	for _, c := range []struct {
		p    label.InfoParams
		want string
	}{
		{label.InfoParams{Mode: label.ModeFSDAX, Size: 64 * MiB}, InfoPFNPMEM},
		{label.InfoParams{Mode: label.ModeDevDAX, Size: 64 * MiB}, InfoDevDAX},
	} {
		ib, err := label.NewInfoBlock(c.p)
		if err != nil {
			t.Fatal(err)
		}
		enc, _ := ib.MarshalBinary()
		head := append(make([]byte, label.InfoBlockSize), enc...)
		l, _, err := probeImageLayout(bytes.NewReader(head), c.p.Size)
		if err != nil || l.InfoBlock != c.want {
			t.Errorf("%s: %+v, %v; want %s", c.p.Mode, l, err, c.want)
		}
	}
}

// TestProbeImageLayoutDataoffInReserve: an info block whose data starts
// inside the first 8 KiB (the info block's own reserve) is refused; it
// used to be accepted with a data range over the info block itself
// (found by FuzzProbeImageLayout).
func TestProbeImageLayoutDataoffInReserve(t *testing.T) {
	for _, off := range []uint64{0, 4096} {
		var ib label.InfoBlock
		copy(ib.Signature[:], "NVDIMM_PFN_INFO\x00")
		ib.VersionMajor, ib.VersionMinor = 1, 0
		ib.Mode, ib.DataOff, ib.NPFNs = label.PFNModeRAM, off, 1
		ib.Checksum = ib.ComputeChecksum()
		enc, _ := ib.MarshalBinary()
		head := append(make([]byte, label.InfoBlockSize), enc...)
		l, _, err := probeImageLayout(bytes.NewReader(head), 16*MiB)
		if err == nil || !strings.Contains(err.Error(), "reserves for the info block") {
			t.Errorf("dataoff %d: %+v, %v", off, l, err)
		}
	}
}
