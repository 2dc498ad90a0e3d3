//go:build integration

package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nvdimm-backend/nvdimm-backend/qmp"
)

var capture = flag.Bool("capture", false, "write golden captures into acpi/testdata and label/testdata")

// nfitCase is one guest topology whose NFIT table is checked (and captured).
type nfitCase struct {
	name        string
	persistence string
	sizes       []uint64 // backing sizes (data part; a label area is added)
	labels      bool     // give each DIMM a 128 KiB label area
	unarmed     []bool
	nodes       []int // proximity domain per DIMM (needs two NUMA nodes)
}

var nfitCases = []nfitCase{
	{name: "one-dimm", sizes: []uint64{256 << 20}, labels: true},
	{name: "two-dimm", sizes: []uint64{256 << 20, 512 << 20}, labels: true},
	{name: "four-dimm", sizes: []uint64{128 << 20, 256 << 20, 384 << 20, 512 << 20}, labels: true, nodes: []int{0, 1, 0, 1}},
	{name: "unarmed", sizes: []uint64{256 << 20}, unarmed: []bool{true}},
	{name: "persistence-cpu", persistence: "cpu", sizes: []uint64{256 << 20, 256 << 20}, labels: true},
}

// Topology is the QEMU side of a capture: what QEMU was asked for and what
// query-memory-devices reported, with the DIMMs in the NFIT table's order.
type Topology struct {
	QEMU        string       `json:"qemu"`
	Machine     string       `json:"machine"`
	Persistence string       `json:"persistence"`
	Dimms       []TopoDimm   `json:"dimms"`
	Regions     []TopoRegion `json:"regions"`
}

// TopoDimm is one NVDIMM as QEMU placed it.
type TopoDimm struct {
	ID        string `json:"id"`
	Slot      int    `json:"slot"`
	Addr      uint64 `json:"addr"`
	Size      uint64 `json:"size"`
	Node      int    `json:"node"`
	Unarmed   bool   `json:"unarmed"`
	LabelSize uint64 `json:"label_size"`
}

// TopoRegion is one guest region with its set_cookie as the guest reported it.
type TopoRegion struct {
	Region    string `json:"region"`
	Slot      int    `json:"slot"`
	Addr      uint64 `json:"addr"`
	SetCookie string `json:"set_cookie"`
}

type memDevice struct {
	Type string `json:"type"`
	Data struct {
		ID   string `json:"id"`
		Addr uint64 `json:"addr"`
		Size uint64 `json:"size"`
		Slot int    `json:"slot"`
		Node int    `json:"node"`
	} `json:"data"`
}

// queryMemoryDevices connects to a guest's QMP socket (retrying while QEMU
// starts) and returns query-memory-devices and the QEMU version.
func queryMemoryDevices(ctx context.Context, sock string) ([]memDevice, string, error) {
	var c *qmp.Client
	var err error
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err = qmp.Dial(ctx, sock)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return nil, "", fmt.Errorf("qmp %s: %w", sock, err)
	}
	defer c.Close()
	var devs []memDevice
	if err := c.Execute(ctx, "query-memory-devices", nil, &devs); err != nil {
		return nil, "", err
	}
	var ver struct {
		QEMU struct{ Major, Minor, Micro int } `json:"qemu"`
	}
	if err := c.Execute(ctx, "query-version", nil, &ver); err != nil {
		return nil, "", err
	}
	return devs, fmt.Sprintf("%d.%d.%d", ver.QEMU.Major, ver.QEMU.Minor, ver.QEMU.Micro), nil
}

const nfitGuestScript = `
cat /sys/firmware/acpi/tables/NFIT > /host/nfit.bin
ndctl list -NRDi > /host/ndctl-list.json || true
: > /host/regions.txt
for r in /sys/bus/nd/devices/region*; do
  [ -e "$r/resource" ] || continue
  echo "$(basename $r) $(cat $r/resource) $(cat $r/set_cookie 2>/dev/null || echo none)" >> /host/regions.txt
done
if [ -x /host/nvdimm-backend ] && /host/nvdimm-backend nfit --help >/dev/null 2>&1; then
  /host/nvdimm-backend nfit dump /host/nfit.bin > /host/nfit-dump.txt 2>&1 && echo ok > /host/nfit-dump.rc || echo fail > /host/nfit-dump.rc
fi
# Stay up until the host has asked QEMU for its memory devices.
i=0; while [ ! -e /host/queried ]; do sleep 0.2; i=$((i+1)); [ $i -lt 1500 ]; done
`

