package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/nvdimm-backend/nvdimm-backend/flushhint"
	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

// flushResult is the JSON output of `flush`.
type flushResult struct {
	Path       string                `json:"path"`
	Kind       string                `json:"kind"`
	Strategy   string                `json:"strategy"`
	Guarantee  string                `json:"guarantee"`
	Before     *flushhint.NotDurable `json:"not_durable_before,omitempty"`
	After      *flushhint.NotDurable `json:"not_durable_after,omitempty"`
	DurationNS int64                 `json:"duration_ns"`
}

func init() {
	register(func() *cobra.Command {
		var sysfs string
		var labelSize, align string
		cmd := &cobra.Command{
			Use:   "flush PATH",
			Short: "Make a backing's written data durable with the strategy the flush engine would use, and report it",
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				oo := memfile.OpenOptions{ReadOnly: true, Probe: memfile.Probe{SysfsRoot: sysfs}}
				var err error
				if labelSize != "" {
					if oo.LabelSize, err = memfile.ParseSize(labelSize); err != nil {
						return fmt.Errorf("--label-size: %w", err)
					}
				}
				if align != "" {
					if oo.Align, err = memfile.ParseSize(align); err != nil {
						return fmt.Errorf("--align: %w", err)
					}
				}
				b, err := memfile.Open(args[0], oo)
				if err != nil {
					return err
				}
				defer b.Close()
				s, err := flushhint.ForBacking(b.Kind(), b.File(), sysfs)
				if err != nil {
					return err
				}
				res := flushResult{Path: b.Path(), Kind: b.Kind(), Strategy: s.Name(), Guarantee: s.Guarantee()}
				cachable := b.Kind() == memfile.KindFile || b.Kind() == memfile.KindDAXFile || b.Kind() == memfile.KindMemfd
				if cachable {
					if nd, err := flushhint.MeasureNotDurable(b.File()); err == nil {
						res.Before = &nd
					}
				}
				e, err := flushhint.NewEngine(b.Path(), s, flushhint.Options{})
				if err != nil {
					return err
				}
				start := time.Now()
				err = e.Flush(cmd.Context())
				res.DurationNS = time.Since(start).Nanoseconds()
				if cerr := e.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					return err
				}
				if cachable {
					if nd, err := flushhint.MeasureNotDurable(b.File()); err == nil {
						res.After = &nd
					}
				}
				return output(cmd, res, func(w io.Writer) error {
					fmt.Fprintf(w, "%s (%s): %s in %v\n", res.Path, res.Kind, res.Strategy, time.Duration(res.DurationNS).Round(time.Microsecond))
					fmt.Fprintf(w, "guarantee: %s\n", res.Guarantee)
					if res.Before != nil && res.After != nil {
						fmt.Fprintf(w, "not yet durable: %s before, %s after (%s)\n",
							memfile.FormatSize(res.Before.Bytes), memfile.FormatSize(res.After.Bytes), res.After.Source)
					}
					return nil
				})
			},
		}
		f := cmd.Flags()
		f.StringVar(&sysfs, "sysfs", "", "sysfs root (default /sys)")
		f.StringVar(&labelSize, "label-size", "", "label area size of a backing without a metadata record")
		f.StringVar(&align, "align", "", "alignment of a backing without a metadata record")
		return cmd
	})
}
