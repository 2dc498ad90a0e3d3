// Package vhostuser owns the back-end side of the vhost-user protocol over a
// Unix socket: the wire codec (every front-end request 1–44 and the
// back-end channel requests), the request handler state machine, the guest
// memory table (swapped atomically on SET_MEM_TABLE, ADD_MEM_REG and
// REM_MEM_REG, old mappings unmapped once no queue worker uses them), split
// virtqueues with INDIRECT_DESC and EVENT_IDX, the inflight area that lets
// a restarted back-end resubmit what was in flight, and the shared-memory
// (SHMEM) requests.
//
// A device implements the small Backend interface; the Server accepts a
// front-end, negotiates, runs one goroutine per started queue (woken by its
// kick eventfd) and hands each validated descriptor chain to the device as
// a Request, which the device completes, possibly out of order and from
// another goroutine. Devices live in sub-packages (vhostuser/pmem).
//
// Everything the front-end sends is treated as hostile: messages are
// length-checked, descriptor chains are validated (ranges, loops, nesting,
// translation through the memory table) and guest memory is only accessed
// through bounds-checked copies, except the ring index words, which are
// read and written with aligned 32-bit atomics.
package vhostuser
