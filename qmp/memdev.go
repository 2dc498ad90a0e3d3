package qmp

import (
	"context"
	"encoding/json"
	"fmt"
)

// MemoryDevice is one member of query-memory-devices' answer, a union
// tagged by Type. NVDIMM, DIMM and VirtioPMEM are decoded; every other
// type ("virtio-mem", "sgx-epc", "hv-balloon", ...) is kept in Raw only.
type MemoryDevice struct {
	Type       string                `json:"type"`
	DIMM       *PCDIMMDeviceInfo     `json:"dimm,omitempty"`
	NVDIMM     *PCDIMMDeviceInfo     `json:"nvdimm,omitempty"`
	VirtioPMEM *VirtioPMEMDeviceInfo `json:"virtio_pmem,omitempty"`
	// Raw is the member's "data" exactly as QEMU sent it.
	Raw json.RawMessage `json:"data"`
}

// PCDIMMDeviceInfo describes a dimm or nvdimm.
type PCDIMMDeviceInfo struct {
	ID           string `json:"id,omitempty"`
	Addr         uint64 `json:"addr"`
	Size         uint64 `json:"size"` // for nvdimm: the backend minus the label area, aligned
	Slot         int    `json:"slot"`
	Node         int    `json:"node"`
	Memdev       string `json:"memdev"`
	Hotplugged   bool   `json:"hotplugged"`
	Hotpluggable bool   `json:"hotpluggable"`
}

// VirtioPMEMDeviceInfo describes a virtio-pmem device.
type VirtioPMEMDeviceInfo struct {
	ID      string `json:"id,omitempty"`
	MemAddr uint64 `json:"memaddr"`
	Size    uint64 `json:"size"`
	Memdev  string `json:"memdev"`
}

// ID is the device's id whatever its type ("" when it has none or the
// type is not decoded).
func (m MemoryDevice) ID() string {
	switch {
	case m.NVDIMM != nil:
		return m.NVDIMM.ID
	case m.DIMM != nil:
		return m.DIMM.ID
	case m.VirtioPMEM != nil:
		return m.VirtioPMEM.ID
	}
	var d struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(m.Raw, &d) == nil {
		return d.ID
	}
	return ""
}

// DecodeMemoryDevices decodes query-memory-devices' return value.
func DecodeMemoryDevices(raw []byte) ([]MemoryDevice, error) {
	var members []struct {
		Type string          `json:"type"`
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(raw, &members); err != nil {
		return nil, fmt.Errorf("%w: query-memory-devices: %v", ErrMalformed, err)
	}
	out := make([]MemoryDevice, 0, len(members))
	for i, mb := range members {
		if mb.Type == "" {
			return nil, fmt.Errorf("%w: query-memory-devices: member %d has no \"type\"", ErrMalformed, i)
		}
		if len(mb.Data) == 0 {
			return nil, fmt.Errorf("%w: query-memory-devices: member %d (%s) has no \"data\"", ErrMalformed, i, mb.Type)
		}
		m := MemoryDevice{Type: mb.Type, Raw: mb.Data}
		var target any
		switch mb.Type {
		case "dimm":
			m.DIMM = new(PCDIMMDeviceInfo)
			target = m.DIMM
		case "nvdimm":
			m.NVDIMM = new(PCDIMMDeviceInfo)
			target = m.NVDIMM
		case "virtio-pmem":
			m.VirtioPMEM = new(VirtioPMEMDeviceInfo)
			target = m.VirtioPMEM
		}
		if target != nil {
			if err := strictObject(mb.Data, target); err != nil {
				return nil, fmt.Errorf("%w: query-memory-devices: member %d (%s): %v", ErrMalformed, i, mb.Type, err)
			}
		}
		out = append(out, m)
	}
	return out, nil
}

// QueryMemoryDevices lists the VM's memory devices (query-memory-devices).
func (c *Client) QueryMemoryDevices(ctx context.Context) ([]MemoryDevice, error) {
	var raw json.RawMessage
	if err := c.Execute(ctx, "query-memory-devices", nil, &raw); err != nil {
		return nil, err
	}
	ds, err := DecodeMemoryDevices(raw)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", c.path, err)
	}
	return ds, nil
}

// FindMemoryDevice returns the device with id.
func FindMemoryDevice(ds []MemoryDevice, id string) (MemoryDevice, bool) {
	for _, d := range ds {
		if d.ID() == id {
			return d, true
		}
	}
	return MemoryDevice{}, false
}
