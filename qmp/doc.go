// Package qmp owns our client for the QEMU Machine Protocol (QMP) on a
// Unix socket, and typed helpers for the commands nvdimm-backend uses.
//
// A Client reads the greeting, negotiates capabilities and then runs any
// number of commands concurrently: each carries its own id and is matched
// to its reply by that id, each honours its context's deadline, and replies
// have no fixed size limit (query-qmp-schema is over 1 MiB). Asynchronous
// events go to subscribers through bounded buffers that never hold up
// command replies: a subscriber that does not keep up loses events and is
// told how many (Event.Dropped, Subscription.Dropped). File descriptors
// travel with the command that uses them (getfd, add-fd) as SCM_RIGHTS
// ancillary data. QEMU's refusals come back as *Error with QEMU's class
// and description. When the socket closes, every pending command fails at
// once with an error wrapping ErrClosed and Done is closed.
//
// Every error names the socket once, at its start: "qmp PATH: " then the
// command, if any, and why ("connect: connection refused (nothing listens
// on it ...)", "not a Unix socket (it is a regular file)", "object-add: QMP
// connection closed by QEMU (EOF)"). The errors underneath are kept for
// errors.Is and errors.As (fs.ErrNotExist, the syscall errno, *net.OpError,
// ErrClosed, ErrMalformed, *Error, the context's error) but net's own text,
// which repeats the path, is not.
//
// The typed helpers (object-add of memory-backend-file, device_add of
// nvdimm, virtio-pmem-pci and vhost-user-test-device-pci, chardev-add of a
// Unix socket, object-del, device_del, query-memory-devices,
// query-version, qom-get, qom-set, query-pci) validate their arguments
// before anything is sent, so a bad id or size never reaches QEMU.
package qmp
