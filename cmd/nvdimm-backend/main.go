// Command nvdimm-backend is the host-side persistent-memory companion for
// QEMU/KVM. This package is a thin CLI: it turns flags into calls on the
// packages that do the work (memfile, label, acpi, flushhint, vhostuser,
// qmp, daemon) and prints their results, as text or with --json.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "nvdimm-backend:", err)
		os.Exit(1)
	}
}
