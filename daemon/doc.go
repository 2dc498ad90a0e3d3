// Package daemon owns the long-running nvdimm-backend service: the device
// registry and its versioned JSON state, confinement of backing paths to
// the managed directories, the HTTP/JSON control API on a Unix socket
// (with a peer-credential check), /metrics and /healthz, the attach flows
// that hot-add devices to running VMs over QMP (with rollback), the
// release of devices when their VM goes away, and the vhost-user servers
// of the devices that use them. It also holds the client side of the
// control API used by the CLI.
//
// The daemon does not format backings or speak QMP itself: it is given a
// Backings implementation (memfile/ and label/ in production) and a QMP
// dialer (qmp/ in production), so that each concept stays in its package
// and the flows here can be tested against fakes.
package daemon
