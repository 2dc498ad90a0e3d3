package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
)

func TestCLIFlush(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f.img")
	if _, err := runMemfileCLI(t, "create", p, "--size", "16M"); err != nil {
		t.Fatal(err)
	}
	out, err := runMemfileCLI(t, "flush", p, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var r flushResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if r.Path != p || r.Kind != "file" || r.Strategy != "fdatasync" || r.Guarantee == "" || r.DurationNS <= 0 {
		t.Fatalf("%+v", r)
	}
	if r.After != nil && r.After.Source == "cachestat" && r.After.Bytes != 0 {
		t.Fatalf("%d bytes not durable right after the flush", r.After.Bytes)
	}
	out, err = runMemfileCLI(t, "flush", p)
	if err != nil || !strings.Contains(out, "fdatasync") || !strings.Contains(out, "guarantee:") {
		t.Fatalf("human output %q, %v", out, err)
	}
	if _, err := runMemfileCLI(t, "flush", filepath.Join(t.TempDir(), "missing")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("missing backing: %v", err)
	}
}
