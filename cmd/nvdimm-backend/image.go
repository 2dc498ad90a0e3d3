package main

// Verbs for shared read-only images: image add, build, list, show, rm,
// verify, clone, qemu-args.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

func init() { register(newImageCmd) }

// errVerifyFailed makes `image verify` exit non-zero after printing its
// report.
var errVerifyFailed = errors.New("image verify: the image does not match the catalog")

func newImageCmd() *cobra.Command {
	var catalogDir string
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Shared read-only DAX images: one host copy for many guests",
		Long: `Catalogue read-only images that many guests map at once (NVDIMM with
readonly=on,share=on and unarmed=on), so their pages exist once in the host
page cache. Images are hashed (SHA-256), marked read-only in their metadata
record, stripped of write permission and, where the filesystem and
privileges allow, made immutable. Writable per-guest copies come from
'image clone'.`,
	}
	cmd.PersistentFlags().StringVar(&catalogDir, "catalog", memfile.DefaultCatalogDir(), "catalog directory")
	open := func() (*memfile.Catalog, error) { return memfile.OpenCatalog(catalogDir) }
	cmd.AddCommand(
		newImageAddCmd(open), newImageBuildCmd(open), newImageListCmd(open), newImageShowCmd(open),
		newImageRmCmd(open), newImageVerifyCmd(open), newImageCloneCmd(open), newImageQEMUArgsCmd(open),
	)
	return cmd
}

type openCatalog func() (*memfile.Catalog, error)

func printAddReport(cmd *cobra.Command, rep memfile.AddReport, verb string) error {
	return output(cmd, rep, func(w io.Writer) error {
		im := rep.Image
		fmt.Fprintf(w, "%s image %s: %s, %s\n", verb, im.Name, im.Path, memfile.FormatSize(im.Size))
		fmt.Fprintf(w, "sha256 %s\n", im.SHA256)
		for _, wn := range rep.Warnings {
			fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s\n", wn)
		}
		return nil
	})
}

func newImageAddCmd(open openCatalog) *cobra.Command {
	return &cobra.Command{
		Use:   "add NAME FILE",
		Short: "Catalogue an existing file as a read-only image (in place)",
		Long: `Catalogue FILE as the read-only image NAME, where it is. The file must be a
regular file whose size is a multiple of 2 MiB, without a label area. It
is hashed under a shared lock, its metadata record FILE.nvdimm.json is
marked read-only, its write permission bits are removed and it is made
immutable where possible. A file without a PFN info block at 4 KiB is
accepted with a warning: the guest cannot mount it with DAX.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := open()
			if err != nil {
				return err
			}
			progress, finish := progressFunc(cmd, "hashing")
			rep, err := c.Add(args[0], args[1], memfile.ImageOptions{Progress: progress})
			finish()
			if err != nil {
				return err
			}
			return printAddReport(cmd, rep, "added")
		},
	}
}

func newImageBuildCmd(open openCatalog) *cobra.Command {
	var fromDir string
	var size sizeFlag
	cmd := &cobra.Command{
		Use:   "build NAME --from-dir DIR [--size SIZE]",
		Short: "Build an ext4 DAX image from a directory",
		Long: `Build the image NAME in the catalog directory: an ext4 filesystem with 4 KiB
blocks holding DIR, after a PFN info block at 4 KiB (memmap in guest RAM,
data at 2 MiB), so a guest given it as a label-less NVDIMM mounts it with
DAX at first boot (mount -t ext4 -o dax,ro /dev/pmemN). --size is the whole
image (a multiple of 2 MiB); by default it is picked from DIR's contents
and rounded up to 16 MiB. Needs mke2fs from e2fsprogs.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if fromDir == "" {
				return errors.New("--from-dir is required")
			}
			c, err := open()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			progress, finish := progressFunc(cmd, "hashing")
			rep, err := c.Build(args[0], fromDir, memfile.BuildOptions{Size: size.v, Context: ctx, Progress: progress})
			finish()
			if err != nil {
				return err
			}
			return printAddReport(cmd, rep, "built")
		},
	}
	cmd.Flags().StringVar(&fromDir, "from-dir", "", "directory whose tree becomes the filesystem")
	cmd.Flags().Var(&size, "size", "image size (default: from the directory's contents)")
	return cmd
}

func newImageListCmd(open openCatalog) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List catalogued images",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := open()
			if err != nil {
				return err
			}
			ims, err := c.List()
			if err != nil {
				return err
			}
			if ims == nil {
				ims = []memfile.Image{}
			}
			return output(cmd, ims, func(w io.Writer) error {
				if len(ims) == 0 {
					fmt.Fprintf(w, "no images in %s\n", c.Dir())
					return nil
				}
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tSIZE\tFORMAT\tINFO BLOCK\tSHA256\tPATH")
				for _, im := range ims {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", im.Name, memfile.FormatSize(im.Size),
						im.Layout.Format, im.Layout.InfoBlock, im.SHA256[:12], im.Path)
				}
				return tw.Flush()
			})
		},
	}
}

