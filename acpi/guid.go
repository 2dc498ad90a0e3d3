package acpi

import (
	"fmt"

	"github.com/nvdimm-backend/nvdimm-backend/internal/guid"
)

// GUID is a 16-byte GUID in the EFI mixed-endian byte order ACPI stores:
// the first three groups little-endian, the last two as written.
type GUID = guid.GUID

// ParseGUID parses the canonical textual form into mixed-endian bytes.
func ParseGUID(s string) (GUID, error) {
	g, err := guid.Parse(s)
	if err != nil {
		return g, fmt.Errorf("acpi: %w", err)
	}
	return g, nil
}

var mustGUID = guid.MustParse

// Address range type GUIDs of SPA range structures (ACPI 6.x, 5.2.25.2).
var (
	GUIDVolatile         = mustGUID("7305944f-fdda-44e3-b16c-3f22d252e5d0")
	GUIDPersistent       = mustGUID("66f0d379-b4f3-4074-ac43-0d3318b78cdb")
	GUIDControlRegion    = mustGUID("92f701f6-13b4-405d-910b-299367e8234c")
	GUIDBlockDataWindow  = mustGUID("91af0530-5d86-470e-a6b0-0a2db9408249")
	GUIDVolatileDisk     = mustGUID("77ab535a-45fc-624b-5560-f7b281d1f96e")
	GUIDVolatileCD       = mustGUID("3d5abd30-4175-87ce-6d64-d2ade523c4bb")
	GUIDPersistentDisk   = mustGUID("5cea02c9-4d07-69d3-269f-4496fbe096f9")
	GUIDPersistentCD     = mustGUID("08018188-42cd-bb48-100f-5387d53ded3d")
	rangeTypeNames       = map[GUID]string{}
	rangeTypeDescription = map[GUID]string{}
)

func init() {
	for _, r := range []struct {
		g          GUID
		name, desc string
	}{
		{GUIDVolatile, "volatile", "volatile memory"},
		{GUIDPersistent, "pmem", "persistent memory"},
		{GUIDControlRegion, "dimm-control-region", "NVDIMM control region"},
		{GUIDBlockDataWindow, "block-data-window", "NVDIMM block data window"},
		{GUIDVolatileDisk, "volatile-disk", "RAM disk, volatile virtual disk"},
		{GUIDVolatileCD, "volatile-cd", "RAM disk, volatile virtual CD"},
		{GUIDPersistentDisk, "persistent-disk", "RAM disk, persistent virtual disk"},
		{GUIDPersistentCD, "persistent-cd", "RAM disk, persistent virtual CD"},
	} {
		rangeTypeNames[r.g] = r.name
		rangeTypeDescription[r.g] = r.desc
	}
}

// RangeTypeName is the short name Linux uses for a range GUID
// ("pmem", "volatile", ...) or "unknown".
func RangeTypeName(g GUID) string {
	if n, ok := rangeTypeNames[g]; ok {
		return n
	}
	return "unknown"
}

// isVirtualRange reports a RAM-disk range type (Linux registers these
// even with SPA index 0).
func isVirtualRange(g GUID) bool {
	return g == GUIDVolatileDisk || g == GUIDVolatileCD || g == GUIDPersistentDisk || g == GUIDPersistentCD
}
