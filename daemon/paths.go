package daemon

import (
	"os"
	"path/filepath"
)

// Embedded defaults.
const (
	// RootStateDir is the state directory when running as root.
	RootStateDir = "/var/lib/nvdimm-backend"
	// RootControlSocket is the control socket when running as root.
	RootControlSocket = "/run/nvdimm-backend/control.sock"
	// SocketEnv names the environment variable that overrides the control
	// socket path for the client verbs.
	SocketEnv = "NVDIMM_BACKEND_SOCKET"
	// StateFileName is the registry file inside the state directory.
	StateFileName = "state.json"
)

// DefaultStateDir returns /var/lib/nvdimm-backend for root, else
// $XDG_STATE_HOME/nvdimm-backend (falling back to ~/.local/state).
func DefaultStateDir() string {
	if os.Geteuid() == 0 {
		return RootStateDir
	}
	if x := os.Getenv("XDG_STATE_HOME"); filepath.IsAbs(x) {
		return filepath.Join(x, "nvdimm-backend")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", "nvdimm-backend")
	}
	return filepath.Join(os.TempDir(), "nvdimm-backend-state")
}

// DefaultControlSocket returns the control socket path: $NVDIMM_BACKEND_SOCKET
// when set, /run/nvdimm-backend/control.sock for root, else
// $XDG_RUNTIME_DIR/nvdimm-backend/control.sock (falling back to the state
// directory).
func DefaultControlSocket() string {
	if s := os.Getenv(SocketEnv); s != "" {
		return s
	}
	if os.Geteuid() == 0 {
		return RootControlSocket
	}
	if x := os.Getenv("XDG_RUNTIME_DIR"); filepath.IsAbs(x) {
		return filepath.Join(x, "nvdimm-backend", "control.sock")
	}
	return filepath.Join(DefaultStateDir(), "control.sock")
}

// DefaultBackingDir is the backing directory used when none is configured.
func DefaultBackingDir(stateDir string) string {
	return filepath.Join(stateDir, "backings")
}
