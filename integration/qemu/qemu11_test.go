//go:build integration

package qemu

import (
	"strings"
	"testing"
)

// TestQEMU11Root: the harness builds (once, cached) and runs QEMU 11.1
// from a forky root through that root's dynamic loader, next to the host's
// QEMU, and that QEMU has the generic vhost-user front-end with the
// properties the scenarios use.
func TestQEMU11Root(t *testing.T) {
	q := needQEMU11(t)
	t.Logf("%s: %s", q.Root, q.Version)
	out, err := q.Command("-machine", "none", "-display", "none", "-nodefaults", "-device", "vhost-user-test-device-pci,help").CombinedOutput()
	if err != nil {
		t.Fatalf("%s -device vhost-user-test-device-pci,help: %v\n%s", q, err, out)
	}
	for _, p := range []string{"chardev=", "virtio-id=", "num_vqs=", "vq_size=", "config_size="} {
		if !strings.Contains(string(out), p) {
			t.Errorf("vhost-user-test-device-pci has no %s property:\n%s", strings.TrimSuffix(p, "="), out)
		}
	}
	if strings.Contains(string(out), "Only modules from the same build") {
		t.Errorf("QEMU 11.1 loaded the host's modules:\n%s", out)
	}
	hv, err := Host.Command("--version").Output()
	if err != nil {
		t.Fatalf("host QEMU: %v", err)
	}
	if strings.Contains(string(hv), "11.1") {
		t.Logf("the host QEMU is itself 11.1: %s", strings.SplitN(string(hv), "\n", 2)[0])
	}
}
