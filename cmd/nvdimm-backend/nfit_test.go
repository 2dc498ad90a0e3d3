package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runNFITCLI(t *testing.T, stdin []byte, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetIn(bytes.NewReader(stdin))
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

const goldenDir = "../../acpi/testdata"

func TestCLINFITBuildDumpVerify(t *testing.T) {
	dir := t.TempDir()
	topo := filepath.Join(dir, "t.json")
	if err := os.WriteFile(topo, []byte(`{"persistence":"","dimms":[{"slot":0,"addr":4294967296,"size":268435456,"node":0,"unarmed":true}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "nfit.bin")
	stdout, err := runNFITCLI(t, nil, "nfit", "build", "--qemu-topology", topo, "-o", out)
	if err != nil || !strings.Contains(stdout, "wrote 224-byte NFIT") {
		t.Fatalf("build: %v\n%s", err, stdout)
	}
	got, _ := os.ReadFile(out)
	want, err := os.ReadFile(filepath.Join(goldenDir, "qemu-unarmed.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("built table differs from the captured unarmed table")
	}

	stdout, err = runNFITCLI(t, nil, "nfit", "dump", out, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Header     map[string]any   `json:"header"`
		Structures []map[string]any `json:"structures"`
		Cookies    []struct {
			SPAIndex int    `json:"spa_index"`
			V11      string `json:"v1_1"`
			V12      string `json:"v1_2"`
		} `json:"cookies"`
	}
	if err := json.Unmarshal([]byte(stdout), &d); err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	if d.Header["checksum_ok"] != true || len(d.Structures) != 3 || d.Structures[0]["type"] != "spa" || d.Structures[0]["guid"] != "66f0d379-b4f3-4074-ac43-0d3318b78cdb" ||
		d.Structures[1]["type"] != "memdev" || d.Structures[2]["type"] != "dcr" || len(d.Cookies) != 1 || d.Cookies[0].SPAIndex != 2 || d.Cookies[0].V12 != "0x00ba90120012b4dc" {
		t.Errorf("dump --json: %s", stdout)
	}

	// dump reads standard input with "-".
	stdout, err = runNFITCLI(t, want, "nfit", "dump", "-")
	if err != nil || !strings.Contains(stdout, "Device Handle:") || !strings.Contains(stdout, "not-armed") {
		t.Errorf("dump -: %v\n%s", err, stdout)
	}

	stdout, err = runNFITCLI(t, nil, "nfit", "verify", out, "--qemu-topology", topo)
	if err != nil || !strings.Contains(stdout, "Linux accepts") || !strings.Contains(stdout, "identical") {
		t.Errorf("verify: %v\n%s", err, stdout)
	}
	// Against the harness's 2-DIMM description: differs, exits non-zero.
	stdout, err = runNFITCLI(t, nil, "nfit", "verify", out, "--qemu-topology", filepath.Join(goldenDir, "qemu-two-dimm.json"), "--json")
	if err == nil {
		t.Error("verify against another topology: want an error")
	}
	var v struct {
		Accepted        bool `json:"accepted"`
		MatchesTopology bool `json:"matches_topology"`
		Differences     []struct {
			Field string `json:"field"`
		} `json:"differences"`
	}
	if json.Unmarshal([]byte(stdout), &v) != nil || !v.Accepted || v.MatchesTopology || len(v.Differences) == 0 {
		t.Errorf("verify --json: %s", stdout)
	}

	// A table Linux rejects: SPA range of 60 bytes.
	bad := append([]byte(nil), want...)
	bad = append(bad[:40+56], append([]byte{0, 0, 0, 0}, bad[40+56:]...)...)
	bad[42] = 60
	bad[4] = byte(len(bad))
	badPath := filepath.Join(dir, "bad.bin")
	if err := os.WriteFile(badPath, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	stdout, err = runNFITCLI(t, nil, "nfit", "verify", badPath)
	if err == nil || !strings.Contains(stdout, "REJECTS") || !strings.Contains(stdout, "exactly 56") {
		t.Errorf("verify bad: %v\n%s", err, stdout)
	}

	if _, err := runNFITCLI(t, nil, "nfit", "dump", filepath.Join(dir, "missing")); err == nil {
		t.Error("dump of a missing file: want error")
	}
	if _, err := runNFITCLI(t, []byte("NFIT"), "nfit", "dump", "-"); err == nil || !strings.Contains(err.Error(), "standard input") {
		t.Errorf("dump of a short table: %v", err)
	}
}

// TestCLINFITBuildRefusesNonQEMUTopology: build refuses a topology QEMU
// can never present (naming the file, DIMM and field) and writes nothing;
// one that is only badly aligned for Linux is built with warnings on
// standard error and in the JSON.
func TestCLINFITBuildRefusesNonQEMUTopology(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "nfit.bin")
	for _, c := range []struct{ topo, want string }{
		{`{"dimms":[{"slot":0,"addr":1,"size":3}]}`, "dimms[0] (slot 0): addr: 0x1 is not a multiple of 4 KiB"},
		{`{"dimms":[{"slot":0,"addr":4294967296,"size":3}]}`, "dimms[0] (slot 0): size: 3 is not a multiple of 4 KiB"},
		{`{"dimms":[{"slot":300,"addr":4294967296,"size":16777216}]}`, "dimms[0] (slot 300): slot: 300 is beyond"},
		{`{"dimms":[{"slot":0,"addr":4294967296,"size":16777216},{"slot":0,"addr":8589934592,"size":16777216}]}`, "dimms[1]: slot 0 used twice"},
		{`{"dimms":[{"slot":0,"addr":4294967296,"size":33554432},{"slot":1,"addr":4311744512,"size":16777216}]}`, "dimms[1] (slot 1) overlaps dimms[0] (slot 0)"},
	} {
		topo := filepath.Join(dir, "t.json")
		if err := os.WriteFile(topo, []byte(c.topo), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := runNFITCLI(t, nil, "nfit", "build", "--qemu-topology", topo, "-o", out)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), topo) {
			t.Errorf("build %s: err %v, want one naming %s and %q", c.topo, err, topo, c.want)
		}
		if _, err := os.Stat(out); err == nil {
			t.Fatalf("build %s wrote %s", c.topo, out)
		}
	}

	topo := filepath.Join(dir, "odd.json")
	if err := os.WriteFile(topo, []byte(`{"dimms":[{"slot":0,"addr":4294971392,"size":20971520}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	root := newRootCmd()
	var stdout, stderr bytes.Buffer
	root.SetOut(&stdout)
	root.SetErr(&stderr)
	root.SetArgs([]string{"nfit", "build", "--qemu-topology", topo, "-o", out, "--json"})
	if err := root.Execute(); err != nil {
		t.Fatalf("build of a page-aligned topology: %v", err)
	}
	var res struct {
		Warnings []string `json:"warnings"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil || len(res.Warnings) != 2 || !strings.Contains(res.Warnings[0], "16 MiB") {
		t.Errorf("build --json warnings: %v %s", err, stdout.String())
	}
	if !strings.Contains(stderr.String(), "warning: "+topo+": dimms[0] (slot 0): addr 0x100001000 is not a multiple of 16 MiB") {
		t.Errorf("stderr: %q", stderr.String())
	}
}
