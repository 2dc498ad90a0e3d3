// Package pmem is the virtio-pmem device (virtio id 27) on the vhost-user
// back-end core: one request queue whose flush requests go to a Flusher
// (in production a flushhint.Engine), and the backing exposed either as
// shared-memory region 0 through SHMEM_MAP (VIRTIO_PMEM_F_SHMEM_REGION,
// config start and size zero) or as a guest-physical range in the config
// space for a front-end that maps the backing itself.
package pmem

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"

	"github.com/nvdimm-backend/nvdimm-backend/memfile"
	"github.com/nvdimm-backend/nvdimm-backend/vhostuser"
)

// Device constants from the virtio specification.
const (
	DeviceID = 27
	// FeatureShmemRegion is VIRTIO_PMEM_F_SHMEM_REGION.
	FeatureShmemRegion = 1 << 0
	// ShmemRegionID is the shmid of the pmem range.
	ShmemRegionID = 0
	// ReqTypeFlush is the only request type.
	ReqTypeFlush = 0
	// ConfigSize is the config space size: le64 start, le64 size.
	ConfigSize = 16
	// QueueSize is the largest request queue accepted.
	QueueSize = 1024
	// RespOK and RespFail are the response codes (le32 ret).
	RespOK   = 0
	RespFail = -1
)

// Flusher makes every write that completed before the call durable.
type Flusher interface {
	Flush(ctx context.Context) error
}

// Options configure a Device.
type Options struct {
	// Flusher receives every flush request. Required.
	Flusher Flusher
	// File is the backing. With Shmem it is mapped into region 0.
	File *os.File
	// Size is the number of bytes of File exposed to the guest.
	Size uint64
	// Shmem exposes the backing through shared-memory region 0 (the only
	// way QEMU's generic vhost-user device can place it). Otherwise the
	// config space carries Start and Size, for a front-end that maps the
	// backing at guest-physical address Start itself.
	Shmem bool
	// Start is the guest-physical address for the config-space mode.
	Start uint64
	// ReadOnly asks for a read-only device; refused with Shmem.
	ReadOnly bool
	// LabelSize is the backing's label area (memfile.Layout.LabelSize);
	// a backing with one is refused with Shmem.
	LabelSize uint64
	// Log receives warnings; nil means slog.Default().
	Log *slog.Logger
}

// Stats count the device's requests.
type Stats struct {
	Flushes  atomic.Uint64 // flush requests completed with 0
	Failures atomic.Uint64 // requests answered -1
	Invalid  atomic.Uint64 // malformed requests (too short, bad type)
}

// Device implements vhostuser.Backend.
type Device struct {
	o     Options
	log   *slog.Logger
	acked atomic.Uint64
	Stats Stats
}

// New checks the options and returns the device.
func New(o Options) (*Device, error) {
	if o.Flusher == nil {
		return nil, errors.New("virtio-pmem: no flusher")
	}
	if o.Shmem {
		if o.File == nil {
			return nil, errors.New("virtio-pmem: shared-memory mode needs the backing file")
		}
		if err := CheckShmemBacking(o.File.Name(), o.Size, o.LabelSize, o.ReadOnly); err != nil {
			return nil, err
		}
	} else if o.Size == 0 {
		return nil, errors.New("virtio-pmem: size 0")
	}
	log := o.Log
	if log == nil {
		log = slog.Default()
	}
	return &Device{o: o, log: log}, nil
}

// CheckShmemBacking refuses a backing (at path, exposing size bytes, with
// a label area of labelSize) that cannot be offered as shared-memory
// region 0: the region must be a size QEMU can place in a PCI BAR (a
// power of two, memfile.CheckSHMEMRegionSize), and the backing must be
// fit for virtio-pmem at all (memfile.CheckVirtioPMEM: not read-only (and
// QEMU 11.1.2 maps every shared-memory region writable anyway), no label
// area, a guest-mappable size; the region is size bytes aligned to its
// own size in the BAR).
func CheckShmemBacking(path string, size, labelSize uint64, readOnly bool) error {
	if err := memfile.CheckSHMEMRegionSize(size); err != nil {
		return fmt.Errorf("virtio-pmem backing %s: %w", path, err)
	}
	l := memfile.Layout{GuestSize: size, BackingSize: size, LabelSize: labelSize, Align: size}
	return memfile.CheckVirtioPMEM(path, l, readOnly)
}

