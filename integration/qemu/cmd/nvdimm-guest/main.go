//go:build integration

// Command nvdimm-guest boots one throw-away Linux guest from the harness's
// cached kit and runs a shell script in it: the same machinery the
// integration suite uses, for `make demo` and for users who want to try a
// backing by hand.
//
//	go run -tags integration ./integration/qemu/cmd/nvdimm-guest \
//	    --script run.sh --share DIR [--console] [--timeout 5m] -- QEMU-ARGS...
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
	flag.Parse()
	if *script == "" || *share == "" {
		fmt.Fprintln(os.Stderr, "nvdimm-guest: --script and --share are required")
		os.Exit(2)
	}
	body, err := os.ReadFile(*script)
	if err != nil {
		fmt.Fprintln(os.Stderr, "nvdimm-guest:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	logf := func(f string, a ...any) { fmt.Fprintf(os.Stderr, "nvdimm-guest: "+f+"\n", a...) }
	kit, err := qemu.GetKit(ctx, logf)
	if err != nil {
		fmt.Fprintln(os.Stderr, "nvdimm-guest:", err)
		os.Exit(1)
	}
	accel := qemu.Accel(ctx, kit, logf)
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
	res, err := qemu.Boot(ctx, kit, accel, vm, *share)
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
