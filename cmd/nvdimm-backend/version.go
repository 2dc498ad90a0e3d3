package main

import (
	"fmt"
	"io"
	"runtime"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func init() {
	register(func() *cobra.Command {
		return &cobra.Command{
			Use:   "version",
			Short: "Print the version",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, args []string) error {
				v := map[string]string{"version": version, "go": runtime.Version()}
				return output(cmd, v, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "nvdimm-backend %s (%s)\n", version, runtime.Version())
					return err
				})
			},
		}
	})
}
