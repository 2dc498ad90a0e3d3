//go:build integration

package qemu

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The guest flush benchmark (make bench-guest) is not part of the default
// suite: it needs NVDIMM_BENCH_GUEST=1. NVDIMM_BENCH_SECONDS sets the
// measuring time per case (default 8).

// benchCase is one guest boot of the benchmark.
type benchCase struct {
	Name    string // e.g. "6.12 built-in"
	Kernel  string // "6.12" or "6.1"
	Ours    bool   // vhost-user through the daemon; else QEMU's virtio-pmem-pci
	Devices int
}

// benchRun is one guestbench flush run inside a case.
type benchRun struct {
	Tag       string  `json:"tag"` // d<devices>x<threads>
	Threads   int     `json:"threads"`
	Dirs      int     `json:"dirs"`
	Ops       int     `json:"ops"`
	AllOps    int64   `json:"all_ops"`
	OpsPerSec float64 `json:"ops_per_sec"`
	P50us     float64 `json:"p50_us"`
	P99us     float64 `json:"p99_us"`
	FsyncP50  float64 `json:"fsync_p50_us"`
	WriteP50  float64 `json:"write_p50_us"`
	// What the host saw between the run's marks: flush requests
	// answered, host syncs issued, and for ours the seconds spent in
	// syncs and from request arrival to completion (-1: not known).
	Requests  float64 `json:"requests"`
	HostSyncs float64 `json:"host_syncs"`
	SyncSec   float64 `json:"sync_seconds"`
	LatSec    float64 `json:"request_seconds"`
}

// hostCounts are cumulative host-side counters at one moment.
type hostCounts struct {
	Requests, Syncs float64
	SyncSec, LatSec float64 // -1: not known (built-in)
}

// benchRuns are the (devices, threads) runs of a case with n devices.
func benchRuns(n int) [][2]int {
	if n == 1 {
		return [][2]int{{1, 1}, {1, 4}, {1, 16}}
	}
	return [][2]int{{n, n}, {n, 16}}
}

func benchScript(devices int, seconds int) string {
	var b strings.Builder
	b.WriteString(waitPmemFn)
	fmt.Fprintf(&b, "i=0; while [ $(ls /dev/pmem* 2>/dev/null | wc -l) -lt %d ]; do sleep 0.1; i=$((i+1)); [ $i -lt 600 ]; done\n", devices)
	var dirs []string
	for i := 0; i < devices; i++ {
		fmt.Fprintf(&b, "/usr/local/sbin/mke2fs -q -t ext4 -b 4096 -F /dev/pmem%d\nmkdir -p /mnt/d%d\nmount -t ext4 -o dax /dev/pmem%d /mnt/d%d\n", i, i, i, i)
		dirs = append(dirs, fmt.Sprintf("/mnt/d%d", i))
	}
	b.WriteString("grep -c dax /proc/mounts > /host/daxmounts\ncat /proc/version > /host/kernel\n")
	for _, r := range benchRuns(devices) {
		tag := fmt.Sprintf("d%dx%d", r[0], r[1])
		fmt.Fprintf(&b, "guestbench flush -dirs %s -threads %d -duration %ds -mark /host/%s > /host/%s.json\n",
			strings.Join(dirs, ","), r[1], seconds, tag, tag)
	}
	for i := 0; i < devices; i++ {
		fmt.Fprintf(&b, "umount /mnt/d%d\n", i)
	}
	return b.String()
}

// kit61 is the guest kit with bookworm's own 6.1 kernel (the one whose
// virtio_pmem may have several flushes outstanding), cached beside the
// 6.12 kit.
var (
	kit61Once sync.Once
	kit61Val  *Kit
	kit61Err  error
)

