package label

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Reference cookies of QEMU's single-DIMM interleave sets (confirmed on
// guests through the region's set_cookie).
var (
	slot0Cookies = Cookies{V11: 0x002468ac00123456, V12: 0x00ba90120012b4dc}
	slot1Cookies = Cookies{V11: 0x002468ae00123457, V12: 0x00ba901c0012b4dd}
)

type readLabels []struct {
	Dev   string `json:"dev"`
	Index []struct {
		Signature string `json:"signature"`
		Major     uint16 `json:"major"`
		Minor     uint16 `json:"minor"`
		LabelSize int    `json:"labelsize"`
		Seq       uint32 `json:"seq"`
		NSlot     uint32 `json:"nslot"`
	} `json:"index"`
	Label []struct {
		UUID       string `json:"uuid"`
		Name       string `json:"name"`
		Slot       uint32 `json:"slot"`
		Position   uint16 `json:"position"`
		NLabel     uint16 `json:"nlabel"`
		Flags      uint32 `json:"flags"`
		ISetCookie uint64 `json:"isetcookie"`
		LBASize    uint64 `json:"lbasize"`
		DPA        uint64 `json:"dpa"`
		RawSize    uint64 `json:"rawsize"`
	} `json:"label"`
}

type ndctlList struct {
	Regions []struct {
		Size       uint64 `json:"size"`
		ISetID     uint64 `json:"iset_id"`
		Namespaces []struct {
			Dev  string `json:"dev"`
			Mode string `json:"mode"`
			Size uint64 `json:"size"`
			UUID string `json:"uuid"`
			Name string `json:"name"`
		} `json:"namespaces"`
	} `json:"regions"`
}

func readJSON(t *testing.T, path string, v any) bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return true
}

// TestGuestCaptures parses every label area a real guest wrote (each
// testdata directory with label.bin) and compares it with what the
// guest's ndctl reported; both ndctl outputs are required.
func TestGuestCaptures(t *testing.T) {
	dirs, _ := filepath.Glob("testdata/*/label.bin")
	if len(dirs) == 0 {
		t.Fatal("no guest captures in testdata")
	}
	for _, lb := range dirs {
		dir := filepath.Dir(lb)
		t.Run(filepath.Base(dir), func(t *testing.T) { checkCapture(t, dir) })
	}
}

