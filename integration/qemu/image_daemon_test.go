//go:build integration

package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestImageDaemonSharedReadOnly: the daemon hot-adds one catalogued image
// to two running guests (one `device create --image` per guest, attached
// as nvdimms). Both mount it read-only with DAX, see the catalog's
// checksums and cannot write; while they run, `image rm` is refused
// (shared locks) and a virtio-pmem attach of the image is refused; each
// guest's exit releases its device; the host file is unchanged and the
// image can then be removed.
//
// Not parallel: the guests must run at the same time.
func TestImageDaemonSharedReadOnly(t *testing.T) {
	if maxGuests() < 2 {
		t.Skip("needs two guests at once (NVDIMM_GUESTS=1)")
	}
	dir := t.TempDir()
	ctl := startDaemon(t, dir)
	cs := []string{"--control-socket", ctl}
	cat := filepath.Join(dir, "state", "images") // the daemon's default catalog
	tree, files := imageTree(t, 24<<20)
	var img imageRecord
	hostJSON(t, &img, "image", "--catalog", cat, "build", "base", "--from-dir", tree)
	removed := false
	t.Cleanup(func() {
		if !removed {
			hostTry(t, "image", "--catalog", cat, "rm", "base")
		}
	})

	names := []string{"base-vm0", "base-vm1"}
	for _, n := range names {
		var dv struct {
			Image    string `json:"image"`
			ReadOnly bool   `json:"readonly"`
			Backing  string `json:"backing"`
		}
		hostJSON(t, &dv, append([]string{"device", "create", n, "--image", "base"}, cs...)...)
		if dv.Image != "base" || !dv.ReadOnly || dv.Backing != img.Image.Path {
			t.Fatalf("device %s: %+v", n, dv)
		}
	}

	var whileRunning []error
	var refusals []string
	measure := func(pids []int, paths []string) {
		// Both guests have the image mounted: it cannot leave the catalog.
		if o, e, err := hostTry(t, "image", "--catalog", cat, "rm", "base"); err == nil {
			whileRunning = append(whileRunning, fmt.Errorf("image rm while two guests use it succeeded: %s", o))
		} else {
			refusals = append(refusals, "image rm: "+strings.TrimSpace(e))
		}
		var st struct {
			LockedBy string `json:"locked_by"`
		}
		if o, _, err := hostTry(t, "--json", "image", "--catalog", cat, "show", "base"); err != nil || json.Unmarshal([]byte(o), &st) != nil || st.LockedBy != "shared" {
			whileRunning = append(whileRunning, fmt.Errorf("image show while attached: %v %s", err, o))
		}
	}
	r := newRendezvous(len(names), measure)
	results := make([]*Result, len(names))
	// The second guest attaches its device only after the first guest's
	// hook has checked that a virtio-pmem attach of that (not yet
	// attached) device is refused as read-only; otherwise the refusal can
	// be "already attached" instead, depending on which guest boots first.
	var checkOnce sync.Once
	checked := make(chan struct{})
	var wg sync.WaitGroup
	for i, n := range names {
		vm := &VM{
			Name:      n,
			QMPSocket: filepath.Join(dir, n+".qmp"),
			// The image is hot-added once the guest's kernel is up (a
			// device added while the firmware runs was not seen).
			Script:  "touch /host/booted\n" + guestReadScript,
			Timeout: 6 * time.Minute,
		}
		ready := r.started(img.Image.Path)
		hook := func(ctx context.Context, vm *VM) error {
			if err := waitFile(ctx, filepath.Join(vm.Share, "booted")); err != nil {
				return err
			}
			if i == 0 {
				defer checkOnce.Do(func() { close(checked) })
			} else {
				select {
				case <-checked:
				case <-ctx.Done():
					return fmt.Errorf("waiting for the first guest's refusal check: %w", ctx.Err())
				}
			}
			if o, e, err := hostTry(t, append([]string{"device", "attach", n, "--qmp", vm.QMPSocket, "--as", "nvdimm"}, cs...)...); err != nil {
				return fmt.Errorf("device attach %s: %v\n%s%s", n, err, o, e)
			}
			if i == 0 {
				// A writable kind is refused with the reason.
				if _, e, err := hostTry(t, append([]string{"device", "attach", names[1], "--qmp", vm.QMPSocket, "--as", "virtio-pmem"}, cs...)...); err == nil || !strings.Contains(e, "read-only") {
					return fmt.Errorf("virtio-pmem attach of an image: %v %s", err, e)
				}
			}
			return nil
		}
		vm.Started = func(ctx context.Context, vm *VM) error {
			if err := hook(ctx, vm); err != nil {
				r.fail(vm)
				return err
			}
			return ready(ctx, vm)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = bootForImage(t, vm)
		}()
	}
	wg.Wait()
	for i, res := range results {
		if res == nil {
			t.Fatalf("guest %s did not run", names[i])
		}
		if res.ExitCode != 0 {
			t.Fatalf("guest %s: script exited %d\n%s\n--- console tail ---\n%s", names[i], res.ExitCode, tail(res.Output, 60), tail(res.Console, 40))
		}
		checkGuest(t, names[i], res, img, files)
	}
	if err := errors.Join(whileRunning...); err != nil {
		t.Error(err)
	}
	for _, s := range refusals {
		t.Logf("refused as expected: %s", s)
	}
	// Both guests exited: the daemon released both devices.
	deadline := time.Now().Add(20 * time.Second)
	for _, n := range names {
		for {
			var dv struct {
				Attached any `json:"attached"`
			}
			o := host(t, append([]string{"--json", "device", "show", n}, cs...)...)
			if json.Unmarshal([]byte(o), &dv) == nil && dv.Attached == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("device %s still attached after its guest exited: %s", n, o)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	if out := host(t, "--json", "image", "--catalog", cat, "verify", "base"); !strings.Contains(out, `"ok": true`) {
		t.Errorf("image verify after the guests: %s", out)
	}
	host(t, "image", "--catalog", cat, "rm", "base")
	removed = true
}
