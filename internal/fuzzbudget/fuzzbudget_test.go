package fuzzbudget

import (
	"flag"
	"os"
	"strings"
	"testing"
)

func TestMain(m *testing.M) { Main(m) }

// TestBudgetSet: after Main the test binary's minimisation budget is
// Budget, unless the command line gave -test.fuzzminimizetime.
func TestBudgetSet(t *testing.T) {
	f := flag.Lookup("test.fuzzminimizetime")
	if f == nil {
		t.Fatal("the testing package has no -test.fuzzminimizetime flag")
	}
	for _, a := range os.Args[1:] {
		if strings.Contains(a, "fuzzminimizetime") {
			if f.Value.String() == Budget {
				t.Fatalf("an explicit %s was overridden", a)
			}
			return
		}
	}
	if got := f.Value.String(); got != Budget {
		t.Fatalf("budget %q, want %q", got, Budget)
	}
}