func checkCapture(t *testing.T, dir string) {
	raw, err := os.ReadFile(filepath.Join(dir, "label.bin"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := ParseBytes(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !a.Labelled {
		t.Fatalf("not labelled: %v", a.Probe)
	}
	// Every capture carries what the guest's ndctl read from the DIMM;
	// without it the decode below would be compared with nothing.
	var rl readLabels
	if !readJSON(t, filepath.Join(dir, "read-labels-nmem0.json"), &rl) {
		t.Fatalf("%s: read-labels-nmem0.json is missing: a capture needs the guest's ndctl read-labels output", dir)
	}
	if len(rl) != 1 || len(rl[0].Index) != 2 {
		t.Fatalf("%s: read-labels-nmem0.json: want one DIMM with two index blocks, got %d DIMM(s)", dir, len(rl))
	}
	{
		d := rl[0]
		for i, ix := range d.Index {
			x := a.Blocks[i].Index
			if a.Blocks[i].Err != nil {
				t.Errorf("index %d invalid: %v", i, a.Blocks[i].Err)
			}
			if x.Seq != ix.Seq || x.NSlot != ix.NSlot || x.Major != ix.Major || x.Minor != ix.Minor || x.LabelSize() != ix.LabelSize {
				t.Errorf("index %d: seq %d nslot %d v%d.%d ls %d; ndctl says %+v", i, x.Seq, x.NSlot, x.Major, x.Minor, x.LabelSize(), ix)
			}
		}
		for _, l := range d.Label {
			s := a.DecodeSlot(l.Slot)
			if s.Err != nil {
				t.Errorf("slot %d: %v", l.Slot, s.Err)
				continue
			}
			g := s.Label
			if g.UUID.String() != l.UUID || g.NameString() != l.Name || g.Position != l.Position || g.NLabel != l.NLabel ||
				g.Flags != l.Flags || g.ISetCookie != l.ISetCookie || g.LBASize != l.LBASize || g.DPA != l.DPA || g.RawSize != l.RawSize {
				t.Errorf("slot %d: decoded %+v, ndctl says %+v", l.Slot, g, l)
			}
		}
	}
	var nl ndctlList
	if !readJSON(t, filepath.Join(dir, "ndctl-list.json"), &nl) {
		t.Fatalf("%s: ndctl-list.json is missing: a capture needs the guest's ndctl list output", dir)
	}
	if len(nl.Regions) != 1 {
		t.Fatalf("%s: ndctl-list.json: want one region, got %d", dir, len(nl.Regions))
	}
	reg := nl.Regions[0]
	got := a.Namespaces()
	want := 0
	for _, n := range reg.Namespaces {
		if n.Size == 0 {
			continue // the seed namespace
		}
		want++
		var ns *Namespace
		for i := range got {
			if got[i].Name == n.Name {
				ns = &got[i]
			}
		}
		if ns == nil {
			t.Errorf("guest namespace %s (%q) not found; parsed %v", n.Dev, n.Name, got)
			continue
		}
		if ns.Size > reg.Size || ns.Size < n.Size {
			t.Errorf("%s: label size %d, guest size %d, region %d", n.Dev, ns.Size, n.Size, reg.Size)
		}
		for _, s := range ns.Labels {
			if s.Label.ISetCookie != reg.ISetID {
				t.Errorf("%s: cookie %#x, guest region iset_id %#x", n.Dev, s.Label.ISetCookie, reg.ISetID)
			}
		}
		switch n.Mode {
		case ModeRaw:
			if ns.UUID.String() != n.UUID || ns.Size != n.Size {
				t.Errorf("%s: raw namespace %s/%d, guest %s/%d", n.Dev, ns.UUID, ns.Size, n.UUID, n.Size)
			}
		case ModeFSDAX, ModeDevDAX:
			ibPath := filepath.Join(dir, "infoblock-"+n.Name+".bin")
			ibRaw, err := os.ReadFile(ibPath)
			if os.IsNotExist(err) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			var ib InfoBlock
			if err := ib.UnmarshalBinary(ibRaw); err != nil {
				t.Fatal(err)
			}
			if ib.Kind() != n.Mode || ib.UUID.String() != n.UUID || ib.ParentUUID != ns.UUID || ib.NPFNs*4096 != n.Size {
				t.Errorf("%s: info block %s uuid %s parent %s npfns %d; guest %s uuid %s size %d, label uuid %s",
					n.Dev, ib.Kind(), ib.UUID, ib.ParentUUID, ib.NPFNs, n.Mode, n.UUID, n.Size, ns.UUID)
			}
			if err := ib.Validate(ns.Size, ns.UUID); err != nil {
				t.Errorf("%s: %v", n.Dev, err)
			}
		}
	}
	if len(got) != want {
		t.Errorf("parsed %d namespaces %v, guest lists %d", len(got), got, want)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "set_cookie.txt")); err == nil {
		for _, f := range strings.Fields(string(b)) {
			if v, err := strconv.ParseUint(f, 0, 64); err == nil && v != reg.ISetID && v != slot0Cookies.V12 {
				t.Errorf("set_cookie %#x is neither the region iset_id nor the v1.2 cookie", v)
			}
		}
	}
	// A guest-written area is clean for its own slot.
	probs := Check(a, CheckOptions{Cookies: &slot0Cookies, DIMMSize: reg.Size})
	for _, p := range probs {
		if p.Severity != SevInfo {
			t.Errorf("check: %s", p)
		}
	}
}

// TestGoldenLabelBinExact reproduces the guest's v1.1 area byte for byte:
// ndctl init-labels, then the kernel's create of fsdax namespace "db".
func TestGoldenLabelBinExact(t *testing.T) {
	want, err := os.ReadFile("testdata/golden-v1.1-fsdax/label.bin")
	if err != nil {
		t.Fatal(err)
	}
	dev := &memDev{b: make([]byte, len(want))}
	e, err := NewEditor(dev, int64(len(want)))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Init(InitOptions{Version: V11}); err != nil {
		t.Fatal(err)
	}
	u, _ := ParseUUID("c3274052-a122-484e-9686-25c4a2f6f58d")
	ns, err := e.Create(NamespaceSpec{UUID: u, Name: "db", Mode: ModeFSDAX, DIMMSize: 534773760, Cookies: slot0Cookies})
	if err != nil {
		t.Fatal(err)
	}
	if ns.Size != 520093696 || ns.DPA() != 0 {
		t.Errorf("placed %d bytes at %d, want 520093696 at 0", ns.Size, ns.DPA())
	}
	if !bytes.Equal(dev.b, want) {
		for i := range want {
			if dev.b[i] != want[i] {
				t.Fatalf("first difference at offset %#x: got %#x want %#x", i, dev.b[i], want[i])
			}
		}
	}
}

// memDev is an in-memory Device.
type memDev struct{ b []byte }

func (m *memDev) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m.b)) {
		return 0, os.ErrInvalid
	}
	return copy(p, m.b[off:]), nil
}

func (m *memDev) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m.b)) {
		return 0, os.ErrInvalid
	}
	return copy(m.b[off:], p), nil
}
