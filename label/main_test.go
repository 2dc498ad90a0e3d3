package label

import (
	"flag"
	"os"
	"testing"
)

// TestMain lowers the fuzzer's default minimisation budget for this
// package from 60 s to 2000 executions per input. Go minimises every
// input that finds new coverage, and its minimiser is quadratic in the
// input length; with the default, FuzzParseArea spent nearly all its time
// minimising (a few hundred executions in a 10 s run). 2000 executions
// still cut trailing bytes and try removing each byte of a typical input.
// An explicit -fuzzminimizetime on the command line wins.
func TestMain(m *testing.M) {
	flag.Parse()
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.fuzzminimizetime" })
	if !explicit {
		if err := flag.Set("test.fuzzminimizetime", "2000x"); err != nil {
			panic(err)
		}
	}
	os.Exit(m.Run())
}
