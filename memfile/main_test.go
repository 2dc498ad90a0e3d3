package memfile

import (
	"testing"

	"github.com/nvdimm-backend/nvdimm-backend/internal/fuzzbudget"
)

// TestMain lowers the fuzzer's minimisation budget (see fuzzbudget).
func TestMain(m *testing.M) { fuzzbudget.Main(m) }
