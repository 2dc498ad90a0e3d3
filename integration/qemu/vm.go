//go:build integration

package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// NVDIMM describes one emulated NVDIMM backed by a host file.
type NVDIMM struct {
	Path      string // backing file
	Size      uint64 // bytes; 0 means the file's size
	LabelSize uint64 // label-size property; 0 means no label area
	Slot      int    // -1 lets QEMU choose
	Node      int    // proximity domain (guest NUMA node); 0 unless the VM has nodes
	Unarmed   bool   // unarmed=on, and readonly=on on the backend
	Align     uint64 // backend align; 0 means 2 MiB
}

// VM is one guest boot.
type VM struct {
	Name        string                                  // used for file names; defaults to the test name
	Machine     string                                  // machine type; default q35
	Memory      string                                  // -m size; default 512M
	Persistence string                                  // machine nvdimm-persistence ("" = not set, "cpu", "mem-ctrl")
	NVDIMMs     []NVDIMM                                // added with -object/-device pairs
	ExtraArgs   []string                                // further QEMU arguments (e.g. from `nvdimm-backend qemu-args`)
	Script      string                                  // guest shell script, run with `set -ex` from the share
	Files       map[string]string                       // extra files into the share: name -> host path (hard-linked or copied)
	Timeout     time.Duration                           // whole-run timeout; default 5 minutes
	QMPSocket   string                                  // when set, QEMU listens for QMP on this unix socket
	Started     func(ctx context.Context, vm *VM) error // called after QEMU started (hotplug scenarios); ctx ends when QEMU exits
	Console     io.Writer                               // when set, the console is also copied here as it arrives
	Share       string                                  // set by the harness: the host directory shared as /host
	PID         int                                     // set by the harness before Started: the QEMU process
}

var (
	guestSlots = make(chan struct{}, maxGuests())
	accelOnce  sync.Once
	accelVal   string
)

func maxGuests() int {
	if n, err := strconv.Atoi(os.Getenv("NVDIMM_GUESTS")); err == nil && n > 0 && n <= 2 {
		return n
	}
	return 2
}

// Accel decides between KVM and TCG once: NVDIMM_ACCEL overrides; otherwise
// KVM is used only when /dev/kvm opens and a probe boot succeeds (the result
// is cached in the kit directory, keyed by the QEMU version).
func Accel(ctx context.Context, kit *Kit, logf func(string, ...any)) string {
	accelOnce.Do(func() {
		accelVal = "tcg"
		if a := os.Getenv("NVDIMM_ACCEL"); a == "tcg" || a == "kvm" {
			accelVal = a
			return
		}
		fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return
		}
		unix.Close(fd)
		qv, _ := exec.CommandContext(ctx, "qemu-system-x86_64", "--version").Output()
		ver := strings.SplitN(string(qv), "\n", 2)[0]
		probeFile := filepath.Join(kit.Dir, "accel-probe")
		if b, err := os.ReadFile(probeFile); err == nil {
			if a, v, ok := strings.Cut(string(b), "\t"); ok && v == ver {
				accelVal = a
				return
			}
		}
		logf("probing KVM with a test boot (%s)", ver)
		share, err := os.MkdirTemp("", "nvdimm-kvm-probe-")
		if err != nil {
			return
		}
		defer os.RemoveAll(share)
		// A working KVM boots to the marker in seconds; a broken one (such as
		// kvm-pvm with a stock kernel) reports an internal error and pauses,
		// so stop at the first such message instead of waiting it out.
		pctx, cancel := context.WithTimeout(ctx, 45*time.Second)
		defer cancel()
		watch := &cancelOn{}
		watch.mu.Lock()
		watch.needle, watch.cancel = "KVM internal error", cancel
		watch.mu.Unlock()
		res, err := boot(pctx, kit, "kvm", &VM{Name: "kvm-probe", Script: "echo probe-ok", Console: watch}, share)
		a := "tcg"
		if err == nil && res.ExitCode == 0 && strings.Contains(res.Output, "probe-ok") {
			a = "kvm"
		}
		logf("KVM probe: using %s", a)
		os.WriteFile(probeFile, []byte(a+"\t"+ver), 0o644) //nolint:errcheck
		accelVal = a
	})
	return accelVal
}

