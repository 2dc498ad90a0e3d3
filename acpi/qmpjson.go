package acpi

import (
	"bytes"
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
	// The shape is the first byte's choice: an array is the bare reply,
	// anything else the wrapped one. (Trying the array and falling back
	// to the wrapper reported a bare array's bad field as a failure to
	// decode an array into the wrapper's struct type.)
	var raws []json.RawMessage
	if t := bytes.TrimLeft(b, " \t\r\n"); len(t) > 0 && t[0] == '[' {
		if err := json.Unmarshal(b, &raws); err != nil {
			return QEMUTopology{}, fmt.Errorf("acpi: query-memory-devices JSON: %w", err)
		}
	} else {
		var wrap struct {
			Return  []json.RawMessage `json:"return"`
			Capture *struct {
				Return []json.RawMessage `json:"return"`
			} `json:"query-memory-devices"`
		}
		if err := json.Unmarshal(b, &wrap); err != nil {
			return QEMUTopology{}, fmt.Errorf("acpi: query-memory-devices JSON: %w", err)
		}
		raws = wrap.Return
		if wrap.Capture != nil {
			raws = wrap.Capture.Return
		}
	}
	list := make([]dev, len(raws))
	for i, r := range raws {
		if err := json.Unmarshal(r, &list[i]); err != nil {
			return QEMUTopology{}, fmt.Errorf("acpi: query-memory-devices entry %d: %w", i, err)
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
