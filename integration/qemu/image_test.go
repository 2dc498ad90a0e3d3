//go:build integration

package qemu

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

// Scenarios for shared read-only images (`nvdimm-backend image ...`): guests
// attach one image read-only and mount it with DAX, and the host memory
// cost is measured against a private copy per guest.

// imageRecord is the part of `image build --json` the scenarios use.
type imageRecord struct {
	Image struct {
		Name       string `json:"name"`
		Path       string `json:"path"`
		Size       uint64 `json:"size"`
		SHA256     string `json:"sha256"`
		DataSHA256 string `json:"data_sha256"`
		Layout     struct {
			InfoBlock  string `json:"info_block"`
			DataOffset uint64 `json:"data_offset"`
			DataSize   uint64 `json:"data_size"`
		} `json:"layout"`
	} `json:"image"`
}

type imageAttach struct {
	Object string `json:"object"`
	Device string `json:"device"`
}

// imageTree writes files of incompressible data (mke2fs -d skips zero
// blocks) totalling about total bytes, and returns the directory and each
// file's SHA-256 by its path relative to the directory.
func imageTree(t *testing.T, total int) (string, map[string]string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tree")
	rng := rand.New(rand.NewPCG(9, 9))
	sums := map[string]string{}
	sizes := []int{total / 2, total / 4, total / 8, total / 8, 4096, 100}
	for i, n := range sizes {
		rel := fmt.Sprintf("d%d/file%d.bin", i%3, i)
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, n)
		for j := 0; j+8 <= n; j += 8 {
			v := rng.Uint64()
			for k := range 8 {
				b[j+k] = byte(v >> (8 * k))
			}
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		s := sha256.Sum256(b)
		sums["./"+rel] = hex.EncodeToString(s[:])
	}
	return dir, sums
}

// dropCache evicts the file's clean pages from the host page cache so that
// what is cached afterwards is what the guests read.
func dropCache(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
}

// mappingUse is the Pss and Rss in bytes of the mappings of path in the
// process pid (from /proc/PID/smaps).
func mappingUse(pid int, path string) (pss, rss uint64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	in := false
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if strings.Contains(fields[0], "-") && len(fields) >= 5 && !strings.HasSuffix(fields[0], ":") {
			// A mapping header: start-end perms offset dev inode [path].
			in = len(fields) >= 6 && strings.Join(fields[5:], " ") == path
			continue
		}
		if !in || len(fields) < 2 {
			continue
		}
		n, perr := strconv.ParseUint(fields[1], 10, 64)
		if perr != nil {
			continue
		}
		switch fields[0] {
		case "Pss:":
			pss += n * 1024
		case "Rss:":
			rss += n * 1024
		}
	}
	return pss, rss, sc.Err()
}

// rendezvous holds N guests at the point where each has read its image,
// measures the host memory use of all of them at once, then releases them.
// A guest that ends (or times out) before it is ready aborts the
// rendezvous, so the others are released at once instead of waiting out
// their timeouts.
type rendezvous struct {
	mu sync.Mutex
	// +checklocks:mu
	n int
	// +checklocks:mu
	measure func(pids []int, paths []string)
	// +checklocks:mu
	pids []int
	// +checklocks:mu
	arrived   []string
	done      chan struct{} // closed after the measurement
	abort     chan struct{} // closed when a guest cannot arrive
	abortOnce sync.Once
}

func newRendezvous(n int, measure func(pids []int, paths []string)) *rendezvous {
	return &rendezvous{n: n, measure: measure, done: make(chan struct{}), abort: make(chan struct{})}
}

