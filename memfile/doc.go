// Package memfile owns backing stores for guest NVDIMMs and virtio-pmem
// devices: creating, opening, validating, locking, cloning and mapping
// them, and the layout rules (guest data, unused tail, label area) that
// QEMU and the Linux guest enforce.
package memfile
