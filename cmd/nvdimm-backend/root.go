package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"
)

// globalOpts are the flags every verb shares.
type globalOpts struct {
	logFormat string
	logLevel  string
	json      bool
}

var opts globalOpts

// registrations collects the constructors of top-level verbs. Each verb
// lives in its own file and registers itself in an init function, so that
// adding a verb never edits another verb's file.
var registrations []func() *cobra.Command

func register(f func() *cobra.Command) { registrations = append(registrations, f) }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "nvdimm-backend",
		Short:         "Persistent-memory companion for QEMU/KVM: NVDIMM backings, labels, NFIT, virtio-pmem over vhost-user",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			return setupLogging(cmd.ErrOrStderr())
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&opts.logFormat, "log-format", "text", "log format: text or json")
	pf.StringVar(&opts.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	pf.BoolVar(&opts.json, "json", false, "print results as JSON")
	for _, f := range registrations {
		root.AddCommand(f())
	}
	return root
}

func setupLogging(w io.Writer) error {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(opts.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", opts.logLevel)
	}
	ho := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler
	switch strings.ToLower(opts.logFormat) {
	case "text":
		h = slog.NewTextHandler(w, ho)
	case "json":
		h = slog.NewJSONHandler(w, ho)
	default:
		return fmt.Errorf("--log-format %q: want text or json", opts.logFormat)
	}
	slog.SetDefault(slog.New(h))
	return nil
}

// printJSON writes v as indented JSON to the command's stdout.
func printJSON(cmd *cobra.Command, v any) error {
	enc := json.NewEncoder(cmd.OutOrStdout())
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// output prints v as JSON when --json is set, else calls human.
func output(cmd *cobra.Command, v any, human func(w io.Writer) error) error {
	if opts.json {
		return printJSON(cmd, v)
	}
	return human(cmd.OutOrStdout())
}
