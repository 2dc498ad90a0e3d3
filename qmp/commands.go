package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// ErrInvalidArgument is wrapped by the helpers' argument checks, which
// run before anything is sent.
var ErrInvalidArgument = errors.New("invalid argument")

// checkID applies QEMU's rule for ids (id_wellformed): a letter, then
// letters, digits, '-', '.' or '_'.
func checkID(field, id string) error {
	if id == "" {
		return fmt.Errorf("%w: %s is empty", ErrInvalidArgument, field)
	}
	if len(id) > 128 {
		return fmt.Errorf("%w: %s %q is longer than 128 bytes", ErrInvalidArgument, field, id[:32]+"...")
	}
	for i := 0; i < len(id); i++ {
		ch := id[i]
		letter := (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')
		ok := letter || (i > 0 && ((ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '_'))
		if !ok {
			return fmt.Errorf("%w: %s %q is not a QEMU id (a letter, then letters, digits, '-', '.', '_'): byte %d", ErrInvalidArgument, field, id, i)
		}
	}
	return nil
}

// CheckID reports whether id is acceptable to QEMU as an object, device
// or chardev id; the error names field.
func CheckID(field, id string) error { return checkID(field, id) }

func isPow2(v uint64) bool { return v != 0 && v&(v-1) == 0 }

// MemoryBackendFile is a memory-backend-file object.
type MemoryBackendFile struct {
	ID      string // object id, used as a device's memdev
	MemPath string // backing file or device (mem-path)
	Size    uint64 // bytes mapped from MemPath
	Share   bool   // MAP_SHARED: guest writes reach the file
	// Align is the mapping alignment (0: QEMU's default); for DAX
	// devices and guest namespaces, 2 MiB.
	Align    uint64
	PMem     bool // mem-path is real persistent memory (pmem=on)
	ReadOnly bool // map read-only (readonly=on); nvdimm then needs Unarmed
}

func (b MemoryBackendFile) args() (map[string]any, error) {
	if err := checkID("memory backend id", b.ID); err != nil {
		return nil, err
	}
	if b.MemPath == "" {
		return nil, fmt.Errorf("%w: memory backend %s: mem-path is empty", ErrInvalidArgument, b.ID)
	}
	if b.Size == 0 {
		return nil, fmt.Errorf("%w: memory backend %s: size is 0", ErrInvalidArgument, b.ID)
	}
	if b.Align != 0 && !isPow2(b.Align) {
		return nil, fmt.Errorf("%w: memory backend %s: align %d is not a power of two", ErrInvalidArgument, b.ID, b.Align)
	}
	a := map[string]any{
		"qom-type": "memory-backend-file",
		"id":       b.ID,
		"mem-path": b.MemPath,
		"size":     b.Size,
		"share":    b.Share,
	}
	if b.Align != 0 {
		a["align"] = b.Align
	}
	if b.PMem {
		a["pmem"] = true
	}
	if b.ReadOnly {
		a["readonly"] = true
	}
	return a, nil
}

// ObjectAddMemoryBackendFile creates a memory-backend-file (object-add).
func (c *Client) ObjectAddMemoryBackendFile(ctx context.Context, b MemoryBackendFile) error {
	a, err := b.args()
	if err != nil {
		return fmt.Errorf("qmp %s: object-add: %w", c.path, err)
	}
	return c.Execute(ctx, "object-add", a, nil)
}

// ObjectDel deletes object id (object-del). QEMU refuses while a device
// still uses it.
func (c *Client) ObjectDel(ctx context.Context, id string) error {
	if err := checkID("object id", id); err != nil {
		return fmt.Errorf("qmp %s: object-del: %w", c.path, err)
	}
	return c.Execute(ctx, "object-del", map[string]any{"id": id}, nil)
}

// Device is a device DeviceAdd can create: NVDIMMDevice,
// VirtioPMEMPCIDevice, VhostUserTestDevicePCI or GenericDevice.
type Device interface {
	// DeviceArgs returns device_add's arguments, or an error wrapping
	// ErrInvalidArgument.
	DeviceArgs() (map[string]any, error)
}

// NVDIMMDevice is an nvdimm device on the memory bus.
type NVDIMMDevice struct {
	ID     string
	Memdev string // memory backend id
	// LabelSize is the label area at the end of the backend (0: no label
	// area); QEMU wants at least 128 KiB.
	LabelSize uint64
	Unarmed   bool    // required with a read-only backend
	Slot      *int    // nil: first free slot
	Node      *uint32 // nil: node 0
}

// nvdimmMinLabelSize is QEMU's MIN_NAMESPACE_LABEL_SIZE.
const nvdimmMinLabelSize = 128 << 10

// DeviceArgs implements Device.
func (d NVDIMMDevice) DeviceArgs() (map[string]any, error) {
	if err := checkID("device id", d.ID); err != nil {
		return nil, err
	}
	if err := checkID("nvdimm "+d.ID+" memdev", d.Memdev); err != nil {
		return nil, err
	}
	if d.LabelSize != 0 && d.LabelSize < nvdimmMinLabelSize {
		return nil, fmt.Errorf("%w: nvdimm %s: label-size %d is below QEMU's minimum of %d", ErrInvalidArgument, d.ID, d.LabelSize, nvdimmMinLabelSize)
	}
	a := map[string]any{"driver": "nvdimm", "id": d.ID, "memdev": d.Memdev}
	if d.LabelSize != 0 {
		a["label-size"] = d.LabelSize
	}
	if d.Unarmed {
		a["unarmed"] = true
	}
	if d.Slot != nil {
		if *d.Slot < 0 {
			return nil, fmt.Errorf("%w: nvdimm %s: slot %d is negative", ErrInvalidArgument, d.ID, *d.Slot)
		}
		a["slot"] = *d.Slot
	}
	if d.Node != nil {
		a["node"] = *d.Node
	}
	return a, nil
}

// pciPlacement adds bus and addr when set.
func pciPlacement(a map[string]any, id, bus, addr string) error {
	if bus != "" {
		if err := checkID("device "+id+" bus", bus); err != nil {
			return err
		}
		a["bus"] = bus
	}
	if addr != "" {
		if strings.ContainsAny(addr, ",= ") {
			return fmt.Errorf("%w: device %s: addr %q is not a PCI slot[.function]", ErrInvalidArgument, id, addr)
		}
		a["addr"] = addr
	}
	return nil
}

// VirtioPMEMPCIDevice is QEMU's built-in virtio-pmem on PCI.
type VirtioPMEMPCIDevice struct {
	ID     string
	Memdev string
	Bus    string // PCI bus or root port id ("" lets QEMU choose)
	Addr   string // slot[.function] on Bus ("" lets QEMU choose)
}

// DeviceArgs implements Device.
func (d VirtioPMEMPCIDevice) DeviceArgs() (map[string]any, error) {
	if err := checkID("device id", d.ID); err != nil {
		return nil, err
	}
	if err := checkID("virtio-pmem-pci "+d.ID+" memdev", d.Memdev); err != nil {
		return nil, err
	}
	a := map[string]any{"driver": "virtio-pmem-pci", "id": d.ID, "memdev": d.Memdev}
	if err := pciPlacement(a, d.ID, d.Bus, d.Addr); err != nil {
		return nil, err
	}
	return a, nil
}

// VirtioIDPMEM is virtio-pmem's device id.
const VirtioIDPMEM = 27

// VhostUserTestDevicePCI is QEMU's generic vhost-user front-end (QEMU
// 10.2 and later), whose device model lives in the vhost-user back-end.
type VhostUserTestDevicePCI struct {
	ID         string
	Chardev    string // the socket chardev to the back-end
	VirtioID   uint16 // VirtioIDPMEM for virtio-pmem
	NumVQs     uint16 // 0: QEMU's default (1)
	VQSize     uint32 // 0: QEMU's default
	ConfigSize uint32 // bytes of device config space (16 for virtio-pmem)
	Bus        string
	Addr       string
}

// DeviceArgs implements Device.
func (d VhostUserTestDevicePCI) DeviceArgs() (map[string]any, error) {
	if err := checkID("device id", d.ID); err != nil {
		return nil, err
	}
	if err := checkID("vhost-user device "+d.ID+" chardev", d.Chardev); err != nil {
		return nil, err
	}
	if d.VirtioID == 0 {
		return nil, fmt.Errorf("%w: vhost-user device %s: virtio-id is 0", ErrInvalidArgument, d.ID)
	}
	if d.VQSize != 0 && (!isPow2(uint64(d.VQSize)) || d.VQSize > 32768) {
		return nil, fmt.Errorf("%w: vhost-user device %s: vq_size %d is not a power of two up to 32768", ErrInvalidArgument, d.ID, d.VQSize)
	}
	a := map[string]any{
		"driver":    "vhost-user-test-device-pci",
		"id":        d.ID,
		"chardev":   d.Chardev,
		"virtio-id": d.VirtioID,
	}
	if d.NumVQs != 0 {
		a["num_vqs"] = d.NumVQs
	}
	if d.VQSize != 0 {
		a["vq_size"] = d.VQSize
	}
	if d.ConfigSize != 0 {
		a["config_size"] = d.ConfigSize
	}
	if err := pciPlacement(a, d.ID, d.Bus, d.Addr); err != nil {
		return nil, err
	}
	return a, nil
}

// GenericDevice is any other device: Driver, ID and QEMU properties as
// JSON values.
type GenericDevice struct {
	Driver string
	ID     string
	Props  map[string]any
}

// DeviceArgs implements Device.
func (d GenericDevice) DeviceArgs() (map[string]any, error) {
	if d.Driver == "" {
		return nil, fmt.Errorf("%w: device driver is empty", ErrInvalidArgument)
	}
	if err := checkID("device id", d.ID); err != nil {
		return nil, err
	}
	a := map[string]any{}
	for k, v := range d.Props {
		a[k] = v
	}
	a["driver"], a["id"] = d.Driver, d.ID
	return a, nil
}

// DeviceAdd creates dev (device_add).
func (c *Client) DeviceAdd(ctx context.Context, dev Device) error {
	if dev == nil {
		return fmt.Errorf("qmp %s: device_add: %w: no device", c.path, ErrInvalidArgument)
	}
	a, err := dev.DeviceArgs()
	if err != nil {
		return fmt.Errorf("qmp %s: device_add: %w", c.path, err)
	}
	return c.Execute(ctx, "device_add", a, nil)
}

// DeviceDel asks QEMU to unplug device id (device_del). Success only
// means the request was accepted: removal completes with a
// DEVICE_DELETED event. QEMU refuses it for nvdimm and virtio-pmem.
func (c *Client) DeviceDel(ctx context.Context, id string) error {
	if err := checkID("device id", id); err != nil {
		return fmt.Errorf("qmp %s: device_del: %w", c.path, err)
	}
	return c.Execute(ctx, "device_del", map[string]any{"id": id}, nil)
}

// DeviceDelWait unplugs device id and waits, within ctx, for QEMU's
// DEVICE_DELETED event for it (the guest must cooperate for PCI devices).
// QEMU's refusal is returned as is.
func (c *Client) DeviceDelWait(ctx context.Context, id string) error {
	sub := c.Subscribe(16, "DEVICE_DELETED")
	defer sub.Close()
	if err := c.DeviceDel(ctx, id); err != nil {
		return err
	}
	for {
		select {
		case ev, ok := <-sub.Events():
			if !ok {
				cause := c.closeCause()
				if cause == nil { // cannot happen: subscriptions close with the connection
					cause = ErrClosed
				}
				return fmt.Errorf("qmp %s: waiting for DEVICE_DELETED of %s: %w", c.path, id, cause)
			}
			var d struct {
				Device string `json:"device"`
			}
			if json.Unmarshal(ev.Data, &d) == nil && d.Device == id {
				return nil
			}
		case <-ctx.Done():
			return fmt.Errorf("qmp %s: device_del %s: no DEVICE_DELETED event (the guest has not released it): %w", c.path, id, context.Cause(ctx))
		}
	}
}

// ChardevSocket is a Unix-socket character device.
type ChardevSocket struct {
	ID   string
	Path string
	// Server makes QEMU listen on Path (never waiting for a peer);
	// otherwise QEMU connects to it.
	Server bool
	// ReconnectMs makes a client chardev reconnect after this many
	// milliseconds when the peer goes away (0: never). QEMU before 9.2
	// knows only whole seconds; it is rounded up there.
	ReconnectMs int
}

// ChardevAddUnixSocket creates a Unix-socket chardev (chardev-add).
func (c *Client) ChardevAddUnixSocket(ctx context.Context, s ChardevSocket) error {
	a, err := s.args(c.greeting.Version.QEMU)
	if err != nil {
		return fmt.Errorf("qmp %s: chardev-add: %w", c.path, err)
	}
	return c.Execute(ctx, "chardev-add", a, nil)
}

func (s ChardevSocket) args(v Version) (map[string]any, error) {
	if err := checkID("chardev id", s.ID); err != nil {
		return nil, err
	}
	if s.Path == "" {
		return nil, fmt.Errorf("%w: chardev %s: path is empty", ErrInvalidArgument, s.ID)
	}
	if s.ReconnectMs < 0 {
		return nil, fmt.Errorf("%w: chardev %s: reconnect %d ms is negative", ErrInvalidArgument, s.ID, s.ReconnectMs)
	}
	if s.Server && s.ReconnectMs != 0 {
		return nil, fmt.Errorf("%w: chardev %s: reconnect applies to client sockets only", ErrInvalidArgument, s.ID)
	}
	data := map[string]any{
		"addr":   map[string]any{"type": "unix", "data": map[string]any{"path": s.Path}},
		"server": s.Server,
	}
	if s.Server {
		data["wait"] = false // a waiting server would stall the monitor
	}
	if s.ReconnectMs > 0 {
		if v.AtLeast(9, 2) {
			data["reconnect-ms"] = s.ReconnectMs
		} else {
			data["reconnect"] = (s.ReconnectMs + 999) / 1000
		}
	}
	return map[string]any{"id": s.ID, "backend": map[string]any{"type": "socket", "data": data}}, nil
}

// ChardevRemove removes chardev id (chardev-remove).
func (c *Client) ChardevRemove(ctx context.Context, id string) error {
	if err := checkID("chardev id", id); err != nil {
		return fmt.Errorf("qmp %s: chardev-remove: %w", c.path, err)
	}
	return c.Execute(ctx, "chardev-remove", map[string]any{"id": id}, nil)
}

// QueryVersion returns QEMU's version (query-version).
func (c *Client) QueryVersion(ctx context.Context) (VersionInfo, error) {
	var v VersionInfo
	err := c.Execute(ctx, "query-version", nil, &v)
	return v, err
}

// StatusInfo is query-status's answer.
type StatusInfo struct {
	Running bool   `json:"running"`
	Status  string `json:"status"` // e.g. "running", "prelaunch", "paused"
}

// QueryStatus returns the VM's run state (query-status).
func (c *Client) QueryStatus(ctx context.Context) (StatusInfo, error) {
	var s StatusInfo
	err := c.Execute(ctx, "query-status", nil, &s)
	return s, err
}

// QOMGet reads property of the object at QOM path into result (qom-get).
func (c *Client) QOMGet(ctx context.Context, path, property string, result any) error {
	if path == "" || property == "" {
		return fmt.Errorf("qmp %s: qom-get: %w: path and property are required", c.path, ErrInvalidArgument)
	}
	return c.Execute(ctx, "qom-get", map[string]any{"path": path, "property": property}, result)
}

// QOMSet sets property of the object at QOM path to value (qom-set).
func (c *Client) QOMSet(ctx context.Context, path, property string, value any) error {
	if path == "" || property == "" {
		return fmt.Errorf("qmp %s: qom-set: %w: path and property are required", c.path, ErrInvalidArgument)
	}
	return c.Execute(ctx, "qom-set", map[string]any{"path": path, "property": property, "value": value}, nil)
}

// PCIBus is one bus of query-pci's answer.
type PCIBus struct {
	Bus     int         `json:"bus"`
	Devices []PCIDevice `json:"devices"`
}

// PCIDevice is one function on a PCI bus.
type PCIDevice struct {
	Bus      int    `json:"bus"`
	Slot     int    `json:"slot"`
	Function int    `json:"function"`
	QdevID   string `json:"qdev_id"`
	Class    struct {
		Desc  string `json:"desc,omitempty"`
		Class int    `json:"class"`
	} `json:"class_info"`
	ID struct {
		Device          int  `json:"device"`
		Vendor          int  `json:"vendor"`
		Subsystem       *int `json:"subsystem,omitempty"`
		SubsystemVendor *int `json:"subsystem-vendor,omitempty"`
	} `json:"id"`
	// Bridge is the bridge's details (its secondary bus and devices)
	// when the function is a PCI bridge or root port.
	Bridge *PCIBridge `json:"pci_bridge,omitempty"`
	// Regions is kept as QEMU sent it.
	Regions json.RawMessage `json:"regions,omitempty"`
}

// PCIBridge is a bridge's part of a PCIDevice.
type PCIBridge struct {
	Bus struct {
		Number      int `json:"number"`
		Secondary   int `json:"secondary"`
		Subordinate int `json:"subordinate"`
	} `json:"bus"`
	Devices []PCIDevice `json:"devices,omitempty"`
}

// QueryPCI lists the PCI buses and their devices (query-pci).
func (c *Client) QueryPCI(ctx context.Context) ([]PCIBus, error) {
	var b []PCIBus
	err := c.Execute(ctx, "query-pci", nil, &b)
	return b, err
}

// FindPCIDevice returns the function with qdev id, searching behind
// bridges too. QEMU lists what is behind a bridge only once firmware or
// the guest has given the bridge its bus numbers: in a VM started with
// -S that has not run yet, hot-added devices behind root ports are
// missing.
func FindPCIDevice(buses []PCIBus, id string) (PCIDevice, bool) {
	var walk func([]PCIDevice) (PCIDevice, bool)
	walk = func(ds []PCIDevice) (PCIDevice, bool) {
		for _, d := range ds {
			if d.QdevID == id {
				return d, true
			}
			if d.Bridge != nil {
				if f, ok := walk(d.Bridge.Devices); ok {
					return f, true
				}
			}
		}
		return PCIDevice{}, false
	}
	for _, b := range buses {
		if d, ok := walk(b.Devices); ok {
			return d, true
		}
	}
	return PCIDevice{}, false
}