// Features offers VERSION_1, EVENT_IDX, INDIRECT_DESC and, in shared-memory
// mode, VIRTIO_PMEM_F_SHMEM_REGION.
func (d *Device) Features() uint64 {
	f := uint64(vhostuser.FeatureVersion1 | vhostuser.FeatureEventIdx | vhostuser.FeatureIndirectDesc)
	if d.o.Shmem {
		f |= FeatureShmemRegion
	}
	return f
}

// ProtocolFeatures asks for nothing beyond the core set.
func (d *Device) ProtocolFeatures() uint64 { return 0 }

// NumQueues is 1 (req_vq).
func (d *Device) NumQueues() int { return 1 }

// MaxQueueSize is QueueSize.
func (d *Device) MaxQueueSize() int { return QueueSize }

// Config returns the 16-byte config space.
func (d *Device) Config() []byte {
	b := make([]byte, ConfigSize)
	if !d.o.Shmem {
		binary.LittleEndian.PutUint64(b, d.o.Start)
		binary.LittleEndian.PutUint64(b[8:], d.o.Size)
	}
	return b
}

// GetConfig returns part of the config space.
func (d *Device) GetConfig(offset, size uint32) ([]byte, error) {
	if uint64(offset)+uint64(size) > ConfigSize {
		return nil, fmt.Errorf("virtio-pmem config is %d bytes: offset %d size %d is outside it", ConfigSize, offset, size)
	}
	return d.Config()[offset : offset+size], nil
}

// SetConfig refuses writes: every field is read-only.
func (d *Device) SetConfig(offset uint32, data []byte) error {
	return fmt.Errorf("virtio-pmem config is read-only (write of %d bytes at %d)", len(data), offset)
}

// ShmemRegions is region 0 of the backing's size in shared-memory mode.
func (d *Device) ShmemRegions() []uint64 {
	if !d.o.Shmem {
		return nil
	}
	return []uint64{d.o.Size}
}

// ShmemMappings maps the whole backing at offset 0 of region 0.
func (d *Device) ShmemMappings() []vhostuser.ShmemMapping {
	if !d.o.Shmem {
		return nil
	}
	return []vhostuser.ShmemMapping{{ShmID: ShmemRegionID, File: d.o.File, Len: d.o.Size, Writable: true}}
}

// SetFeatures records the acked features; in shared-memory mode the
// driver must accept SHMEM_REGION, or it would read start/size zero.
func (d *Device) SetFeatures(acked uint64) error {
	if d.o.Shmem && acked&FeatureShmemRegion == 0 {
		d.log.Warn("virtio-pmem: driver did not accept SHMEM_REGION; it will see a zero-sized device")
	}
	d.acked.Store(acked)
	return nil
}

// HandleRequest validates a request (at least 4 readable and 4 writable
// bytes, type 0) and runs the flush on its own goroutine, so the queue
// keeps taking requests while one is syncing; completions may therefore
// arrive out of order.
func (d *Device) HandleRequest(r *vhostuser.Request) {
	if r.WritableLen() < 4 {
		d.Stats.Invalid.Add(1)
		d.log.Warn("virtio-pmem: request without a 4-byte response buffer", "head", r.Head(), "writable", r.WritableLen())
		r.Complete(0)
		return
	}
	if r.ReadableLen() < 4 {
		d.Stats.Invalid.Add(1)
		d.log.Warn("virtio-pmem: request shorter than 4 bytes", "head", r.Head(), "readable", r.ReadableLen())
		d.respond(r, RespFail)
		return
	}
	var t [4]byte
	if _, err := r.ReadAt(t[:], 0); err != nil {
		d.Stats.Invalid.Add(1)
		d.log.Warn("virtio-pmem: reading request type", "head", r.Head(), "err", err)
		d.respond(r, RespFail)
		return
	}
	if typ := binary.LittleEndian.Uint32(t[:]); typ != ReqTypeFlush {
		d.Stats.Invalid.Add(1)
		d.log.Warn("virtio-pmem: unknown request type", "head", r.Head(), "type", typ)
		d.respond(r, RespFail)
		return
	}
	go func() {
		if err := d.o.Flusher.Flush(r.Context()); err != nil {
			d.log.Error("virtio-pmem: flush failed", "err", err)
			d.respond(r, RespFail)
			return
		}
		d.Stats.Flushes.Add(1)
		d.respond(r, RespOK)
	}()
}

func (d *Device) respond(r *vhostuser.Request, ret int32) {
	if ret != RespOK {
		d.Stats.Failures.Add(1)
	}
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], uint32(ret))
	if _, err := r.WriteAt(b[:], 0); err != nil {
		d.log.Warn("virtio-pmem: writing response", "head", r.Head(), "err", err)
		r.Complete(0)
		return
	}
	r.Complete(4)
}