// started is a VM.Started hook: it waits for the guest's /host/ready, joins
// the rendezvous, and writes /host/go once everybody has been measured (or
// the rendezvous was aborted, so that the guest does not hang).
func (r *rendezvous) started(path string) func(ctx context.Context, vm *VM) error {
	return func(ctx context.Context, vm *VM) error {
		release := func() { os.WriteFile(filepath.Join(vm.Share, "go"), nil, 0o644) } //nolint:errcheck
		if err := waitFile(ctx, filepath.Join(vm.Share, "ready")); err != nil {
			r.fail(vm)
			return fmt.Errorf("guest %s never became ready: %w", vm.Name, err)
		}
		r.mu.Lock()
		r.pids = append(r.pids, vm.PID)
		r.arrived = append(r.arrived, path)
		if len(r.pids) == r.n {
			r.measure(r.pids, r.arrived)
			close(r.done)
		}
		r.mu.Unlock()
		select {
		case <-r.done:
		case <-r.abort:
			release()
			return fmt.Errorf("guest %s: another guest never became ready", vm.Name)
		case <-ctx.Done():
			release()
			return fmt.Errorf("guest %s: the other guests never became ready: %w", vm.Name, ctx.Err())
		}
		release()
		return nil
	}
}

// fail aborts the rendezvous and lets vm's guest go on (and so end) at
// once. A hook that wraps started must call it when it fails before
// calling started, or the other guests wait out their timeouts.
func (r *rendezvous) fail(vm *VM) {
	r.abortOnce.Do(func() { close(r.abort) })
	os.WriteFile(filepath.Join(vm.Share, "go"), nil, 0o644) //nolint:errcheck
}

// guestReadScript mounts the image read-only with DAX, hashes every file
// and the whole data device, checks that writes fail, then waits for the
// host to measure.
const guestReadScript = `
dev=/dev/pmem0
i=0; while [ ! -b $dev ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
ndctl list -N > /host/ns.json
cat /sys/bus/nd/devices/region0/read_only > /host/region_ro
blockdev --getro $dev > /host/dev_ro
mount -t ext4 -o dax,ro $dev /mnt
grep " /mnt " /proc/mounts > /host/mounts
dmesg | grep -i dax > /host/dax.log || true
(cd /mnt && find . -type f | sort | xargs sha256sum) > /host/files.sha
sha256sum $dev | cut -d' ' -f1 > /host/dev.sha
if touch /mnt/new-file 2>/host/touch.err; then echo touch-succeeded > /host/write; fi
if dd if=/dev/zero of=$dev bs=4096 count=1 2>/host/dd.err; then echo dd-succeeded >> /host/write; fi
touch /host/ready
i=0; while [ ! -e /host/go ]; do sleep 0.2; i=$((i+1)); [ $i -lt 1500 ]; done
umount /mnt
# A guest root that clears the block device's read-only flag still cannot
# change the host file: the mapping is read-only on the host.
if blockdev --setrw $dev 2>/dev/null; then
  dd if=/dev/urandom of=$dev bs=4096 count=256 seek=16 conv=fsync 2>/host/bypass.err || true
fi
echo done > /host/finished
`

// runGuests boots one guest per backing path at once (attach arguments
// from args) with guestReadScript and returns their results; measure runs
// while all of them are ready.
func runGuests(t *testing.T, name string, paths []string, args func(i int, path string) imageAttach,
	measure func(pids []int, paths []string)) []*Result {
	t.Helper()
	r := newRendezvous(len(paths), measure)
	results := make([]*Result, len(paths))
	var wg sync.WaitGroup
	for i, p := range paths {
		a := args(i, p)
		vm := &VM{
			Name:      fmt.Sprintf("%s-%d", name, i),
			ExtraArgs: []string{"-object", a.Object, "-device", a.Device},
			Script:    guestReadScript,
			Started:   r.started(p),
			Timeout:   6 * time.Minute, // generous: two TCG guests on a loaded 2-core machine
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// bootGuestWith may call t.Fatalf, which must run on the test
			// goroutine: use the harness pieces directly here.
			results[i] = bootForImage(t, vm)
		}()
	}
	wg.Wait()
	for i, res := range results {
		if res == nil {
			t.Fatalf("guest %s-%d did not run", name, i)
		}
		if res.ExitCode != 0 {
			t.Fatalf("guest %s-%d: script exited %d\n%s\n--- console tail ---\n%s", name, i, res.ExitCode, tail(res.Output, 60), tail(res.Console, 40))
		}
	}
	return results
}