// TestNFIT boots guests with 1, 2 and 4 NVDIMMs (different sizes, unarmed,
// nvdimm-persistence=cpu) and checks the guest's NFIT against QEMU's
// topology, the region cookies against Linux's formula, and, once the acpi
// verbs exist, against `nfit build` byte for byte and `nfit dump` in the guest.
func TestNFIT(t *testing.T) {
	t.Parallel()
	for _, tc := range nfitCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			runNFITCase(t, tc)
		})
	}
}

func runNFITCase(t *testing.T, tc nfitCase) {
	dir := t.TempDir()
	vm := &VM{Persistence: tc.persistence, QMPSocket: filepath.Join(dir, "qmp.sock"), Script: nfitGuestScript}
	if tc.nodes != nil {
		vm.ExtraArgs = []string{"-object", "memory-backend-ram,id=ram0,size=512M",
			"-numa", "node,nodeid=0,memdev=ram0", "-numa", "node,nodeid=1"}
	}
	var label uint64
	if tc.labels {
		label = 128 << 10
	}
	for i, sz := range tc.sizes {
		d := NVDIMM{Path: sparseFile(t, filepath.Join(dir, fmt.Sprintf("pmem%d.img", i)), int64(sz+label)), LabelSize: label, Slot: i}
		if tc.unarmed != nil && tc.unarmed[i] {
			d.Unarmed = true
		}
		if tc.nodes != nil {
			d.Node = tc.nodes[i]
		}
		vm.NVDIMMs = append(vm.NVDIMMs, d)
	}
	vm.Files = map[string]string{"nvdimm-backend": ourBinary(t)}
	var devs []memDevice
	var qemuVer string
	vm.Started = func(ctx context.Context, vm *VM) error {
		// The guest waits for this marker, so QEMU cannot exit under the
		// query however slowly this side runs.
		defer os.WriteFile(filepath.Join(vm.Share, "queried"), nil, 0o644) //nolint:errcheck
		var err error
		devs, qemuVer, err = queryMemoryDevices(ctx, vm.QMPSocket)
		return err
	}
	res := mustBoot(t, vm)

	tbl, err := res.Read("nfit.bin")
	if err != nil {
		t.Fatal(err)
	}
	spas, err := parseNFITSPAs(tbl)
	if err != nil {
		t.Fatalf("guest NFIT: %v", err)
	}
	if len(spas) != len(tc.sizes) || len(devs) != len(tc.sizes) {
		t.Fatalf("guest NFIT has %d SPA ranges, QEMU reports %d memory devices, want %d", len(spas), len(devs), len(tc.sizes))
	}
	topo := Topology{QEMU: qemuVer, Machine: "q35", Persistence: tc.persistence}
	for _, s := range spas {
		var dev *memDevice
		for i := range devs {
			if devs[i].Data.Addr == s.base {
				dev = &devs[i]
			}
		}
		if dev == nil {
			t.Fatalf("NFIT SPA range at %#x matches no QEMU memory device %+v", s.base, devs)
		}
		slot := dev.Data.Slot
		if s.size != dev.Data.Size {
			t.Errorf("slot %d: NFIT SPA length %#x, QEMU size %#x", slot, s.size, dev.Data.Size)
		}
		if want := uint32(slot + 1); s.handle != want {
			t.Errorf("slot %d: NFIT device handle %d, want %d", slot, s.handle, want)
		}
		if s.proximity != uint32(dev.Data.Node) {
			t.Errorf("slot %d: NFIT proximity %d, QEMU node %d", slot, s.proximity, dev.Data.Node)
		}
		unarmed := vm.NVDIMMs[slot].Unarmed
		if got := s.flags&0x8 != 0; got != unarmed {
			t.Errorf("slot %d: NFIT not-armed flag %v, want %v", slot, got, unarmed)
		}
		if want := (tc.sizes[slot]) &^ (2<<20 - 1); dev.Data.Size != want {
			t.Errorf("slot %d: QEMU size %#x, want %#x", slot, dev.Data.Size, want)
		}
		topo.Dimms = append(topo.Dimms, TopoDimm{ID: dev.Data.ID, Slot: slot, Addr: s.base, Size: s.size,
			Node: dev.Data.Node, Unarmed: unarmed, LabelSize: vm.NVDIMMs[slot].LabelSize})
	}
	if tc.nodes != nil && spas[0].proximity == spas[1].proximity && spas[1].proximity == spas[2].proximity {
		t.Errorf("four-dimm: expected differing proximity domains, got %+v", spas)
	}
	hasCaps := bytes.Contains(tbl[40:], []byte{7, 0, 16, 0})
	if hasCaps != (tc.persistence != "") {
		t.Errorf("platform capabilities structure present=%v with persistence %q", hasCaps, tc.persistence)
	}

	// Regions and their cookies.
	regs, _ := res.Read("regions.txt")
	for _, l := range strings.Split(strings.TrimSpace(string(regs)), "\n") {
		f := strings.Fields(l)
		if len(f) != 3 {
			t.Fatalf("regions.txt line %q", l)
		}
		addr, err := strconv.ParseUint(f[1], 0, 64)
		if err != nil {
			t.Fatalf("regions.txt %q: %v", l, err)
		}
		slot := -1
		for _, d := range topo.Dimms {
			if d.Addr == addr {
				slot = d.Slot
			}
		}
		if slot < 0 {
			t.Fatalf("region %s at %#x matches no DIMM", f[0], addr)
		}
		c1, c2 := qemuCookies(slot)
		want := c2 // blank label area: v1.2 cookie
		if vm.NVDIMMs[slot].LabelSize == 0 {
			want = c1
		}
		got, err := strconv.ParseUint(f[2], 0, 64)
		if err != nil || got != want {
			t.Errorf("%s (slot %d): set_cookie %s, want %#x", f[0], slot, f[2], want)
		}
		topo.Regions = append(topo.Regions, TopoRegion{Region: f[0], Slot: slot, Addr: addr, SetCookie: f[2]})
	}
	sort.Slice(topo.Regions, func(i, j int) bool { return topo.Regions[i].Addr < topo.Regions[j].Addr })
	if len(topo.Regions) != len(tc.sizes) {
		t.Errorf("guest shows %d regions, want %d", len(topo.Regions), len(tc.sizes))
	}

	// Our own tools, once they exist.
	if rc, err := res.Read("nfit-dump.rc"); err == nil {
		out, _ := res.Read("nfit-dump.txt")
		if strings.TrimSpace(string(rc)) != "ok" {
			t.Errorf("nfit dump in the guest failed:\n%s", out)
		}
		// The dump shows the cookies Linux derives: the guest's set_cookie
		// values must be among them.
		for _, r := range topo.Regions {
			v, _ := strconv.ParseUint(r.SetCookie, 0, 64)
			if !strings.Contains(strings.ToLower(string(out)), fmt.Sprintf("%#x", v)) && !strings.Contains(strings.ToLower(string(out)), fmt.Sprintf("%#016x", v)) {
				t.Errorf("in-guest nfit dump does not show %s's set_cookie %s:\n%s", r.Region, r.SetCookie, out)
			}
		}
	}
	checkNFITBuild(t, dir, topo, tbl)

	if *capture {
		writeNFITCapture(t, tc.name, tbl, topo)
	}
}

