package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

// runMemfileCLI runs the CLI with args and returns stdout and the error.
func runMemfileCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestCLICreateInspectQEMUArgs(t *testing.T) {
	p := filepath.Join(t.TempDir(), "a.img")
	out, err := runMemfileCLI(t, "create", p, "--size", "1G", "--label-size", "128K", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var cr createResult
	if err := json.Unmarshal([]byte(out), &cr); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if cr.Layout.GuestSize != memfile.GiB || cr.Layout.BackingSize != memfile.GiB+128*memfile.KiB || cr.Kind != "file" || cr.Meta != p+".nvdimm.json" {
		t.Fatalf("%+v", cr)
	}
	out, err = runMemfileCLI(t, "inspect", p)
	if err != nil || !strings.Contains(out, "label area    128 KiB at offset 1073741824") || !strings.Contains(out, "locked by     none") {
		t.Fatalf("inspect: %v\n%s", err, out)
	}
	out, err = runMemfileCLI(t, "inspect", p, "--json")
	var in memfile.Info
	if err != nil || json.Unmarshal([]byte(out), &in) != nil || in.Layout.LabelOffset != memfile.GiB || in.Meta == nil {
		t.Fatalf("inspect --json: %v\n%s", err, out)
	}
	out, err = runMemfileCLI(t, "qemu-args", p, "--id", "nv3")
	if err != nil {
		t.Fatal(err)
	}
	want := "-machine nvdimm=on\n-m 1G,slots=4,maxmem=3G\n-object memory-backend-file,id=mem-nv3,mem-path=" + p +
		",size=1048704K,share=on,align=2M\n-device nvdimm,id=nv3,memdev=mem-nv3,label-size=128K\n"
	if out != want {
		t.Fatalf("qemu-args:\n%s\nwant\n%s", out, want)
	}
	out, err = runMemfileCLI(t, "qemu-args", p, "--readonly", "--json")
	var qa memfile.QEMUArgs
	if err != nil || json.Unmarshal([]byte(out), &qa) != nil || !strings.HasSuffix(qa.Device, "unarmed=on") {
		t.Fatalf("qemu-args --json: %v\n%s", err, out)
	}
	if _, err := runMemfileCLI(t, "qemu-args", p, "--virtio-pmem"); err == nil || !strings.Contains(err.Error(), "label area") {
		t.Fatalf("virtio-pmem of a labelled backing: %v", err)
	}
	out, err = runMemfileCLI(t, "clone", p, p+".clone", "--json")
	if err != nil || !strings.Contains(out, `"method"`) {
		t.Fatalf("clone: %v %s", err, out)
	}
}

func TestCLICreateRefusals(t *testing.T) {
	dir := t.TempDir()
	cases := map[string][]string{
		"--size is required":              {"create", filepath.Join(dir, "x")},
		"below QEMU's minimum of 128 KiB": {"create", filepath.Join(dir, "x"), "--size", "1G", "--label-size", "64K"},
		"does not exist":                  {"create", filepath.Join(dir, "no", "x"), "--size", "1G"},
		"already exists as a directory":   {"create", dir, "--size", "1G"},
		"want a number":                   {"create", filepath.Join(dir, "x"), "--size", "lots"},
		"not a multiple of the align":     {"create", filepath.Join(dir, "x"), "--size", "3M"},
		"need --namespace":                {"create", filepath.Join(dir, "x"), "--size", "2M", "--uuid", "x"},
	}
	for want, args := range cases {
		if _, err := runMemfileCLI(t, args...); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: err = %v, want %q", args, err, want)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("left behind %v", ents)
	}
}
