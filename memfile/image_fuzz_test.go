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
func FuzzProbeImageLayout(f *testing.F) {
	ib, err := ImageInfoBlock(16 * MiB)
	if err != nil {
		f.Fatal(err)
	}
	good, _ := ib.MarshalBinary()
	f.Add(good, uint64(16*MiB))
	pm, _ := label.NewInfoBlock(label.InfoParams{Mode: label.ModeFSDAX, Size: 64 * MiB})
	raw, _ := pm.MarshalBinary()
	f.Add(raw, uint64(64*MiB))
	dx, _ := label.NewInfoBlock(label.InfoParams{Mode: label.ModeDevDAX, Size: 64 * MiB})
	raw, _ = dx.MarshalBinary()
	f.Add(raw, uint64(64*MiB))
	f.Add(make([]byte, label.InfoBlockSize), uint64(2*MiB))
	f.Add(good[:100], uint64(8192))
	f.Fuzz(func(t *testing.T, block []byte, guestSize uint64) {
		guestSize = guestSize % (1 << 40)
		// The file: 4 KiB of zeros, then the fuzzed block (padded).
		head := make([]byte, 2*label.InfoBlockSize)
		copy(head[label.InfoBlockSize:], block)
		r := bytes.NewReader(head)
		l, _, err := probeImageLayout(r, guestSize)
		if err != nil {
			return
		}
		if l.DataOffset > guestSize || l.DataSize > guestSize-l.DataOffset {
			t.Fatalf("data range [%d, +%d) outside the %d-byte namespace", l.DataOffset, l.DataSize, guestSize)
		}
		switch l.InfoBlock {
		case InfoNone, InfoPFNRAM, InfoPFNPMEM, InfoDevDAX:
		default:
			t.Fatalf("info block kind %q", l.InfoBlock)
		}
	})
}
