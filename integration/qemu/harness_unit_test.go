//go:build integration

package qemu

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// Fast checks of the harness's own pieces (no guest needed).

func TestWriteCpio(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio not installed")
	}
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "a", "b"), 0o755)                        //nolint:errcheck
	os.WriteFile(filepath.Join(src, "a", "b", "f"), []byte("12345"), 0o644) //nolint:errcheck
	os.WriteFile(filepath.Join(src, "init"), []byte("#!/bin/sh\n"), 0o755)  //nolint:errcheck
	os.Symlink("a/b/f", filepath.Join(src, "link"))                         //nolint:errcheck
	var buf bytes.Buffer
	if err := writeCpio(&buf, src); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	cmd := exec.Command("cpio", "-idm", "--quiet")
	cmd.Dir = dst
	cmd.Stdin = &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v %s", err, out)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "link")); string(b) != "12345" {
		t.Errorf("through the symlink: %q", b)
	}
	if fi, err := os.Stat(filepath.Join(dst, "init")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("init: %v %v", fi, err)
	}
}

func TestModuleClosure(t *testing.T) {
	d := t.TempDir()
	os.WriteFile(filepath.Join(d, "modules.dep"), []byte( //nolint:errcheck
		"kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz kernel/fs/mbcache.ko.xz\n"+
			"kernel/fs/jbd2/jbd2.ko.xz:\nkernel/fs/mbcache.ko.xz:\nkernel/other.ko.xz:\n"), 0o644)
	os.WriteFile(filepath.Join(d, "modules.builtin"), []byte("kernel/drivers/virtio/virtio_pci.ko\n"), 0o644) //nolint:errcheck
	got, err := moduleClosure(d, []string{"ext4", "virtio-pci"})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(got)
	if strings.Join(got, " ") != "kernel/fs/ext4/ext4.ko.xz kernel/fs/jbd2/jbd2.ko.xz kernel/fs/mbcache.ko.xz" {
		t.Errorf("closure %v", got)
	}
	if _, err := moduleClosure(d, []string{"nosuch"}); err == nil {
		t.Error("unknown module accepted")
	}
}