func getKit61(ctx context.Context, logf func(string, ...any)) (*Kit, error) {
	kit61Once.Do(func() {
		out, err := run(ctx, "", "apt-cache", "depends", "linux-image-amd64/bookworm")
		if err != nil {
			kit61Err = err
			return
		}
		var kpkg string
		for _, l := range strings.Split(out, "\n") {
			if p, ok := strings.CutPrefix(strings.TrimSpace(l), "Depends: "); ok && strings.HasPrefix(p, "linux-image-") {
				kpkg = strings.TrimSpace(p)
				break
			}
		}
		if kpkg == "" {
			kit61Err = fmt.Errorf("apt-cache depends linux-image-amd64/bookworm: no image package in %q", out)
			return
		}
		h := sha256.Sum256([]byte(kitFormat + "\n" + kpkg + "\n" + initScript))
		key := hex.EncodeToString(h[:])[:16]
		cache, err := CacheDir()
		if err != nil {
			kit61Err = err
			return
		}
		base := filepath.Join(cache, "guest-kit-6.1")
		dir := filepath.Join(base, key)
		k := &Kit{Dir: dir, Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd.cpio"), Key: key, Summary: kpkg}
		if b, err := os.ReadFile(filepath.Join(dir, "kver")); err == nil {
			k.KVer = strings.TrimSpace(string(b))
			kit61Val = k
			return
		}
		if err := os.MkdirAll(base, 0o755); err != nil {
			kit61Err = err
			return
		}
		lf, err := os.OpenFile(filepath.Join(base, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			kit61Err = err
			return
		}
		defer lf.Close()
		if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
			kit61Err = err
			return
		}
		tmp, err := os.MkdirTemp(base, "build-")
		if err != nil {
			kit61Err = err
			return
		}
		defer os.RemoveAll(tmp)
		logf("building the 6.1 guest kit (%s)", kpkg)
		kver, err := assembleKit(ctx, tmp, kpkg)
		if err != nil {
			kit61Err = fmt.Errorf("6.1 guest kit: %w", err)
			return
		}
		if err := os.WriteFile(filepath.Join(tmp, "out", "kver"), []byte(kver+"\n"), 0o644); err != nil {
			kit61Err = err
			return
		}
		os.RemoveAll(dir)
		if err := os.Rename(filepath.Join(tmp, "out"), dir); err != nil {
			kit61Err = err
			return
		}
		k.KVer = kver
		kit61Val = k
	})
	return kit61Val, kit61Err
}

// hostFdatasync measures 4 KiB pwrite + fdatasync on a file in dir: the
// physical limit of one host sync on this machine's storage.
func hostFdatasync(dir string, d time.Duration) (p50, p99 float64, err error) {
	f, err := os.CreateTemp(dir, "fdatasync-*")
	if err != nil {
		return 0, 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 4096)
	var lat []time.Duration
	for end := time.Now().Add(d); time.Now().Before(end); {
		t0 := time.Now()
		if _, err := f.WriteAt(buf, int64(len(lat)%64)*4096); err != nil {
			return 0, 0, err
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			return 0, 0, err
		}
		lat = append(lat, time.Since(t0))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	us := func(p float64) float64 {
		i := min(len(lat)-1, int(float64(len(lat))*p/100))
		return float64(lat[i].Nanoseconds()) / 1e3
	}
	return us(50), us(99), nil
}

// runBenchCase boots one case and returns its runs by tag.
func runBenchCase(t *testing.T, q *QEMU, c benchCase, seconds int) (map[string]*benchRun, error) {
	ctx := context.Background()
	kit, err := GetKit(ctx, t.Logf)
	if err != nil {
		return nil, err
	}
	bkit := kit
	if c.Kernel == "6.1" {
		if bkit, err = getKit61(ctx, t.Logf); err != nil {
			return nil, err
		}
	}
	dir := t.TempDir()
	vm := vhostVM(dir, "512M")
	vm.Name = strings.ReplaceAll(c.Name, " ", "-")
	vm.Script = benchScript(c.Devices, seconds)
	vm.Timeout = 10 * time.Minute
	var d *daemonProc
	var devs map[string]string
	tracePath := filepath.Join(dir, "qemu-trace.log")
	if c.Ours {
		d = newDaemonProc(t, dir)
		devs = map[string]string{}
		for i := 0; i < c.Devices; i++ {
			name := fmt.Sprintf("b%d", i)
			if _, err := d.cli("device", "create", name, "--backing", filepath.Join(dir, "backings", name+".img"), "--size", "256M"); err != nil {
				return nil, err
			}
			devs[name] = fmt.Sprintf("rp%d", i+1)
		}
	} else {
		for i := 0; i < c.Devices; i++ {
			p := sparseFile(t, filepath.Join(dir, fmt.Sprintf("b%d.img", i)), 256<<20)
			vm.ExtraArgs = append(vm.ExtraArgs,
				"-object", fmt.Sprintf("memory-backend-file,id=pm%d,mem-path=%s,size=256M,share=on,align=2M", i, p),
				"-device", fmt.Sprintf("virtio-pmem-pci,memdev=pm%d,id=vp%d,bus=rp%d", i, i, i+1))
		}
		vm.ExtraArgs = append(vm.ExtraArgs, "-trace", "virtio_pmem_flush_done", "-D", tracePath)
	}
	// counts samples what the host has seen so far: flush requests, host
	// syncs and the daemon's sync and request time (ours), or QEMU's
	// virtio_pmem_flush_done events, each one request and one fsync.
	count := func() hostCounts {
		if c.Ours {
			m := d.metrics()
			var hc hostCounts
			for name := range devs {
				hc.Requests += m["nvdimm_backend_vhost_pmem_flushes_total"][name]
				hc.Syncs += m["nvdimm_flush_syncs_total"][name]
				hc.SyncSec += m["nvdimm_flush_sync_duration_seconds_sum"][name]
				hc.LatSec += m["nvdimm_flush_latency_seconds_sum"][name]
			}
			return hc
		}
		b, _ := os.ReadFile(tracePath)
		n := float64(strings.Count(string(b), "virtio_pmem_flush_done"))
		return hostCounts{Requests: n, Syncs: n, SyncSec: -1, LatSec: -1}
	}
	marks := map[string]hostCounts{}
	vm.Started = func(ctx context.Context, vm *VM) error {
		qc, err := attachAndStart(ctx, d, vm, devs)
		if err != nil {
			return err
		}
		defer qc.Close()
		seen := map[string]bool{}
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			for _, r := range benchRuns(c.Devices) {
				for _, e := range []string{".start", ".end"} {
					m := fmt.Sprintf("d%dx%d%s", r[0], r[1], e)
					if !seen[m] && fileExists(filepath.Join(vm.Share, m)) {
						seen[m] = true
						marks[m] = count()
					}
				}
			}
			if fileExists(filepath.Join(vm.Share, "daxmounts")) && len(seen) == 2*len(benchRuns(c.Devices)) {
				return nil
			}
			select {
			case <-ctx.Done():
				return nil
			case <-qc.Done(): // QEMU exited; the result says why
				return nil
			case <-tk.C:
			}
		}
	}
	gb := guestbenchInitrd(t, bkit)
	res, err := func() (*Result, error) {
		tctx, cancel := context.WithTimeout(ctx, vm.Timeout)
		defer cancel()
		share := t.TempDir()
		return BootWith(tctx, bkit, q, Accel(ctx, kit, t.Logf), vm, share, BootOptions{Initrd: gb, Kernel: bkit.Kernel})
	}()
	if err != nil {
		return nil, fmt.Errorf("%s: %w\n%s", c.Name, err, tail(resConsole(res), 40))
	}
	if res.ExitCode != 0 {
		return nil, fmt.Errorf("%s: guest script exited %d\n%s", c.Name, res.ExitCode, tail(res.Output, 40))
	}
	t.Logf("%s: guest done in %s", c.Name, res.Elapsed.Round(time.Second))
	runs := map[string]*benchRun{}
	for _, r := range benchRuns(c.Devices) {
		tag := fmt.Sprintf("d%dx%d", r[0], r[1])
		b, err := res.Read(tag + ".json")
		if err != nil {
			return nil, err
		}
		br := &benchRun{Tag: tag}
		if err := json.Unmarshal(b, br); err != nil {
			return nil, fmt.Errorf("%s %s: %q: %w", c.Name, tag, b, err)
		}
		s, e := marks[tag+".start"], marks[tag+".end"]
		br.Requests, br.HostSyncs = e.Requests-s.Requests, e.Syncs-s.Syncs
		br.SyncSec, br.LatSec = -1, -1
		if s.SyncSec >= 0 {
			br.SyncSec, br.LatSec = e.SyncSec-s.SyncSec, e.LatSec-s.LatSec
		}
		runs[tag] = br
	}
	return runs, nil
}

// TestBenchGuest is `make bench-guest`: write 4 KiB + fsync loops in the
// guest on ext4 -o dax, on QEMU 11.1's built-in virtio-pmem-pci and on ours
// over vhost-user, same QEMU, same 6.12 kernel; then the same on bookworm's
// 6.1 kernel with the built-in device (6.1's virtio_pmem has no
// SHMEM_REGION, so our transport cannot place the range there).
func TestBenchGuest(t *testing.T) {
	if os.Getenv("NVDIMM_BENCH_GUEST") == "" {
		t.Skip("guest flush benchmark: run with make bench-guest (NVDIMM_BENCH_GUEST=1)")
	}
	q := needQEMU11(t)
	seconds := 8
	if s, err := strconv.Atoi(os.Getenv("NVDIMM_BENCH_SECONDS")); err == nil && s > 0 {
		seconds = s
	}
	cases := []benchCase{
		{Name: "6.12 built-in", Kernel: "6.12", Devices: 1},
		{Name: "6.12 ours", Kernel: "6.12", Ours: true, Devices: 1},
		{Name: "6.12 built-in 4dev", Kernel: "6.12", Devices: 4},
		{Name: "6.12 ours 4dev", Kernel: "6.12", Ours: true, Devices: 4},
		{Name: "6.1 built-in", Kernel: "6.1", Devices: 1},
		{Name: "6.1 built-in 4dev", Kernel: "6.1", Devices: 4},
	}
	// Build the guest kits and their initramfs with guestbench here:
	// runBenchCase runs on other goroutines, where t.Fatal must not be.
	ctx := context.Background()
	kit, err := GetKit(ctx, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	k61, err := getKit61(ctx, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	guestbenchInitrd(t, kit)
	guestbenchInitrd(t, k61)
	Accel(ctx, kit, t.Logf)
	results := make([]map[string]*benchRun, len(cases))
	errs := make([]error, len(cases))
	var wg sync.WaitGroup
	// Built-in and ours of one configuration run at the same time, so
	// both see the same machine load; BootWith's slots keep it to two.
	for i, c := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fmt.Errorf("%s: did not finish", c.Name)
			results[i], errs[i] = runBenchCase(t, q, c, seconds)
		}()
		if i%2 == 1 {
			wg.Wait()
		}
	}
	wg.Wait()
	hp50, hp99, herr := hostFdatasync(t.TempDir(), 2*time.Second)
	if herr != nil {
		t.Errorf("host fdatasync: %v", herr)
	}
	var out strings.Builder
	fmt.Fprintf(&out, "guest flush benchmark: 4 KiB write + fsync per op on ext4 -o dax, %d s per run, %s, TCG\n", seconds, q.Version)
	fmt.Fprintf(&out, "%-20s %-6s %9s %8s %8s %8s %8s %9s %9s\n", "case", "run", "ops/s", "p50 us", "p99 us", "write50", "fsync50", "req/op", "syncs/op")
	for i, c := range cases {
		if errs[i] != nil {
			fmt.Fprintf(&out, "%-20s FAILED: %v\n", c.Name, strings.SplitN(errs[i].Error(), "\n", 2)[0])
			continue
		}
		for _, r := range benchRuns(c.Devices) {
			br := results[i][fmt.Sprintf("d%dx%d", r[0], r[1])]
			ops := float64(max(br.AllOps, 1))
			fmt.Fprintf(&out, "%-20s %-6s %9.1f %8.0f %8.0f %8.0f %8.0f %9.2f %9.2f\n", c.Name, br.Tag, br.OpsPerSec, br.P50us, br.P99us, br.WriteP50, br.FsyncP50, br.Requests/ops, br.HostSyncs/ops)
		}
	}
	fmt.Fprintf(&out, "host raw 4 KiB pwrite+fdatasync on the backing filesystem: p50 %.0f us, p99 %.0f us (the physical limit of one host sync)\n", hp50, hp99)
	ratio := func(tag string, builtin, ours int) {
		if errs[builtin] != nil || errs[ours] != nil {
			fmt.Fprintf(&out, "guest flush ratio %s: unavailable (a case failed)\n", tag)
			return
		}
		b := results[builtin][map[string]string{"x1": "d1x1", "x4": "d1x4", "x16": "d1x16"}[tag]]
		o := results[ours][map[string]string{"x1": "d1x1", "x4": "d1x4", "x16": "d1x16"}[tag]]
		fmt.Fprintf(&out, "guest flush ratio %s: %.2f\n", tag, o.OpsPerSec/b.OpsPerSec)
	}
	ratio("x1", 0, 1)
	ratio("x4", 0, 1)
	ratio("x16", 0, 1)
	if errs[2] == nil && errs[3] == nil {
		fmt.Fprintf(&out, "guest flush ratio 4 devices x16: %.2f\n", results[3]["d4x16"].OpsPerSec/results[2]["d4x16"].OpsPerSec)
	}
	// Where one flush's time goes (ours, one thread, means over the
	// run): the guest measures write and fsync; the daemon reports how
	// many requests that fsync sent, the time from a request's arrival to
	// its completion, and the time in the host sync itself; what is left
	// of the guest's fsync is the guest's own work (ext4, DAX writeback)
	// plus the hop (virtqueue notify -> back-end -> used ring -> interrupt).
	if errs[1] == nil && herr == nil {
		br := results[1]["d1x1"]
		if br.Requests > 0 && br.AllOps > 0 && br.LatSec >= 0 {
			ops := float64(br.AllOps)
			fsyncUs := 1e6 / br.OpsPerSec * float64(br.Threads) // mean op time
			reqPerOp := br.Requests / ops
			inDaemonUs := br.LatSec / br.Requests * 1e6
			syncUs := 0.0
			if br.HostSyncs > 0 {
				syncUs = br.SyncSec / br.HostSyncs * 1e6
			}
			fmt.Fprintf(&out, "one op, ours x1 (means): %.0f us per write+fsync = %.2f flush requests x %.0f us in the daemon (of which host sync %.0f us, %.2f syncs per request) + %.0f us guest work and hops\n",
				fsyncUs, reqPerOp, inDaemonUs, syncUs, br.HostSyncs/max(br.Requests, 1), fsyncUs-reqPerOp*inDaemonUs)
			fmt.Fprintf(&out, "host raw fdatasync p50 %.0f us is the floor for one host sync\n", hp50)
		}
	}
	fmt.Fprintf(&out, "6.1 guests: virtio_pmem there has no SHMEM_REGION, and QEMU's generic vhost-user device can place the range nowhere else, so ours cannot run on 6.1; its built-in numbers show what several outstanding flushes per device give QEMU's thread pool\n")
	fmt.Print(out.String())
	for i, e := range errs {
		if e != nil {
			t.Errorf("%s: %v", cases[i].Name, e)
		}
	}
}