// bootForImage is bootGuestWith without t.Fatal, for use from goroutines.
func bootForImage(t *testing.T, vm *VM) *Result {
	ctx := context.Background()
	kit, err := GetKit(ctx, t.Logf)
	if err != nil {
		t.Errorf("guest kit: %v", err)
		return nil
	}
	accel := Accel(ctx, kit, t.Logf)
	share, err := os.MkdirTemp("", "nvdimm-image-share-")
	if err != nil {
		t.Error(err)
		return nil
	}
	t.Cleanup(func() { os.RemoveAll(share) })
	ctx, cancel := context.WithTimeout(ctx, vm.Timeout)
	defer cancel()
	res, err := Boot(ctx, kit, accel, vm, share)
	if res != nil {
		saveConsoleOnFailure(t, vm.Name, res.Console)
		t.Logf("guest %s: %s, script exit %d, %s", vm.Name, accel, res.ExitCode, res.Elapsed.Round(100*time.Millisecond))
	}
	if err != nil {
		t.Errorf("guest %s: %v\n--- console tail ---\n%s", vm.Name, err, tail(resConsole(res), 60))
		return nil
	}
	return res
}

// memUse is one measurement: per-process Pss/Rss of the backing mappings
// and the page-cache bytes of the backing files.
type memUse struct {
	pss, rss []uint64
	cached   uint64
}

func (m memUse) totalPss() uint64 {
	var s uint64
	for _, v := range m.pss {
		s += v
	}
	return s
}

func measureInto(t *testing.T, out *memUse) func(pids []int, paths []string) {
	return func(pids []int, paths []string) {
		seen := map[string]bool{}
		for i, pid := range pids {
			pss, rss, err := mappingUse(pid, paths[i])
			if err != nil {
				t.Errorf("smaps of QEMU %d: %v", pid, err)
			}
			out.pss = append(out.pss, pss)
			out.rss = append(out.rss, rss)
			if !seen[paths[i]] {
				seen[paths[i]] = true
				c, _, err := memfile.ResidentBytes(paths[i])
				if err != nil {
					t.Errorf("page cache of %s: %v", paths[i], err)
				}
				out.cached += c
			}
		}
	}
}

func checkGuest(t *testing.T, who string, res *Result, img imageRecord, files map[string]string) {
	t.Helper()
	read := func(name string) string {
		b, err := res.Read(name)
		if err != nil {
			t.Errorf("%s: %v", who, err)
		}
		return strings.TrimSpace(string(b))
	}
	if ro := read("region_ro"); ro != "1" {
		t.Errorf("%s: region read_only %q, want 1", who, ro)
	}
	if ro := read("dev_ro"); ro != "1" {
		t.Errorf("%s: blockdev --getro %q, want 1", who, ro)
	}
	if m := read("mounts"); !strings.Contains(m, "dax") || !strings.Contains(m, "ro,") {
		t.Errorf("%s: mount is not read-only DAX: %q", who, m)
	}
	if d, _ := res.Read("dax.log"); strings.Contains(strings.ToLower(string(d)), "unsupported") {
		t.Errorf("%s: the guest turned DAX off: %s", who, d)
	}
	if d := read("dev.sha"); d != img.Image.DataSHA256 {
		t.Errorf("%s: sha256 of /dev/pmem0 %s, catalog data_sha256 %s", who, d, img.Image.DataSHA256)
	}
	got := map[string]string{}
	for _, line := range strings.Split(read("files.sha"), "\n") {
		if sum, name, ok := strings.Cut(line, "  "); ok {
			got[name] = sum
		}
	}
	for name, want := range files {
		if got[name] != want {
			t.Errorf("%s: %s sha256 %q in the guest, %s on the host", who, name, got[name], want)
		}
	}
	if w, _ := res.Read("write"); len(w) != 0 {
		t.Errorf("%s: a write into the read-only image succeeded in the guest: %s", who, w)
	}
}

