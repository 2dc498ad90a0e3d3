package qemu

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// This file holds the harness pieces that need no guest (and no build
// tag), so that `make unit` tests them even where QEMU cannot run.

// Markers printed by /init on the serial console.
const (
	markBegin = "@@NVDIMM-BEGIN@@"
	markExit  = "@@NVDIMM-EXIT "
	markEnd   = "@@NVDIMM-END@@"
)

// Result is what a guest run produced.
type Result struct {
	ExitCode int    // exit status of the guest script; -1 when no marker was seen
	Console  string // the serial console
	Output   string // console text between the begin and exit markers
	Share    string // host directory shared as /host
	Accel    string // tcg or kvm
	Elapsed  time.Duration
}

// Read returns a file the guest wrote into the share.
func (r *Result) Read(name string) ([]byte, error) {
	return os.ReadFile(filepath.Join(r.Share, name))
}

var exitRE = regexp.MustCompile(regexp.QuoteMeta(markExit) + `(-?\d+)@@`)

// parseMarkers fills res.Output and res.ExitCode from the console: the exit
// code counts only when the begin, exit and end markers are all there.
func parseMarkers(res *Result) {
	c := strings.ReplaceAll(res.Console, "\r\n", "\n")
	b := strings.Index(c, markBegin)
	if b < 0 {
		return
	}
	rest := c[b+len(markBegin):]
	m := exitRE.FindStringSubmatchIndex(rest)
	if m == nil {
		return
	}
	res.Output = strings.TrimPrefix(rest[:m[0]], "\n")
	code, err := strconv.Atoi(rest[m[2]:m[3]])
	if err != nil || !strings.Contains(rest[m[1]:], markEnd) {
		// An exit status that does not fit an int is no status (Atoi
		// would give the clamped value, a code the guest never printed).
		res.ExitCode = -1
		return
	}
	res.ExitCode = code
}
