package acpi

import (
	"encoding/json"
	"fmt"
)

// TopologyFromMemoryDevices builds a topology from QEMU's
// query-memory-devices reply: the bare array, a {"return": [...]}
// reply, or a capture holding it under "query-memory-devices". Only
// "nvdimm" entries count, in the order listed. QMP does not report
// unarmed or the machine's persistence: those stay false and "".
func TopologyFromMemoryDevices(b []byte) (QEMUTopology, error) {
	type dev struct {
		Type string `json:"type"`
		Data struct {
			Addr *uint64 `json:"addr"`
			Size *uint64 `json:"size"`
			Slot *int    `json:"slot"`
			Node uint32  `json:"node"`
		} `json:"data"`
	}
	var list []dev
	if err := json.Unmarshal(b, &list); err != nil {
		var wrap struct {
			Return  []dev `json:"return"`
			Capture *struct {
				Return []dev `json:"return"`
			} `json:"query-memory-devices"`
		}
		if err2 := json.Unmarshal(b, &wrap); err2 != nil {
			return QEMUTopology{}, fmt.Errorf("acpi: query-memory-devices JSON: %w", err2)
		}
		list = wrap.Return
		if wrap.Capture != nil {
			list = wrap.Capture.Return
		}
	}
	var t QEMUTopology
	for i, d := range list {
		if d.Type != "nvdimm" {
			continue
		}
		if d.Data.Addr == nil || d.Data.Size == nil || d.Data.Slot == nil {
			return QEMUTopology{}, fmt.Errorf("acpi: query-memory-devices entry %d: nvdimm without addr, size or slot", i)
		}
		t.DIMMs = append(t.DIMMs, QEMUDIMM{Slot: *d.Data.Slot, Addr: *d.Data.Addr, Size: *d.Data.Size, Node: d.Data.Node})
	}
	return t, t.Check()
}
