package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// BackingSpec asks for a backing to be created (when absent) or adopted
// (when present, after validation).
type BackingSpec struct {
	// Path is the resolved, confined path.
	Path      string
	Size      uint64 // guest-visible size; 0 when adopting means "as found"
	LabelSize uint64 // label area size; 0 = no labels
	Namespace string // namespace name to provision ("" = none)
	Mode      string // fsdax, devdax or raw ("" = none)
	// Slot is the DIMM slot the namespace labels are written for (-1:
	// none); the label's interleave-set cookie depends on it.
	Slot     int
	ReadOnly bool
}

// BackingInfo describes a prepared backing.
type BackingInfo struct {
	BackingSize uint64 // whole backing size (QEMU's memory backend size)
	Size        uint64 // guest-visible size
	LabelSize   uint64
	Align       uint64 // memory-backend alignment to pass to QEMU (0: default)
	PMem        bool   // real persistent memory (pass pmem=on)
	Created     bool   // the backing was created now
	// Slot is the DIMM slot the backing's labels were written for (nil:
	// none); an nvdimm attach then asks QEMU for that slot.
	Slot *int
}

// Backings creates, adopts, locks and removes backings. Production wires
// it to memfile/ and label/; tests use a fake.
type Backings interface {
	// Prepare creates the backing described by spec when it does not exist
	// and provisions its labels, or validates and adopts an existing one.
	Prepare(ctx context.Context, spec BackingSpec) (BackingInfo, error)
	// Lock takes the exclusive lock that marks the backing as in use by a
	// VM. When another process holds it the error wraps ErrBackingLocked.
	Lock(path string, readOnly bool) (io.Closer, error)
	// Remove deletes a backing the daemon created.
	Remove(path string) error
}

// ErrBackingLocked is wrapped by Backings.Lock when the backing is in use.
var ErrBackingLocked = errors.New("backing is locked by another user")

// QMPConn is what the attach flows need from a QMP connection.
type QMPConn interface {
	// Execute runs one command and returns its "return" value. A refusal
	// by QEMU is returned as a *QEMUError.
	Execute(ctx context.Context, command string, args any) (json.RawMessage, error)
	// Gone is closed when the VM has gone: a SHUTDOWN event arrived or the
	// connection closed.
	Gone() <-chan struct{}
	Close() error
}

// QMPDialer connects to the QMP socket at path and negotiates
// capabilities.
type QMPDialer func(ctx context.Context, path string) (QMPConn, error)

// QEMUError is QEMU's refusal of a command, with its class and
// description kept.
type QEMUError struct {
	Command string
	Class   string
	Desc    string
}

func (e *QEMUError) Error() string {
	return fmt.Sprintf("QEMU refused %s: %s (%s)", e.Command, e.Desc, e.Class)
}

// VhostUserServer is a running vhost-user device server for one backing.
type VhostUserServer interface {
	// Close stops accepting, drains in-flight flushes and releases the
	// backing mapping, within ctx's deadline.
	Close(ctx context.Context) error
}

// VhostUserFactory starts the vhost-user virtio-pmem server for dev,
// listening on socketPath before it returns (QEMU connects right after);
// the daemon then makes the socket mode 0600. The server's metrics go to
// the daemon's registry (Daemon.Registry).
type VhostUserFactory func(dev Device, socketPath string) (VhostUserServer, error)
