package acpi

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// goldenVM is the description the integration suite writes beside each
// captured table.
type goldenVM struct {
	QEMU        string `json:"qemu"`
	Persistence string `json:"persistence"`
	DIMMs       []struct {
		QEMUDIMM
		ID        string `json:"id"`
		LabelSize uint64 `json:"label_size"`
	} `json:"dimms"`
	Regions []struct {
		Region    string `json:"region"`
		Slot      int    `json:"slot"`
		Addr      uint64 `json:"addr"`
		SetCookie string `json:"set_cookie"`
	} `json:"regions"`
}

func (g goldenVM) topology() QEMUTopology {
	t := QEMUTopology{Persistence: g.Persistence}
	for _, d := range g.DIMMs {
		t.DIMMs = append(t.DIMMs, d.QEMUDIMM)
	}
	return t
}

func goldenTables(t *testing.T) []string {
	t.Helper()
	bins, err := filepath.Glob("testdata/*.bin")
	if err != nil {
		t.Fatal(err)
	}
	if len(bins) == 0 {
		t.Fatal("no golden tables in testdata")
	}
	return bins
}

func loadGolden(t *testing.T, bin string) ([]byte, goldenVM) {
	t.Helper()
	raw, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	j, err := os.ReadFile(strings.TrimSuffix(bin, ".bin") + ".json")
	if err != nil {
		t.Fatalf("golden table without its .json: %v", err)
	}
	var g goldenVM
	if err := json.Unmarshal(j, &g); err != nil {
		t.Fatal(err)
	}
	return raw, g
}

// TestGoldenGuestTables: every captured table decodes to its VM's DIMMs
// (in QEMU's order), is accepted by the Linux rules, rebuilds byte for
// byte from the topology, and yields the guest's set_cookie values.
func TestGoldenGuestTables(t *testing.T) {
	for _, bin := range goldenTables(t) {
		t.Run(strings.TrimSuffix(filepath.Base(bin), ".bin"), func(t *testing.T) {
			raw, g := loadGolden(t, bin)
			want := g.topology()
			n, err := ParseNFIT(raw)
			if err != nil {
				t.Fatal(err)
			}
			if !n.ChecksumOK {
				t.Error("checksum of the guest's table does not verify")
			}
			for _, p := range n.Validate() {
				if p.Severity != SeverityInfo {
					t.Errorf("guest table: %s", p)
				}
			}
			for _, s := range n.Structures {
				if r, ok := s.(*RawStructure); ok {
					t.Errorf("structure type %d not decoded: %q", r.StructType, r.Problem)
				}
			}
			got, err := TopologyFromNFIT(n)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("topology from table = %+v, want %+v", got, want)
			}
			built, err := BuildQEMU(want)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(built, raw) {
				t.Errorf("built table differs from the guest's: %s", firstDiff(built, raw))
			}
			re, err := n.MarshalBinary()
			if err != nil || !bytes.Equal(re, raw) {
				t.Errorf("decode/encode round trip differs (err %v)", err)
			}
			if diffs, err := CompareQEMU(n, want); err != nil || len(diffs) != 0 {
				t.Errorf("CompareQEMU: err %v, diffs %v", err, diffs)
			}
			cookies, err := Cookies(n)
			if err != nil {
				t.Fatal(err)
			}
			if len(cookies) != len(want.DIMMs) {
				t.Errorf("%d cookie sets, want one per DIMM (%d)", len(cookies), len(want.DIMMs))
			}
			if len(g.Regions) == 0 {
				t.Error("golden VM lists no regions")
			}
			for _, r := range g.Regions {
				v, err := strconv.ParseUint(r.SetCookie, 0, 64)
				if err != nil {
					t.Fatalf("%s set_cookie %q: %v", r.Region, r.SetCookie, err)
				}
				c, ok := cookieForSlot(cookies, r.Slot)
				if !ok {
					t.Errorf("%s: no cookie for slot %d", r.Region, r.Slot)
					continue
				}
				if v != c.V11 && v != c.V12 {
					t.Errorf("%s (slot %d): guest set_cookie %#x, computed v1.1 %#x v1.2 %#x", r.Region, r.Slot, v, c.V11, c.V12)
				}
				v11, v12 := QEMUSlotCookies(r.Slot)
				if v11 != c.V11 || v12 != c.V12 {
					t.Errorf("slot %d: QEMUSlotCookies %#x/%#x differ from the table's %#x/%#x", r.Slot, v11, v12, c.V11, c.V12)
				}
			}
		})
	}
}

func cookieForSlot(cs []SetCookie, slot int) (SetCookie, bool) {
	for _, c := range cs {
		if c.SPAIndex == qemuSPAIndex(slot) {
			return c, true
		}
	}
	return SetCookie{}, false
}

func firstDiff(a, b []byte) string {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return "first difference at offset " + strconv.Itoa(i) + ": built " + strconv.Itoa(int(a[i])) + ", guest " + strconv.Itoa(int(b[i]))
		}
	}
	return "lengths " + strconv.Itoa(len(a)) + " and " + strconv.Itoa(len(b))
}

func TestTopologyFromMemoryDevices(t *testing.T) {
	b, err := os.ReadFile("testdata/qmp-query-memory-devices.json")
	if err != nil {
		t.Fatal(err)
	}
	got, err := TopologyFromMemoryDevices(b)
	if err != nil {
		t.Fatal(err)
	}
	want := QEMUTopology{DIMMs: []QEMUDIMM{{Slot: 0, Addr: 0x100000000, Size: 534773760, Node: 0}}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	bare := `[{"type":"virtio-pmem","data":{"memaddr":1,"size":2}},{"type":"nvdimm","data":{"addr":4294967296,"size":268435456,"slot":3,"node":1}}]`
	got, err = TopologyFromMemoryDevices([]byte(bare))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.DIMMs) != 1 || got.DIMMs[0].Slot != 3 || got.DIMMs[0].Node != 1 {
		t.Errorf("bare array: got %+v", got)
	}
	if _, err := TopologyFromMemoryDevices([]byte(`{"return":[{"type":"nvdimm","data":{"size":1}}]}`)); err == nil {
		t.Error("nvdimm without addr/slot: want error")
	}
}