// TestImageSharedReadOnly: guests attach one image read-only at the same
// time (as many as the harness runs at once), mount it with DAX, see the
// catalog's checksums and cannot write; the host file is unchanged; the
// image's pages are in host memory once (total Pss over the QEMU
// processes <= 1.1x the bytes read once), against N times with a private
// copy per guest.
//
// Not parallel: the guests must run at the same time, so it needs every
// guest slot.
func TestImageSharedReadOnly(t *testing.T) {
	n := maxGuests()
	if n < 2 {
		t.Skip("needs two guests at once (NVDIMM_GUESTS=1)")
	}
	dir := t.TempDir()
	cat := filepath.Join(dir, "catalog")
	tree, files := imageTree(t, 40<<20)
	var img imageRecord
	hostJSON(t, &img, "image", "--catalog", cat, "build", "shared", "--from-dir", tree)
	t.Cleanup(func() { hostTry(t, "image", "--catalog", cat, "rm", "shared") })
	if img.Image.Layout.InfoBlock != "pfn-ram" {
		t.Fatalf("built image has info block %q", img.Image.Layout.InfoBlock)
	}
	var shared imageAttach
	hostJSON(t, &shared, "image", "--catalog", cat, "qemu-args", "shared", "--id", "img0")
	for _, want := range []string{"readonly=on", "share=on"} {
		if !strings.Contains(shared.Object, want) {
			t.Fatalf("image qemu-args object %q lacks %s", shared.Object, want)
		}
	}
	if !strings.Contains(shared.Device, "unarmed=on") {
		t.Fatalf("image qemu-args device %q lacks unarmed=on", shared.Device)
	}
	// The generic attach refuses the image writable.
	if _, stderr, err := hostTry(t, "qemu-args", img.Image.Path); err == nil || !strings.Contains(stderr, "read-only") {
		t.Fatalf("writable qemu-args of an image: err %v, stderr %q", err, stderr)
	}

	// Shared: every guest maps the one image.
	dropCache(t, img.Image.Path)
	var sh memUse
	paths := make([]string, n)
	for i := range paths {
		paths[i] = img.Image.Path
	}
	start := time.Now()
	results := runGuests(t, "shared", paths, func(int, string) imageAttach { return shared }, measureInto(t, &sh))
	t.Logf("shared run: %d guests in %s", n, time.Since(start).Round(time.Second))
	for i, res := range results {
		checkGuest(t, fmt.Sprintf("shared guest %d", i), res, img, files)
	}
	out := host(t, "--json", "image", "--catalog", cat, "verify", "shared")
	if !strings.Contains(out, `"ok": true`) {
		t.Errorf("image verify after the guests (one cleared the device's read-only flag and wrote): %s", out)
	}
	if b, _ := results[0].Read("bypass.err"); len(b) > 0 {
		t.Logf("guest write after blockdev --setrw: %s", strings.TrimSpace(string(b)))
	}

	// Copies: each guest maps its own clone of the image.
	cpaths := make([]string, n)
	for i := range cpaths {
		cpaths[i] = filepath.Join(dir, fmt.Sprintf("copy%d.img", i))
		host(t, "image", "--catalog", cat, "clone", "shared", cpaths[i])
		dropCache(t, cpaths[i])
	}
	var cp memUse
	start = time.Now()
	results = runGuests(t, "copies", cpaths, func(i int, p string) imageAttach {
		var a imageAttach
		hostJSON(t, &a, "qemu-args", p, "--readonly", "--id", fmt.Sprintf("cp%d", i))
		return a
	}, measureInto(t, &cp))
	t.Logf("copies run: %d guests in %s", n, time.Since(start).Round(time.Second))
	for i, res := range results {
		checkGuest(t, fmt.Sprintf("copy guest %d", i), res, img, files)
	}

	// The bytes read once: the image's pages in the host page cache after
	// the shared run (every guest read the whole data device).
	readOnce := sh.cached
	mib := func(v uint64) string { return fmt.Sprintf("%.1f MiB", float64(v)/(1<<20)) }
	t.Logf("host memory for %d guests reading a %s image (%s of data):", n, mib(img.Image.Size), mib(img.Image.Layout.DataSize))
	t.Logf("  shared image : Pss per QEMU %v, Rss per QEMU %v, total Pss %s, page cache %s (%.2fx the bytes read once)",
		mibs(sh.pss), mibs(sh.rss), mib(sh.totalPss()), mib(sh.cached), float64(sh.totalPss())/float64(readOnce))
	t.Logf("  private copy : Pss per QEMU %v, Rss per QEMU %v, total Pss %s, page cache %s (%.2fx the bytes read once)",
		mibs(cp.pss), mibs(cp.rss), mib(cp.totalPss()), mib(cp.cached), float64(cp.totalPss())/float64(readOnce))
	if readOnce < img.Image.Layout.DataSize/2 {
		t.Fatalf("only %s of the image is in the page cache: the guests did not read it (data %s)", mib(readOnce), mib(img.Image.Layout.DataSize))
	}
	if sh.totalPss() == 0 {
		t.Fatal("no Pss measured for the image mapping")
	}
	if got := float64(sh.totalPss()); got > 1.1*float64(readOnce) {
		t.Errorf("shared: total Pss %s is more than 1.1x the %s read once", mib(sh.totalPss()), mib(readOnce))
	}
	if got := float64(cp.totalPss()); got < 0.9*float64(n)*float64(readOnce) {
		t.Errorf("copies: total Pss %s is below %dx the %s read once: the comparison run did not read its copies", mib(cp.totalPss()), n, mib(readOnce))
	}
}

