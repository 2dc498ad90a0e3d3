//go:build integration

package qemu

import (
	"encoding/json"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// provision creates a backing with a namespace through `create --namespace`
// and returns the namespace uuid our tool reported.
func provision(t *testing.T, img, size, name, mode string) string {
	t.Helper()
	out, stderr, err := hostTry(t, "--json", "create", img, "--size", size, "--label-size", "128K",
		"--namespace", name, "--mode", mode, "--slot", "0")
	if err != nil {
		t.Fatalf("create --namespace %s: %v\n%s", name, err, stderr)
	}
	var v any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("create --json: %v\n%s", err, out)
	}
	ns := findObject(v, "name", name)
	if ns == nil {
		t.Fatalf("create --json reports no namespace named %q:\n%s", name, out)
	}
	uuid, _ := ns["uuid"].(string)
	if uuid == "" {
		t.Fatalf("create --json: namespace %q has no uuid:\n%s", name, out)
	}
	return uuid
}

// attachArgs returns the -object/-device pair `qemu-args` prints for img.
func attachArgs(t *testing.T, img string, extra ...string) []string {
	t.Helper()
	var qa struct {
		Object string `json:"object"`
		Device string `json:"device"`
	}
	hostJSON(t, &qa, append([]string{"qemu-args", img}, extra...)...)
	if qa.Object == "" || qa.Device == "" {
		t.Fatalf("qemu-args %s: no object/device", img)
	}
	return []string{"-object", qa.Object, "-device", qa.Device}
}

func onlyNamespace(t *testing.T, data []byte, name string) ndctlNamespace {
	t.Helper()
	for _, ns := range ndctlNamespaces(t, data) {
		if ns.Name == name {
			return ns
		}
	}
	t.Fatalf("guest's ndctl list shows no namespace %q:\n%s", name, data)
	return ndctlNamespace{}
}

// TestProvisionedNamespace: `create --namespace db --mode fsdax` gives a
// backing whose namespace the guest's ndctl lists with our uuid, size and
// mode; ext4 mounts with -o dax; data written survives a reboot.
func TestProvisionedNamespace(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	img := filepath.Join(dir, "db.img")
	uuid := provision(t, img, "512M", "db", "fsdax")
	args := attachArgs(t, img, "--slot", "0")
	res := mustBoot(t, &VM{ExtraArgs: args, Script: `
ndctl list -Nv > /host/ns.json
dev=/dev/$(ndctl list -N | sed -n 's/.*"blockdev":"\([^"]*\)".*/\1/p' | head -1)
/usr/local/sbin/mke2fs -q -t ext4 -b 4096 -F "$dev"
mkdir -p /mnt/db
mount -t ext4 -o dax "$dev" /mnt/db
grep /mnt/db /proc/mounts > /host/mounts.txt
echo "survives-reboot-$$" > /host/token
cp /host/token /mnt/db/token
dd if=/host/token of=/mnt/db/token-fsynced conv=fsync
umount /mnt/db
`})
	ns := onlyNamespace(t, mustRead(t, res, "ns.json"), "db")
	if !strings.EqualFold(ns.LabelUUID(), uuid) {
		t.Errorf("guest uuid %s, ours %s", ns.LabelUUID(), uuid)
	}
	if ns.Mode != "fsdax" {
		t.Errorf("guest mode %q, want fsdax", ns.Mode)
	}
	// 512 MiB region; fsdax keeps the memmap in the namespace (64 B per
	// 4 KiB page) plus alignment: the usable size is a little under.
	if ns.Size > 512<<20 || ns.Size < 480<<20 {
		t.Errorf("guest namespace size %d, want between 480 MiB and 512 MiB", ns.Size)
	}
	if m := string(mustRead(t, res, "mounts.txt")); !strings.Contains(m, "dax") {
		t.Errorf("ext4 not mounted with dax: %q", m)
	}
	token := strings.TrimSpace(string(mustRead(t, res, "token")))
	checkHostLabelView(t, img, []ndctlNamespace{ns})

	// Second boot: same backing, the data is still there.
	res2 := mustBoot(t, &VM{Name: "reboot", ExtraArgs: args, Script: `
dev=/dev/$(ndctl list -N | sed -n 's/.*"blockdev":"\([^"]*\)".*/\1/p' | head -1)
mkdir -p /mnt/db
mount -t ext4 -o dax "$dev" /mnt/db
cat /mnt/db/token > /host/readback
cat /mnt/db/token-fsynced > /host/readback-fsynced
`})
	for _, f := range []string{"readback", "readback-fsynced"} {
		if got := strings.TrimSpace(string(mustRead(t, res2, f))); got != token {
			t.Errorf("after reboot %s = %q, want %q", f, got, token)
		}
	}
}

