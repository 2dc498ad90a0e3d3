package daemon

import "github.com/nvdimm-backend/nvdimm-backend/vhostuser"

// KeeperCommand is the command (the nvdimm-backend binary and its hidden
// keeper verb) that runs a vhost-user connection keeper; the socket path
// is appended. When set, every vhost-user server keeps its front-end
// connection in a keeper process, so that a daemon restart (or crash) is
// invisible to QEMU (see vhostuser.Keeper). nil (as in tests): no keeper.
var KeeperCommand []string

// startKeeper starts a keeper on path (see vhostuser.StartKeeperProcess:
// its own session, since it must outlive the daemon; log in path.log).
func startKeeper(path string) error {
	return vhostuser.StartKeeperProcess(KeeperCommand, path)
}