func mibs(v []uint64) []string {
	out := make([]string, len(v))
	for i, x := range v {
		out[i] = fmt.Sprintf("%.1fMiB", float64(x)/(1<<20))
	}
	sort.Strings(out)
	return out
}

// TestImageCloneWritable: a clone of an image attached writable to a guest
// takes the guest's writes; the image itself does not change.
func TestImageCloneWritable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cat := filepath.Join(dir, "catalog")
	tree, _ := imageTree(t, 4<<20)
	var img imageRecord
	hostJSON(t, &img, "image", "--catalog", cat, "build", "base", "--from-dir", tree)
	t.Cleanup(func() { hostTry(t, "image", "--catalog", cat, "rm", "base") })
	clone := filepath.Join(dir, "vm1.img")
	host(t, "image", "--catalog", cat, "clone", "base", clone)
	var a imageAttach
	hostJSON(t, &a, "qemu-args", clone, "--id", "cl0")
	if strings.Contains(a.Object, "readonly=on") {
		t.Fatalf("clone attached read-only: %s", a.Object)
	}
	res := mustBoot(t, &VM{
		ExtraArgs: []string{"-object", a.Object, "-device", a.Device},
		Script: `
dev=/dev/pmem0
i=0; while [ ! -b $dev ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
mount -t ext4 -o dax $dev /mnt
grep " /mnt " /proc/mounts > /host/mounts
echo "written by the guest" > /mnt/guest-wrote.txt
sync
umount /mnt
`,
	})
	if m, _ := res.Read("mounts"); !strings.Contains(string(m), "dax") || !strings.Contains(string(m), "rw,") {
		t.Errorf("clone mount is not read-write DAX: %q", m)
	}
	// The clone holds the file; the image does not.
	raw, err := os.ReadFile(clone)
	if err != nil {
		t.Fatal(err)
	}
	fsImg := filepath.Join(dir, "clone-fs.img")
	if err := os.WriteFile(fsImg, raw[img.Image.Layout.DataOffset:], 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("debugfs", "-R", "cat /guest-wrote.txt", fsImg).Output()
	if err != nil || !strings.Contains(string(out), "written by the guest") {
		t.Errorf("clone does not hold the guest's file: %v %q", err, out)
	}
	if s := sha256.Sum256(raw); hex.EncodeToString(s[:]) == img.Image.SHA256 {
		t.Error("clone's digest is still the image's")
	}
	vout := host(t, "--json", "image", "--catalog", cat, "verify", "base")
	if !strings.Contains(vout, `"ok": true`) {
		t.Errorf("image changed by its clone's guest: %s", vout)
	}
}