// KernelCmdline is the guests' kernel command line. no_timer_check: on a
// loaded host a TCG guest can miss the IO-APIC timer check's ticks and
// panic at boot ("IO-APIC + timer doesn't work!"); the check proves
// nothing about an emulated machine, so it is skipped.
const KernelCmdline = "console=ttyS0 panic=-1 loglevel=4 rdinit=/init no_timer_check"

// Args returns the QEMU arguments (without accel, kernel and share) for vm.
func (vm *VM) Args() []string {
	mem := vm.Memory
	if mem == "" {
		mem = "512M"
	}
	machine := vm.Machine
	if machine == "" {
		machine = "q35"
	}
	machine += ",nvdimm=on"
	if vm.Persistence != "" {
		machine += ",nvdimm-persistence=" + vm.Persistence
	}
	args := []string{"-machine", machine, "-m", mem + ",slots=8,maxmem=32G", "-smp", "1"}
	for i, d := range vm.NVDIMMs {
		align := d.Align
		if align == 0 {
			align = 2 << 20
		}
		obj := fmt.Sprintf("memory-backend-file,id=nvmem%d,share=on,mem-path=%s,align=%d", i, d.Path, align)
		size := d.Size
		if size == 0 {
			if fi, err := os.Stat(d.Path); err == nil {
				size = uint64(fi.Size())
			}
		}
		obj += fmt.Sprintf(",size=%d", size)
		if d.Unarmed {
			obj += ",readonly=on"
		}
		dev := fmt.Sprintf("nvdimm,id=nv%d,memdev=nvmem%d", i, i)
		if d.LabelSize != 0 {
			dev += fmt.Sprintf(",label-size=%d", d.LabelSize)
		}
		if d.Slot >= 0 {
			dev += fmt.Sprintf(",slot=%d", d.Slot)
		}
		if d.Node != 0 {
			dev += fmt.Sprintf(",node=%d", d.Node)
		}
		if d.Unarmed {
			dev += ",unarmed=on"
		}
		args = append(args, "-object", obj, "-device", dev)
	}
	return append(args, vm.ExtraArgs...)
}

// Boot runs vm with the kit on the host's QEMU, sharing the directory
// share as /host, and waits for it (or for ctx to end). It takes one of the
// two guest slots.
func Boot(ctx context.Context, kit *Kit, accel string, vm *VM, share string) (*Result, error) {
	return BootWith(ctx, kit, nil, accel, vm, share, BootOptions{})
}

// prepareShare writes the guest's script into the 9p share and links (or
// copies, across filesystems) the files the guest needs there.
func prepareShare(vm *VM, share string) error {
	if err := os.WriteFile(filepath.Join(share, "run.sh"), []byte(vm.Script+"\n"), 0o644); err != nil {
		return err
	}
	for name, src := range vm.Files {
		dst := filepath.Join(share, name)
		os.Remove(dst)
		if err := os.Link(src, dst); err != nil {
			fi, serr := os.Stat(src)
			if serr != nil {
				return fmt.Errorf("share file %s: %w", src, serr)
			}
			if err := copyFile(src, dst, fi.Mode().Perm()); err != nil {
				return err
			}
		}
	}
	return nil
}

// boot runs one QEMU process to completion (or until ctx ends) without
// taking a guest slot (the KVM probe runs inside Accel, before any slot).
func boot(ctx context.Context, kit *Kit, accel string, vm *VM, share string) (*Result, error) {
	return runGuest(ctx, kit, nil, accel, vm, share, BootOptions{})
}

