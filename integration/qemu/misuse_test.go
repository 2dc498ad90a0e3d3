//go:build integration

package qemu

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestMisalignedVirtioPMEM: `qemu-args --virtio-pmem` refuses a backing
// whose size is not a multiple of 2 MiB, naming the guest's own complaint;
// a guest booted with that layout anyway (bypassing our tool) really logs it.
func TestMisalignedVirtioPMEM(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	odd := sparseFile(t, filepath.Join(dir, "odd.img"), 255<<20+4096)
	next := sparseFile(t, filepath.Join(dir, "next.img"), 256<<20)
	out, stderr, err := hostTry(t, "qemu-args", odd, "--virtio-pmem", "--id", "vp0")
	if err == nil {
		t.Fatalf("qemu-args --virtio-pmem accepted a %d-byte backing:\n%s", 255<<20+4096, out)
	}
	const guestSays = "misaligned"
	if !strings.Contains(stderr, guestSays) || !strings.Contains(stderr, "odd.img") {
		t.Errorf("qemu-args refusal %q does not name the backing and the guest's reason (%q)", stderr, guestSays)
	}

	// What the guest would have said: no align=2M, so the second device
	// lands right after the odd-sized first one.
	res := mustBoot(t, &VM{
		ExtraArgs: []string{
			"-object", "memory-backend-file,id=m0,share=on,mem-path=" + odd + ",size=" + itoa(255<<20+4096),
			"-device", "virtio-pmem-pci,id=vp0,memdev=m0",
			"-object", "memory-backend-file,id=m1,share=on,mem-path=" + next + ",size=" + itoa(256<<20),
			"-device", "virtio-pmem-pci,id=vp1,memdev=m1",
		},
		Script: "dmesg > /host/dmesg.txt\n",
	})
	dmesg, err := res.Read("dmesg.txt")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(dmesg), guestSays) {
		t.Errorf("the guest did not log %q for the misaligned layout; its nvdimm/pmem lines:\n%s", guestSays, grepLines(string(dmesg), "pmem", "nd_", "virtio"))
	} else {
		t.Logf("guest: %s", grepLines(string(dmesg), guestSays))
	}
}

// TestReadOnlyBackingNeedsUnarmed: a backing attached read-only gets
// readonly=on with unarmed=on from qemu-args, and the guest marks the region
// read-only.
func TestReadOnlyBackingNeedsUnarmed(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	img := filepath.Join(dir, "ro.img")
	host(t, "create", img, "--size", "256M")
	var qa struct {
		Object string `json:"object"`
		Device string `json:"device"`
	}
	hostJSON(t, &qa, "qemu-args", img, "--readonly", "--slot", "0")
	if !strings.Contains(qa.Object, "readonly=on") || !strings.Contains(qa.Device, "unarmed=on") {
		t.Fatalf("qemu-args --readonly: object %q device %q, want readonly=on and unarmed=on", qa.Object, qa.Device)
	}
	res := mustBoot(t, &VM{
		ExtraArgs: []string{"-object", qa.Object, "-device", qa.Device},
		Script:    "cat /sys/bus/nd/devices/region0/read_only > /host/ro.txt\n",
	})
	ro, _ := res.Read("ro.txt")
	if strings.TrimSpace(string(ro)) != "1" {
		t.Errorf("guest region0 read_only = %q, want 1", ro)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func grepLines(s string, words ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, w := range words {
			if strings.Contains(l, w) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
