package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/nvdimm-backend/nvdimm-backend/internal/atomicfile"
)

// StateVersion is the version of the state file this daemon writes.
const StateVersion = 1

// Kinds of attachment.
const (
	KindNVDIMM     = "nvdimm"
	KindVirtioPMEM = "virtio-pmem"
	KindVhostUser  = "vhost-user"
)

// Device is one registry entry. Its JSON form is part of the control API
// and of the state file.
type Device struct {
	Name string `json:"name"`
	// Image is the catalogued shared image the device is made from ("" for
	// a device on a backing); such a device is always read-only.
	Image string `json:"image,omitempty"`
	// Backing is the resolved path of the backing file or device (for an
	// image, the image file).
	Backing string `json:"backing"`
	// BackingSize is the size of the whole backing (guest data, unused
	// tail and label area); QEMU's memory backend is given exactly this.
	BackingSize uint64 `json:"backing_size"`
	// Size is the guest-visible size; LabelSize the label area (0: none).
	Size      uint64 `json:"size"`
	LabelSize uint64 `json:"label_size"`
	// Align is the memory-backend alignment (0: QEMU's default).
	Align uint64 `json:"align,omitempty"`
	// PMem says whether the backing is real persistent memory.
	PMem      bool   `json:"pmem"`
	Namespace string `json:"namespace,omitempty"`
	Mode      string `json:"mode,omitempty"`
	ReadOnly  bool   `json:"readonly"`
	// Slot is the DIMM slot the labels were written for; nvdimm attach
	// plugs the device there.
	Slot *int `json:"slot,omitempty"`
	// Kind is the kind of the current or last attachment ("" when never
	// attached): nvdimm, virtio-pmem or vhost-user.
	Kind string `json:"kind,omitempty"`
	// Created says the daemon created the backing (rather than adopting
	// an existing one); only such backings are removed on purge.
	Created bool `json:"created"`
	// VhostUserSocket is the vhost-user socket the daemon serves for the
	// device (vhost-user kind only).
	VhostUserSocket string `json:"vhost_user_socket,omitempty"`
	// Attached describes the VM the device is attached to, if any.
	Attached *Attachment `json:"attached,omitempty"`
	// CreatedAt is when the device was registered.
	CreatedAt time.Time `json:"created_at"`
}

// Attachment records a device attached to a running VM.
type Attachment struct {
	// QMP is the VM's QMP socket path; it identifies the VM.
	QMP  string `json:"qmp"`
	Kind string `json:"kind"`
	// ObjectID, DeviceID and ChardevID are the QEMU ids the daemon added.
	ObjectID  string `json:"object_id,omitempty"`
	DeviceID  string `json:"device_id"`
	ChardevID string `json:"chardev_id,omitempty"`
	// Addr is the guest-physical address QEMU reported.
	Addr       uint64    `json:"addr"`
	AttachedAt time.Time `json:"attached_at"`
}

// stateFile is the on-disk form of the registry.
type stateFile struct {
	Version int      `json:"version"`
	Devices []Device `json:"devices"`
}

// validName reports whether s is an acceptable device name: 1 to 64 of
// [A-Za-z0-9_.-], starting with a letter or digit. Names are used in QEMU
// ids and socket file names, so nothing else is allowed.
func validName(s string) error {
	if len(s) == 0 || len(s) > 64 {
		return fmt.Errorf("device name %q: want 1 to 64 characters", s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case (c == '_' || c == '-' || c == '.') && i > 0:
		default:
			return fmt.Errorf("device name %q: character %q at %d not allowed (want letters, digits, '_', '-', '.'; starting with a letter or digit)", s, c, i)
		}
	}
	return nil
}

// loadState reads the state file at path. A missing file is an empty
// registry.
func loadState(path string) ([]Device, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state file: %w", err)
	}
	return decodeState(path, b)
}

// decodeState parses and validates a state file's bytes.
func decodeState(path string, b []byte) ([]Device, error) {
	var probe struct {
		Version *int `json:"version"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return nil, fmt.Errorf("state file %s: %w", path, err)
	}
	if probe.Version == nil {
		return nil, fmt.Errorf("state file %s: no \"version\" field", path)
	}
	if *probe.Version != StateVersion {
		return nil, fmt.Errorf("state file %s: version %d, this daemon reads version %d", path, *probe.Version, StateVersion)
	}
	var st stateFile
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("state file %s: %w", path, err)
	}
	seen := map[string]bool{}
	for i, d := range st.Devices {
		if err := validName(d.Name); err != nil {
			return nil, fmt.Errorf("state file %s: devices[%d]: %w", path, i, err)
		}
		if seen[d.Name] {
			return nil, fmt.Errorf("state file %s: devices[%d]: duplicate name %q", path, i, d.Name)
		}
		seen[d.Name] = true
		if !filepath.IsAbs(d.Backing) {
			return nil, fmt.Errorf("state file %s: devices[%d] (%s): backing %q is not absolute", path, i, d.Name, d.Backing)
		}
		if d.Image != "" {
			if err := validName(d.Image); err != nil {
				return nil, fmt.Errorf("state file %s: devices[%d] (%s): field image: %w", path, i, d.Name, err)
			}
			if !d.ReadOnly {
				return nil, fmt.Errorf("state file %s: devices[%d] (%s): image %q device is not read-only: images are only ever attached read-only", path, i, d.Name, d.Image)
			}
			if d.Created {
				return nil, fmt.Errorf("state file %s: devices[%d] (%s): image %q device is marked created: the daemon never owns an image file", path, i, d.Name, d.Image)
			}
		}
		if d.Attached != nil && d.Attached.QMP == "" {
			return nil, fmt.Errorf("state file %s: devices[%d] (%s): attachment without a QMP path", path, i, d.Name)
		}
	}
	return st.Devices, nil
}

// saveState writes the registry atomically.
func saveState(path string, devs []Device) error {
	out := append([]Device(nil), devs...)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	if out == nil {
		out = []Device{}
	}
	return atomicfile.WriteJSON(path, stateFile{Version: StateVersion, Devices: out}, 0o600)
}