// runGuest runs one QEMU process (q; nil is the host's) to completion or until
// ctx ends. A failing Started hook kills the guest at once: the guest may
// be waiting for a host step that will never come.
func runGuest(ctx context.Context, kit *Kit, q *QEMU, accel string, vm *VM, share string, o BootOptions) (*Result, error) {
	if err := prepareShare(vm, share); err != nil {
		return nil, err
	}
	kernel, initrd := kit.Kernel, kit.Initrd
	if o.Kernel != "" {
		kernel = o.Kernel
	}
	if o.Initrd != "" {
		initrd = o.Initrd
	}
	args := []string{"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio"}
	if !o.AllowReboot {
		args = append(args, "-no-reboot")
	}
	if accel == "kvm" {
		args = append(args, "-accel", "kvm", "-cpu", "host")
	} else {
		args = append(args, "-accel", "tcg", "-cpu", "max")
	}
	cmdline := KernelCmdline
	if o.Append != "" {
		cmdline += " " + o.Append
	}
	args = append(args,
		"-kernel", kernel, "-initrd", initrd, "-append", cmdline,
		"-fsdev", "local,id=share,path="+share+",security_model=none",
		"-device", "virtio-9p-pci,fsdev=share,mount_tag=host",
	)
	if vm.QMPSocket != "" {
		args = append(args, "-qmp", "unix:"+vm.QMPSocket+",server=on,wait=off")
	}
	args = append(args, vm.Args()...)
	cmd := q.Command(args...)
	var console lockedBuffer
	var w io.Writer = &console
	if vm.Console != nil {
		w = io.MultiWriter(&console, vm.Console)
	}
	cmd.Stdout = w
	cmd.Stderr = w
	vm.Share = share
	cmd.SysProcAttr = &unix.SysProcAttr{Setpgid: true, Pdeathsig: unix.SIGKILL}
	start := time.Now()
	fmt.Fprintf(&console, "+ %s: qemu-system-x86_64 %s\n", q, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", q, err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	vm.PID = cmd.Process.Pid
	var startedErr error
	if vm.Started != nil {
		if startedErr = runStarted(ctx, vm, exited); startedErr != nil {
			unix.Kill(-cmd.Process.Pid, unix.SIGKILL) //nolint:errcheck
		}
	}
	select {
	case <-exited:
	case <-ctx.Done():
		unix.Kill(-cmd.Process.Pid, unix.SIGKILL) //nolint:errcheck
		<-exited
		waitErr = fmt.Errorf("guest %s: %w after %s", vm.Name, ctx.Err(), time.Since(start).Round(time.Second))
	}
	res := &Result{ExitCode: -1, Console: console.String(), Share: share, Accel: accel, Elapsed: time.Since(start)}
	parseMarkers(res)
	if startedErr != nil {
		return res, startedErr
	}
	if waitErr != nil {
		var ee *exec.ExitError
		if !errors.As(waitErr, &ee) || res.ExitCode < 0 {
			return res, fmt.Errorf("%s: %w", q, waitErr)
		}
	}
	if res.ExitCode < 0 {
		return res, fmt.Errorf("guest %s: no exit marker on the console (boot failed?)", vm.Name)
	}
	return res, nil
}

// errQEMUExited is the cause of a Started hook's context ending because
// QEMU exited.
var errQEMUExited = errors.New("QEMU exited")

// runStarted calls vm.Started with a context that also ends when QEMU
// exits, so that a hook waiting for the guest stops as soon as the guest
// is gone instead of waiting out the whole timeout.
func runStarted(ctx context.Context, vm *VM, exited <-chan struct{}) error {
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-exited:
			cancel(errQEMUExited)
		case <-sctx.Done():
		}
	}()
	err := vm.Started(sctx, vm)
	if err != nil && errors.Is(context.Cause(sctx), errQEMUExited) {
		err = fmt.Errorf("guest %s: QEMU exited while the host side was waiting: %w", vm.Name, err)
	}
	return err
}

type lockedBuffer struct {
	mu sync.Mutex
	// +checklocks:mu
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// cancelOn calls cancel once needle appears in what is written to it.
type cancelOn struct {
	mu sync.Mutex
	// +checklocks:mu
	seen []byte
	// +checklocks:mu
	needle string
	// +checklocks:mu
	cancel func()
}

func (c *cancelOn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seen = append(c.seen, p...)
	if bytes.Contains(c.seen, []byte(c.needle)) {
		c.cancel()
	}
	if len(c.seen) > 4096 {
		c.seen = append(c.seen[:0], c.seen[len(c.seen)-len(c.needle):]...)
	}
	return len(p), nil
}
