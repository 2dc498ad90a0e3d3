package main

// Verbs for the ACPI NFIT: dump, build, verify.

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/nvdimm-backend/nvdimm-backend/acpi"
	"github.com/nvdimm-backend/nvdimm-backend/internal/atomicfile"
)

// defaultNFITPath is where Linux exposes the firmware's NFIT.
const defaultNFITPath = "/sys/firmware/acpi/tables/NFIT"

func init() {
	register(func() *cobra.Command {
		c := &cobra.Command{
			Use:   "nfit",
			Short: "Decode, build and check ACPI NFIT tables (QEMU's layout, Linux's rules)",
		}
		c.AddCommand(nfitDumpCmd(), nfitBuildCmd(), nfitVerifyCmd())
		return c
	})
}

// readNFIT reads a table from path ("-" is stdin), bounded in size.
func readNFIT(cmd *cobra.Command, path string) (*acpi.NFIT, error) {
	var r io.Reader
	if path == "-" {
		r = cmd.InOrStdin()
		path = "standard input"
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, acpi.MaxTableSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	n, err := acpi.ParseNFIT(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return n, nil
}

func readTopology(path string) (acpi.QEMUTopology, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return acpi.QEMUTopology{}, err
	}
	t, err := acpi.ParseQEMUTopology(b)
	if err != nil {
		return acpi.QEMUTopology{}, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

func nfitDumpCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "dump [FILE|-]",
		Short: "Print every field, flag, cookie and Linux problem of an NFIT (default: this machine's)",
		Long: "Decode an NFIT and print every structure field by field with its flags decoded,\n" +
			"the interleave-set cookies Linux derives from it, and what Linux would reject.\n" +
			"Without FILE it reads " + defaultNFITPath + ", so it works inside a guest.",
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := defaultNFITPath
			if len(args) == 1 {
				path = args[0]
			}
			n, err := readNFIT(cmd, path)
			if err != nil {
				return err
			}
			return output(cmd, acpi.MakeDump(n), func(w io.Writer) error { return acpi.WriteText(w, n) })
		},
	}
}

// nfitBuildResult is the --json output of `nfit build`.
type nfitBuildResult struct {
	Output   string            `json:"output"`
	Length   int               `json:"length"`
	Checksum uint8             `json:"checksum"`
	Cookies  []acpi.DumpCookie `json:"cookies"`
	// Warnings: the topology is one QEMU can present but Linux uses
	// badly (e.g. not 16 MiB aligned); always present, maybe empty.
	Warnings []string `json:"warnings"`
}

func nfitBuildCmd() *cobra.Command {
	var topo, out string
	c := &cobra.Command{
		Use:   "build --qemu-topology FILE.json [-o OUT]",
		Short: "Build the NFIT QEMU presents for a topology, byte for byte",
		Long: "Build the NFIT QEMU would present to a guest for the topology in FILE.json:\n" +
			`  {"persistence":""|"cpu"|"mem-ctrl","dimms":[{"slot":0,"addr":4294967296,"size":268435456,"node":0,"unarmed":false}]}` + "\n" +
			"DIMMs appear in the order given (QEMU's order follows its object tree, not the slot).\n" +
			"A DIMM may carry \"flush_hints\":[addr,...] to add a flush hint structure (QEMU emits none).\n" +
			"Refuses what QEMU can never present (slot above 255, addr or size not a multiple\n" +
			"of 4 KiB, slots used twice, overlapping ranges) naming the DIMM and field, and\n" +
			"warns on standard error when addr or size is not a multiple of 16 MiB (ndctl).\n" +
			"Writes the table to OUT, or to standard output when that is not a terminal.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := readTopology(topo)
			if err != nil {
				return err
			}
			warnings, err := t.CheckQEMU()
			if err != nil {
				return fmt.Errorf("%s: %w", topo, err)
			}
			if warnings == nil {
				warnings = []string{}
			}
			for _, w := range warnings {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s: %s\n", topo, w)
			}
			b, err := acpi.BuildQEMU(t)
			if err != nil {
				return err
			}
			n, err := acpi.ParseNFIT(b)
			if err != nil {
				return fmt.Errorf("re-reading the built table: %w", err)
			}
			res := nfitBuildResult{Output: out, Length: len(b), Checksum: n.Header.Checksum, Cookies: acpi.MakeDump(n).Cookies, Warnings: warnings}
			if out == "" || out == "-" {
				if opts.json {
					return errors.New("--json needs -o OUT: the table itself goes to standard output otherwise")
				}
				if isTerminal(cmd.OutOrStdout()) {
					return errors.New("refusing to write a binary table to a terminal; use -o OUT or redirect")
				}
				_, err := cmd.OutOrStdout().Write(b)
				return err
			}
			if err := atomicfile.Write(out, b, 0o644); err != nil {
				return fmt.Errorf("write %s: %w", out, err)
			}
			return output(cmd, res, func(w io.Writer) error {
				fmt.Fprintf(w, "wrote %d-byte NFIT (%d DIMMs, checksum %#02x) to %s\n", len(b), len(t.DIMMs), res.Checksum, out)
				for _, c := range res.Cookies {
					fmt.Fprintf(w, "  SPA %d cookies: v1.1 %s  v1.2 %s\n", c.SPAIndex, c.V11, c.V12)
				}
				return nil
			})
		},
	}
	c.Flags().StringVar(&topo, "qemu-topology", "", "topology JSON file (required)")
	c.Flags().StringVarP(&out, "output", "o", "", "output file (default: standard output)")
	_ = c.MarkFlagRequired("qemu-topology")
	return c
}

