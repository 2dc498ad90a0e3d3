//go:build integration

// Command nvdimm-guest boots one throw-away Linux guest from the harness's
// cached kit and runs a shell script in it: the same machinery the
// integration suite uses, for `make demo` and for users who want to try a
// backing by hand.
//
//	go run -tags integration ./integration/qemu/cmd/nvdimm-guest \
//	    --script run.sh --share DIR [--qemu host|11] [--console] [--timeout 5m] -- QEMU-ARGS...
//	go run -tags integration ./integration/qemu/cmd/nvdimm-guest --prepare [--qemu 11]
//
// --qemu 11 boots QEMU 11.1 from the cached Debian forky root (built on
// first use, as root; about a minute) instead of the host's QEMU: the
// vhost-user virtio-pmem device needs it. --prepare only builds the guest
// kit (and with --qemu 11 the forky root) and prints what it has. Exit
// status 3: only QEMU 11.1 is unavailable (the kit is ready).
//
// The script runs with `set -ex` inside the guest, with DIR mounted on /host
// (files it writes there are visible on the host afterwards). The guest has
// ndctl, daxctl, mke2fs and busybox. Exit status: the script's.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"time"

	"github.com/nvdimm-backend/nvdimm-backend/integration/qemu"
)

func main() {
	script := flag.String("script", "", "guest shell script to run (required)")
	share := flag.String("share", "", "host directory shared with the guest as /host (required)")
	console := flag.Bool("console", false, "print the whole serial console (kernel messages too), not only the script's output")
	timeout := flag.Duration("timeout", 5*time.Minute, "kill the guest after this long")
	memory := flag.String("memory", "512M", "guest RAM")
	prefix := flag.String("prefix", "  guest| ", "prefix for the guest's output lines")
	which := flag.String("qemu", "host", "QEMU to boot: host (the installed qemu-system-x86_64) or 11 (QEMU 11.1 from the forky root)")
	prepare := flag.Bool("prepare", false, "only build the guest kit (and the QEMU 11.1 root with --qemu 11), then exit")
	flag.Parse()
	if *which != "host" && *which != "11" {
		fmt.Fprintf(os.Stderr, "nvdimm-guest: --qemu %q: want host or 11\n", *which)
		os.Exit(2)
	}
	if !*prepare && (*script == "" || *share == "") {
		fmt.Fprintln(os.Stderr, "nvdimm-guest: --script and --share are required")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	logf := func(f string, a ...any) { fmt.Fprintf(os.Stderr, "nvdimm-guest: "+f+"\n", a...) }
	// Packages first (one apt at a time), then the kit and the QEMU 11.1
	// root side by side: both are first-run builds (package downloads and
	// debootstrap) that are cached afterwards.
	if err := qemu.EnsureInstalled(ctx, logf); err != nil {
		fmt.Fprintln(os.Stderr, "nvdimm-guest:", err)
		os.Exit(1)
	}
	var q *qemu.QEMU
	var qerr error
	var wg sync.WaitGroup
	if *which == "11" {
		wg.Go(func() { q, qerr = qemu.GetQEMU11(ctx, logf) })
	}
	kit, err := qemu.GetKit(ctx, logf)
	var accel string
	if err == nil {
		accel = qemu.Accel(ctx, kit, logf) // the KVM probe, if any, runs beside the root build
	}
	wg.Wait()
	if err != nil {
		fmt.Fprintln(os.Stderr, "nvdimm-guest:", err)
		os.Exit(1)
	}
	if qerr != nil {
		fmt.Fprintln(os.Stderr, "nvdimm-guest: QEMU 11.1:", qerr)
		os.Exit(3)
	}
	if *prepare {
		fmt.Printf("guest kit: %s (accelerator: %s)\n", kit.Dir, accel)
		if q != nil {
			fmt.Printf("%s: %s\n", q, q.Version)
		}
		return
	}
	body, err := os.ReadFile(*script)
	if err != nil {
		fmt.Fprintln(os.Stderr, "nvdimm-guest:", err)
		os.Exit(2)
	}
	vm := &qemu.VM{Name: "nvdimm-guest", Memory: *memory, Script: string(body), ExtraArgs: flag.Args()}
	if *console {
		vm.Console = os.Stdout
	} else {
		sl := &scriptLines{}
		sl.mu.Lock()
		sl.w, sl.prefix = os.Stdout, *prefix
		sl.mu.Unlock()
		vm.Console = sl
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	res, err := qemu.BootWith(ctx, kit, q, accel, vm, *share, qemu.BootOptions{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "nvdimm-guest:", err)
		if res != nil && !*console {
			lines := strings.Split(strings.TrimRight(res.Console, "\n"), "\n")
			fmt.Fprintln(os.Stderr, "--- console tail ---")
			fmt.Fprintln(os.Stderr, strings.Join(lines[max(0, len(lines)-40):], "\n"))
		}
		os.Exit(1)
	}
	os.Exit(res.ExitCode)
}

// scriptLines copies only the script's output (between the begin and exit
// markers) to w, line by line, with a prefix; `+ ` trace lines are kept.
type scriptLines struct {
	mu sync.Mutex
	// +checklocks:mu
	w io.Writer
	// +checklocks:mu
	prefix string
	// +checklocks:mu
	buf bytes.Buffer
	// +checklocks:mu
	on bool
}

func (s *scriptLines) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Write(p)
	for {
		line, err := s.buf.ReadString('\n')
		if err != nil {
			s.buf.Reset()
			s.buf.WriteString(line)
			return len(p), nil
		}
		line = strings.TrimRight(line, "\r\n")
		switch {
		case strings.Contains(line, "@@NVDIMM-BEGIN@@"):
			s.on = true
		case strings.Contains(line, "@@NVDIMM-EXIT"):
			s.on = false
		case s.on && !strings.HasPrefix(line, "+ . /host/run.sh"):
			fmt.Fprintf(s.w, "%s%s\n", s.prefix, line)
		}
	}
}
