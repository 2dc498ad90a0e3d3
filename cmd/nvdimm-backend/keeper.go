package main

import (
	"log/slog"
	"os"
	"testing"

	"github.com/spf13/cobra"

	"github.com/nvdimm-backend/nvdimm-backend/daemon"
	"github.com/nvdimm-backend/nvdimm-backend/vhostuser"
)

func init() {
	register(func() *cobra.Command {
		return &cobra.Command{
			Use:    "vhost-user-keeper SOCKET",
			Short:  "Hold a vhost-user front-end connection across back-end restarts (started by the daemon and vhost-user serve)",
			Hidden: true,
			Args:   cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return vhostuser.RunKeeper(args[0], slog.Default())
			},
		}
	})
	// The daemon and vhost-user serve start keepers by running this
	// binary again; a test binary must not be run that way.
	if !testing.Testing() {
		if exe, err := os.Executable(); err == nil {
			daemon.KeeperCommand = []string{exe, "vhost-user-keeper"}
			serveKeeperCommand = daemon.KeeperCommand
		}
	}
}