func newImageShowCmd(open openCatalog) *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Show an image: layout, digests, protections, page-cache use",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := open()
			if err != nil {
				return err
			}
			st, err := c.Status(args[0])
			if err != nil {
				return err
			}
			return output(cmd, st, func(w io.Writer) error {
				l := st.Layout
				fmt.Fprintf(w, "name          %s\n", st.Name)
				fmt.Fprintf(w, "path          %s\n", st.Path)
				fmt.Fprintf(w, "size          %s (%d bytes)\n", memfile.FormatSize(st.Size), st.Size)
				fmt.Fprintf(w, "format        %s\n", l.Format)
				fmt.Fprintf(w, "info block    %s\n", l.InfoBlock)
				fmt.Fprintf(w, "data          %s at offset %d (the guest's /dev/pmemN)\n", memfile.FormatSize(l.DataSize), l.DataOffset)
				fmt.Fprintf(w, "sha256        %s\n", st.SHA256)
				fmt.Fprintf(w, "data sha256   %s\n", st.DataSHA256)
				fmt.Fprintf(w, "created       %s\n", st.Created.Format(time.RFC3339))
				fmt.Fprintf(w, "immutable     %v\n", st.ImmutableNow)
				fmt.Fprintf(w, "locked by     %s\n", st.LockedBy)
				fmt.Fprintf(w, "page cache    %s of %s\n", memfile.FormatSize(st.CachedBytes), memfile.FormatSize(st.Size))
				owned := "kept by image rm (added in place)"
				if st.Owned {
					owned = "deleted by image rm (built in the catalog)"
				}
				fmt.Fprintf(w, "file          %s\n", owned)
				return nil
			})
		},
	}
}

func newImageRmCmd(open openCatalog) *cobra.Command {
	var purge bool
	cmd := &cobra.Command{
		Use:   "rm NAME [--purge]",
		Short: "Remove an image from the catalog",
		Long: `Remove NAME from the catalog. An image built in the catalog directory is
deleted; an added file is kept (immutable attribute cleared, its record
still read-only) unless --purge. An image a VM holds locked is refused.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := open()
			if err != nil {
				return err
			}
			rep, err := c.Remove(args[0], purge)
			if err != nil {
				return err
			}
			return output(cmd, rep, func(w io.Writer) error {
				if rep.Deleted {
					fmt.Fprintf(w, "removed image %s and deleted %s\n", rep.Name, rep.Path)
				} else {
					fmt.Fprintf(w, "removed image %s; kept %s\n", rep.Name, rep.Path)
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&purge, "purge", false, "also delete an added file and its metadata record")
	return cmd
}

func newImageVerifyCmd(open openCatalog) *cobra.Command {
	return &cobra.Command{
		Use:   "verify NAME",
		Short: "Re-hash an image and check it against the catalog",
		Long: `Re-hash NAME (SHA-256 of the whole file and of the guest's data range, under
a shared lock) and check its protections. Exits non-zero when anything
differs.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := open()
			if err != nil {
				return err
			}
			progress, finish := progressFunc(cmd, "hashing")
			rep, err := c.Verify(args[0], progress)
			finish()
			if err != nil {
				return err
			}
			if err := output(cmd, rep, func(w io.Writer) error {
				if rep.OK {
					fmt.Fprintf(w, "image %s: OK (sha256 %s)\n", rep.Name, rep.SHA256)
					return nil
				}
				fmt.Fprintf(w, "image %s: MISMATCH\n", rep.Name)
				for _, p := range rep.Problems {
					fmt.Fprintf(w, "  %s\n", p)
				}
				fmt.Fprintf(w, "  sha256   %s\n  expected %s\n", rep.SHA256, rep.ExpectedSHA256)
				return nil
			}); err != nil {
				return err
			}
			if !rep.OK {
				return errVerifyFailed
			}
			return nil
		},
	}
}

// imageCloneResult is the JSON output of image clone.
type imageCloneResult struct {
	Image  string `json:"image"`
	Dest   string `json:"dest"`
	Method string `json:"method"`
}

func newImageCloneCmd(open openCatalog) *cobra.Command {
	return &cobra.Command{
		Use:   "clone NAME PATH",
		Short: "Make a private writable backing from an image",
		Long: `Copy the image NAME to PATH as a writable backing with its own metadata
record (not read-only): a reflink where the filesystem can (XFS, btrfs),
else a copy of the data extents with progress. The image is unchanged.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := open()
			if err != nil {
				return err
			}
			progress, finish := progressFunc(cmd, "copying")
			method, err := c.Clone(args[0], args[1], progress)
			finish()
			if err != nil {
				return err
			}
			res := imageCloneResult{Image: args[0], Dest: args[1], Method: method}
			return output(cmd, res, func(w io.Writer) error {
				fmt.Fprintf(w, "cloned image %s to %s (%s)\n", res.Image, res.Dest, res.Method)
				return nil
			})
		},
	}
}

func newImageQEMUArgsCmd(open openCatalog) *cobra.Command {
	var o memfile.QEMUArgOptions
	var ram sizeFlag
	cmd := &cobra.Command{
		Use:   "qemu-args NAME [--id ID] [--slot N] [--ram SIZE]",
		Short: "Print the QEMU arguments that attach an image read-only",
		Long: `Print the -machine, -m, -object and -device arguments that attach the image
NAME as a read-only NVDIMM: readonly=on,share=on on the backend and
unarmed=on on the device. There is no writable form; use 'image clone'.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := open()
			if err != nil {
				return err
			}
			o.RAM = ram.v
			a, err := c.QEMUArgs(args[0], o, false)
			if err != nil {
				return err
			}
			return printQEMUArgs(cmd, a)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.ID, "id", "nv0", "device id (the backend is mem-ID)")
	f.IntVar(&o.Slot, "slot", -1, "nvdimm slot (default: none)")
	f.IntVar(&o.Slots, "slots", 0, "memory slots for -m (default 4)")
	f.Var(&ram, "ram", "guest RAM for -m (default 1G)")
	return cmd
}
