package vhostuser

import (
	"fmt"
	"math/bits"
	"os"
)

// Backend is what a device implements; the Server does the protocol.
type Backend interface {
	// Features returns the virtio feature bits the device offers
	// (VERSION_1, EVENT_IDX, INDIRECT_DESC, device bits). The core adds
	// VHOST_USER_F_PROTOCOL_FEATURES.
	Features() uint64
	// ProtocolFeatures returns protocol feature bits the device needs in
	// addition to those the core offers (see Server.ProtocolFeatures).
	ProtocolFeatures() uint64
	// NumQueues is the number of virtqueues.
	NumQueues() int
	// MaxQueueSize is the largest queue size accepted (a power of two).
	MaxQueueSize() int
	// GetConfig returns size bytes of config space at offset.
	GetConfig(offset, size uint32) ([]byte, error)
	// SetConfig writes config space.
	SetConfig(offset uint32, data []byte) error
	// ShmemRegions returns the shared-memory region sizes by shmid (nil
	// for none). Non-zero sizes must be page multiples adding up to a
	// power of two.
	ShmemRegions() []uint64
	// ShmemMappings returns what to map into the regions at every start.
	ShmemMappings() []ShmemMapping
	// SetFeatures is called with the acked virtio features (without bit 30).
	SetFeatures(acked uint64) error
	// HandleRequest is called from the queue's worker goroutine with a
	// validated chain. The device must call r.Complete exactly once,
	// from any goroutine; it should not block the worker for long.
	HandleRequest(r *Request)
}

// ShmemMapping is one SHMEM_MAP request: Len bytes of File at FdOffset
// into shared-memory region ShmID at ShmOffset.
type ShmemMapping struct {
	ShmID     uint8
	File      *os.File
	FdOffset  uint64
	ShmOffset uint64
	Len       uint64
	Writable  bool
}

// checkBackend validates the static description a Backend gives.
func checkBackend(b Backend) error {
	if n := b.NumQueues(); n < 1 || n > 256 {
		return fmt.Errorf("device has %d queues, want 1 to 256", n)
	}
	if m := b.MaxQueueSize(); m < 1 || m > MaxQueueSize || m&(m-1) != 0 {
		return fmt.Errorf("device max queue size %d is not a power of two up to %d", m, MaxQueueSize)
	}
	sizes := b.ShmemRegions()
	if len(sizes) > MaxShmemRegions {
		return fmt.Errorf("device has %d shared-memory regions, at most %d", len(sizes), MaxShmemRegions)
	}
	var total uint64
	for id, s := range sizes {
		if s%uint64(os.Getpagesize()) != 0 {
			return fmt.Errorf("shared-memory region %d size %d is not a page multiple", id, s)
		}
		if total+s < total {
			return fmt.Errorf("shared-memory region sizes overflow")
		}
		total += s
	}
	if total != 0 && bits.OnesCount64(total) != 1 {
		return fmt.Errorf("shared-memory region sizes add up to %d, not a power of two: QEMU puts them in one PCI BAR and aborts", total)
	}
	for i, m := range b.ShmemMappings() {
		if int(m.ShmID) >= len(sizes) || sizes[m.ShmID] == 0 {
			return fmt.Errorf("shared-memory mapping %d: region %d does not exist", i, m.ShmID)
		}
		if m.File == nil || m.Len == 0 || m.ShmOffset+m.Len < m.ShmOffset || m.ShmOffset+m.Len > sizes[m.ShmID] {
			return fmt.Errorf("shared-memory mapping %d: offset %d len %d does not fit region %d of %d bytes", i, m.ShmOffset, m.Len, m.ShmID, sizes[m.ShmID])
		}
	}
	return nil
}
