// Package fuzzbudget owns the fuzzing minimisation budget of the
// repository's test binaries: Main, called from a package's TestMain,
// lowers Go's default budget from 60 s to 2000 executions per input.
//
// Go minimises every input that finds new coverage, and its minimiser is
// quadratic in the input length. With the default, a worker that finds a
// long input (a JSON record, an info block) spends most of a 60 s run
// minimising it, and the run's execution count stalls: FuzzParseMeta,
// FuzzParseCatalog, FuzzParseQEMUTopology and FuzzParseDomain managed
// under 400 000 executions, most of their time reported at 0/s. 2000
// executions still cut trailing bytes and try removing each byte of a
// typical input. An explicit -fuzzminimizetime on the command line wins.
package fuzzbudget

import (
	"flag"
	"os"
	"testing"
)

// Budget is the minimisation budget Main sets.
const Budget = "2000x"

// Main sets the budget (unless -test.fuzzminimizetime was given) and runs
// the tests; it does not return.
func Main(m *testing.M) {
	flag.Parse()
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.fuzzminimizetime" })
	if !explicit {
		if err := flag.Set("test.fuzzminimizetime", Budget); err != nil {
			panic(err)
		}
	}
	os.Exit(m.Run())
}