// nfitVerifyResult is the --json output of `nfit verify`.
type nfitVerifyResult struct {
	File            string            `json:"file"`
	Accepted        bool              `json:"accepted"` // no error-severity problem
	Problems        []acpi.Problem    `json:"problems"`
	Topology        string            `json:"topology,omitempty"`
	MatchesTopology *bool             `json:"matches_topology,omitempty"`
	Differences     []acpi.Difference `json:"differences,omitempty"`
}

func nfitVerifyCmd() *cobra.Command {
	var topo string
	c := &cobra.Command{
		Use:   "verify FILE [--qemu-topology FILE.json]",
		Short: "Check an NFIT against Linux's acceptance rules and, optionally, a QEMU topology",
		Long: "Apply the rules of Linux's NFIT driver to FILE (\"-\" for standard input) and,\n" +
			"with --qemu-topology, compare it field by field with the table QEMU builds for\n" +
			"that topology (DIMM order is taken from FILE). Exits non-zero when Linux would\n" +
			"reject the table or it differs from the topology.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := readNFIT(cmd, args[0])
			if err != nil {
				return err
			}
			res := nfitVerifyResult{File: args[0], Accepted: true, Problems: n.Validate()}
			if res.Problems == nil {
				res.Problems = []acpi.Problem{}
			}
			for _, p := range res.Problems {
				if p.Severity == acpi.SeverityError {
					res.Accepted = false
				}
			}
			if topo != "" {
				t, err := readTopology(topo)
				if err != nil {
					return err
				}
				diffs, err := acpi.CompareQEMU(n, t)
				if err != nil {
					return err
				}
				match := len(diffs) == 0
				res.Topology, res.MatchesTopology, res.Differences = topo, &match, diffs
			}
			if err := output(cmd, res, func(w io.Writer) error {
				for _, p := range res.Problems {
					fmt.Fprintln(w, p)
				}
				if res.Accepted {
					fmt.Fprintf(w, "%s: Linux accepts this NFIT\n", args[0])
				} else {
					fmt.Fprintf(w, "%s: Linux REJECTS this NFIT\n", args[0])
				}
				if res.MatchesTopology != nil {
					for _, d := range res.Differences {
						fmt.Fprintf(w, "differs: %s\n", d)
					}
					if *res.MatchesTopology {
						fmt.Fprintf(w, "%s: identical to QEMU's table for %s\n", args[0], topo)
					} else {
						fmt.Fprintf(w, "%s: %d differences from QEMU's table for %s\n", args[0], len(res.Differences), topo)
					}
				}
				return nil
			}); err != nil {
				return err
			}
			switch {
			case !res.Accepted:
				return errors.New("verify: Linux would reject the table")
			case res.MatchesTopology != nil && !*res.MatchesTopology:
				return errors.New("verify: the table differs from the topology")
			}
			return nil
		},
	}
	c.Flags().StringVar(&topo, "qemu-topology", "", "topology JSON file to compare with")
	return c
}