// TestProvisionedDevdax: a devdax namespace provisioned on the host appears
// in the guest as /dev/daxN.M of the right size.
func TestProvisionedDevdax(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	img := filepath.Join(dir, "dx.img")
	uuid := provision(t, img, "256M", "dx", "devdax")
	res := mustBoot(t, &VM{ExtraArgs: attachArgs(t, img, "--slot", "0"), Script: `
ndctl list -Nv > /host/ns.json
ls /dev/dax* > /host/dax.txt
for d in /sys/bus/dax/devices/dax*; do echo "$(basename $d) $(cat $d/size)"; done > /host/daxsize.txt
`})
	ns := onlyNamespace(t, mustRead(t, res, "ns.json"), "dx")
	if ns.Mode != "devdax" || !strings.EqualFold(ns.LabelUUID(), uuid) {
		t.Errorf("guest namespace %+v, want devdax with uuid %s", ns, uuid)
	}
	if !strings.Contains(string(mustRead(t, res, "dax.txt")), "/dev/dax0.") {
		t.Errorf("no /dev/dax0.N in the guest: %s", mustRead(t, res, "dax.txt"))
	}
	f := strings.Fields(string(mustRead(t, res, "daxsize.txt")))
	if len(f) < 2 {
		t.Fatalf("no dax device size: %q", f)
	}
	size, _ := strconv.ParseUint(f[1], 10, 64)
	if size > 256<<20 || size < 240<<20 || size%(2<<20) != 0 {
		t.Errorf("%s size %d: want a 2 MiB multiple between 240 and 256 MiB", f[0], size)
	}
}

// TestRawWithInfoBlock: a label-less backing with a host-written PFN info
// block comes up as fsdax in the guest and mounts with DAX.
func TestRawWithInfoBlock(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	img := filepath.Join(dir, "raw.img")
	host(t, "create", img, "--size", "256M")
	host(t, "label", "infoblock", img, "--write", "fsdax")
	res := mustBoot(t, &VM{ExtraArgs: attachArgs(t, img, "--slot", "0"), Script: `
ndctl list -Nv > /host/ns.json
/usr/local/sbin/mke2fs -q -t ext4 -b 4096 -F /dev/pmem0
mount -t ext4 -o dax /dev/pmem0 /mnt
grep /mnt /proc/mounts > /host/mounts.txt
`})
	var found bool
	for _, ns := range ndctlNamespaces(t, mustRead(t, res, "ns.json")) {
		if ns.Mode == "fsdax" {
			found = true
		}
	}
	if !found {
		t.Errorf("guest shows no fsdax namespace:\n%s", mustRead(t, res, "ns.json"))
	}
	if m := string(mustRead(t, res, "mounts.txt")); !strings.Contains(m, "dax") {
		t.Errorf("not mounted with dax: %q", m)
	}
}

func mustRead(t *testing.T, res *Result, name string) []byte {
	t.Helper()
	b, err := res.Read(name)
	if err != nil {
		t.Fatalf("guest result %s: %v", name, err)
	}
	return b
}
