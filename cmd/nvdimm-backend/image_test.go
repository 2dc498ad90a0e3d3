package main

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

// clearImmutable lets t.TempDir's cleanup delete image files that took
// the immutable attribute.
func clearImmutable(t *testing.T, dir string) {
	t.Cleanup(func() {
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				exec.Command("chattr", "-i", p).Run()
			}
			return nil
		})
	})
}

func TestCLIImageAddListShowVerifyRm(t *testing.T) {
	dir := t.TempDir()
	clearImmutable(t, dir)
	cat := filepath.Join(dir, "cat")
	img := filepath.Join(dir, "a.img")
	if err := os.WriteFile(img, make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runMemfileCLI(t, "image", "--catalog", cat, "add", "a", img, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var rep memfile.AddReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	// SHA-256 of 4 MiB of zeros.
	const zeros4M = "bb9f8df61474d25e71fa00722318cd387396ca1736605e1248821cc0de3d3af8"
	if rep.Image.Name != "a" || rep.Image.SHA256 != zeros4M || rep.Image.Layout.InfoBlock != memfile.InfoNone || len(rep.Warnings) == 0 {
		t.Fatalf("add --json: %+v", rep)
	}
	out, err = runMemfileCLI(t, "image", "--catalog", cat, "list")
	if err != nil || !strings.Contains(out, "NAME") || !strings.Contains(out, "a     4 MiB") || !strings.Contains(out, zeros4M[:12]) {
		t.Fatalf("list: %v\n%s", err, out)
	}
	out, err = runMemfileCLI(t, "image", "--catalog", cat, "list", "--json")
	var ims []memfile.Image
	if err != nil || json.Unmarshal([]byte(out), &ims) != nil || len(ims) != 1 || ims[0].Path != img {
		t.Fatalf("list --json: %v\n%s", err, out)
	}
	out, err = runMemfileCLI(t, "image", "--catalog", cat, "show", "a")
	if err != nil || !strings.Contains(out, "info block    none") || !strings.Contains(out, "sha256        "+zeros4M) || !strings.Contains(out, "locked by     none") {
		t.Fatalf("show: %v\n%s", err, out)
	}
	out, err = runMemfileCLI(t, "image", "--catalog", cat, "show", "a", "--json")
	var st map[string]any
	if err != nil || json.Unmarshal([]byte(out), &st) != nil || st["name"] != "a" || st["locked_by"] != "none" || st["cached_bytes"] == nil {
		t.Fatalf("show --json: %v\n%s", err, out)
	}
	out, err = runMemfileCLI(t, "image", "--catalog", cat, "verify", "a")
	if err != nil || !strings.Contains(out, "image a: OK") {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	// qemu-args of an image is read-only; the generic one refuses it writable.
	out, err = runMemfileCLI(t, "image", "--catalog", cat, "qemu-args", "a", "--id", "img1")
	if err != nil || !strings.Contains(out, "readonly=on") || !strings.Contains(out, "share=on") || !strings.Contains(out, "unarmed=on") {
		t.Fatalf("image qemu-args: %v\n%s", err, out)
	}
	if _, err := runMemfileCLI(t, "qemu-args", img); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("writable qemu-args of an image: %v", err)
	}
	// Unknown image, duplicate name.
	if _, err := runMemfileCLI(t, "image", "--catalog", cat, "show", "nope"); !errors.Is(err, memfile.ErrImageNotFound) {
		t.Errorf("show nope: %v", err)
	}
	if _, err := runMemfileCLI(t, "image", "--catalog", cat, "add", "a", img); !errors.Is(err, memfile.ErrImageExists) {
		t.Errorf("add twice: %v", err)
	}
	out, err = runMemfileCLI(t, "image", "--catalog", cat, "rm", "a")
	if err != nil || !strings.Contains(out, "kept "+img) {
		t.Fatalf("rm: %v\n%s", err, out)
	}
	out, err = runMemfileCLI(t, "image", "--catalog", cat, "list")
	if err != nil || !strings.Contains(out, "no images") {
		t.Fatalf("list after rm: %v\n%s", err, out)
	}
}

func TestCLIImageVerifyMismatchFails(t *testing.T) {
	dir := t.TempDir()
	clearImmutable(t, dir)
	cat := filepath.Join(dir, "cat")
	img := filepath.Join(dir, "v.img")
	if err := os.WriteFile(img, make([]byte, 2<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := runMemfileCLI(t, "image", "--catalog", cat, "add", "v", img); err != nil {
		t.Fatal(err)
	}
	exec.Command("chattr", "-i", img).Run()
	os.Chmod(img, 0o644)
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{1}, 100)
	f.Close()
	out, err := runMemfileCLI(t, "image", "--catalog", cat, "verify", "v")
	if !errors.Is(err, errVerifyFailed) || !strings.Contains(out, "MISMATCH") || !strings.Contains(out, "was modified") {
		t.Fatalf("verify of a modified image: %v\n%s", err, out)
	}
	out, err = runMemfileCLI(t, "image", "--catalog", cat, "verify", "v", "--json")
	var rep memfile.VerifyReport
	if !errors.Is(err, errVerifyFailed) || json.Unmarshal([]byte(out), &rep) != nil || rep.OK || rep.SHA256 == rep.ExpectedSHA256 {
		t.Fatalf("verify --json: %v\n%s", err, out)
	}
}

func TestCLIImageBuildClone(t *testing.T) {
	if _, err := exec.LookPath("mke2fs"); err != nil {
		t.Skip("mke2fs not installed")
	}
	dir := t.TempDir()
	clearImmutable(t, dir)
	cat := filepath.Join(dir, "cat")
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	os.WriteFile(filepath.Join(src, "etc", "hostname"), []byte("guest\n"), 0o644)
	if _, err := runMemfileCLI(t, "image", "--catalog", cat, "build", "b"); err == nil || !strings.Contains(err.Error(), "--from-dir") {
		t.Fatalf("build without --from-dir: %v", err)
	}
	out, err := runMemfileCLI(t, "image", "--catalog", cat, "build", "b", "--from-dir", src, "--size", "32M")
	if err != nil || !strings.Contains(out, "built image b: "+filepath.Join(cat, "b.img")+", 32 MiB") {
		t.Fatalf("build: %v\n%s", err, out)
	}
	out, err = runMemfileCLI(t, "image", "--catalog", cat, "show", "b")
	if err != nil || !strings.Contains(out, "info block    pfn-ram") || !strings.Contains(out, "30 MiB at offset 2097152") {
		t.Fatalf("show: %v\n%s", err, out)
	}
	clone := filepath.Join(dir, "vm.img")
	out, err = runMemfileCLI(t, "image", "--catalog", cat, "clone", "b", clone, "--json")
	var cr imageCloneResult
	if err != nil || json.Unmarshal([]byte(out), &cr) != nil || cr.Dest != clone || cr.Method == "" {
		t.Fatalf("clone: %v\n%s", err, out)
	}
	// The clone attaches writable; the image never does.
	if out, err := runMemfileCLI(t, "qemu-args", clone); err != nil || strings.Contains(out, "readonly") {
		t.Fatalf("qemu-args of the clone: %v\n%s", err, out)
	}
	out, err = runMemfileCLI(t, "image", "--catalog", cat, "rm", "b", "--json")
	var rr memfile.RemoveReport
	if err != nil || json.Unmarshal([]byte(out), &rr) != nil || !rr.Deleted {
		t.Fatalf("rm of a built image: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(cat, "b.img")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("built image file still there: %v", err)
	}
	if _, err := os.Stat(clone); err != nil {
		t.Errorf("clone removed with its image: %v", err)
	}
}
