//go:build integration

package qemu

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// TestSmoke boots a guest with one NVDIMM and checks the guest userland and
// the NFIT table are there.
func TestSmoke(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	back := sparseFile(t, filepath.Join(dir, "pmem0.img"), 256<<20)
	res := mustBoot(t, &VM{
		NVDIMMs: []NVDIMM{{Path: back, LabelSize: 128 << 10, Slot: 0}},
		Script: `
ndctl version
cat /sys/firmware/acpi/tables/NFIT > /host/nfit.bin
ndctl list -D > /host/dimms.json
`,
	})
	if !strings.Contains(res.Output, "76") {
		t.Errorf("ndctl version not in guest output:\n%s", res.Output)
	}
	nfit, err := res.Read("nfit.bin")
	if err != nil {
		t.Fatal(err)
	}
	if len(nfit) < 40 || !bytes.Equal(nfit[:4], []byte("NFIT")) {
		t.Fatalf("guest NFIT: %d bytes, signature %q", len(nfit), nfit[:min(4, len(nfit))])
	}
	dimms, _ := res.Read("dimms.json")
	if !strings.Contains(string(dimms), "nmem0") {
		t.Errorf("ndctl list -D shows no nmem0: %s", dimms)
	}
}