// checkNFITBuild runs `nfit build` for the captured topology and compares.
func checkNFITBuild(t *testing.T, dir string, topo Topology, guest []byte) {
	topoPath := filepath.Join(dir, "topology.json")
	b, _ := json.MarshalIndent(topo, "", "  ")
	if err := os.WriteFile(topoPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "built.bin")
	if _, stderr, err := hostTry(t, "nfit", "build", "--qemu-topology", topoPath, "-o", out); err != nil {
		t.Errorf("nfit build --qemu-topology %s: %v: %s", topoPath, err, stderr)
		return
	}
	built, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(built, guest) {
		for i := 0; i < min(len(built), len(guest)); i++ {
			if built[i] != guest[i] {
				t.Errorf("nfit build differs from the guest's NFIT at offset %d (built %#x, guest %#x); lengths %d/%d", i, built[i], guest[i], len(built), len(guest))
				return
			}
		}
		t.Errorf("nfit build: %d bytes, guest %d bytes", len(built), len(guest))
	}
}

func writeNFITCapture(t *testing.T, name string, tbl []byte, topo Topology) {
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(root, "acpi", "testdata")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, "qemu-"+name+".bin"), tbl, 0o644); err != nil {
		t.Fatal(err)
	}
	b, _ := json.MarshalIndent(topo, "", "  ")
	if err := os.WriteFile(filepath.Join(dst, "qemu-"+name+".json"), append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("captured acpi/testdata/qemu-%s.{bin,json}", name)
}
