package memfile

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nvdimm-backend/nvdimm-backend/label"
)

// BuildOptions controls Build.
type BuildOptions struct {
	// Size is the image size (what the guest's namespace covers); 0 picks
	// one from the directory's contents. It must be a multiple of 2 MiB.
	Size uint64
	// Context cancels mke2fs; nil means never.
	Context context.Context
	// Progress, if set, is called while the image is hashed.
	Progress func(done, total uint64)
	// Mke2fs is the mke2fs program; empty means "mke2fs" from PATH.
	Mke2fs string
}

// ext4 superblock facts used to check what mke2fs wrote.
const (
	ext4SuperOffset  = 1024
	ext4MagicOffset  = 0x38
	ext4LogBlockOff  = 0x18
	ext4Magic        = 0xEF53
	ext4BlockSize    = 4096
	ext4MinImageSize = 16 * MiB
)

// ImageInfoBlock returns the PFN info block for a read-only image
// namespace of size bytes (label-less, starting 2 MiB aligned): fsdax
// with the memmap kept in guest RAM (PFN_MODE_RAM), so the data starts at
// 2 MiB. The memmap cannot live in the namespace (PFN_MODE_PMEM): the
// guest initialises it with stores, and a read-only attach discards them.
// It uses label's encoder and then applies the kernel's PFN_MODE_RAM
// rule from nd_pfn_init: dataoff = ALIGN(start + 8 KiB, align) - start.
func ImageInfoBlock(size uint64) (*label.InfoBlock, error) {
	ib, err := label.NewInfoBlock(label.InfoParams{Mode: label.ModeFSDAX, Size: size, Align: DefaultAlign})
	if err != nil {
		return nil, err
	}
	off := alignUp(8*KiB, DefaultAlign)
	if off >= size-uint64(ib.EndTrunc) {
		return nil, fmt.Errorf("info block: a %d-byte namespace has no room for data after %d bytes", size, off)
	}
	ib.Mode = label.PFNModeRAM
	ib.DataOff = off
	ib.NPFNs = (size - off - uint64(ib.EndTrunc)) / PageSize
	ib.Checksum = ib.ComputeChecksum()
	if err := ib.Validate(size, label.UUID{}); err != nil {
		return nil, err
	}
	return ib, nil
}

func alignUp(v, a uint64) uint64 { return (v + a - 1) / a * a }

// treeUsage sums what a directory tree needs in an ext4 filesystem with
// 4 KiB blocks: file data rounded to blocks, one block per directory and
// symlink, and the number of inodes.
func treeUsage(dir string) (total uint64, inodes uint64, err error) {
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		inodes++
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case fi.Mode().IsRegular():
			total += alignUp(uint64(fi.Size()), ext4BlockSize)
		case fi.IsDir(), fi.Mode()&fs.ModeSymlink != 0:
			total += ext4BlockSize
		}
		return nil
	})
	return total, inodes, err
}

// defaultImageSize picks a size for content bytes and inodes: the data
// with a quarter more for ext4's metadata and slack, the 2 MiB in front of
// the data, rounded up to the guest's 16 MiB region alignment.
func defaultImageSize(content, inodes uint64) uint64 {
	fsSize := content + content/4 + inodes*256 + 4*MiB
	return max(alignUp(fsSize+DefaultAlign, RegionAlign), ext4MinImageSize)
}

// Build makes a new image name in the catalog directory: an ext4
// filesystem with 4 KiB blocks holding the tree fromDir, placed after a
// PFN info block (ImageInfoBlock) so that a guest given the file as a
// label-less NVDIMM finds an fsdax namespace and mounts it with DAX at
// first boot. The image is then catalogued read-only as Add does. On any
// error nothing is left behind.
func (c *Catalog) Build(name, fromDir string, o BuildOptions) (AddReport, error) {
	if err := validImageName(name); err != nil {
		return AddReport{}, fmt.Errorf("image build: %w", err)
	}
	fi, err := os.Stat(fromDir)
	if err != nil {
		return AddReport{}, fmt.Errorf("image build %s: --from-dir: %w", name, err)
	}
	if !fi.IsDir() {
		return AddReport{}, fmt.Errorf("image build %s: --from-dir %s is not a directory", name, fromDir)
	}
	content, inodes, err := treeUsage(fromDir)
	if err != nil {
		return AddReport{}, fmt.Errorf("image build %s: reading %s: %w", name, fromDir, err)
	}
	size := o.Size
	if size == 0 {
		size = defaultImageSize(content, inodes)
	}
	if size%DefaultAlign != 0 {
		return AddReport{}, fmt.Errorf("image build %s: size %s is not a multiple of 2 MiB (the guest maps pmem in 2 MiB units); use --size %s",
			name, FormatSize(size), FormatSize(alignUp(size, DefaultAlign)))
	}
	if size < ext4MinImageSize {
		return AddReport{}, fmt.Errorf("image build %s: size %s is below the %s minimum", name, FormatSize(size), FormatSize(ext4MinImageSize))
	}
	ib, err := ImageInfoBlock(size)
	if err != nil {
		return AddReport{}, fmt.Errorf("image build %s: %w", name, err)
	}
	if need := content + DefaultAlign; need > size {
		return AddReport{}, fmt.Errorf("image build %s: %s holds %s, which does not fit in a %s image; use a larger --size or omit it",
			name, fromDir, FormatSize(content), FormatSize(size))
	}
	dst := filepath.Join(c.dir, name+".img")
	var rep AddReport
	err = c.update(func(ims []Image) ([]Image, error) {
		if err := checkFree(ims, name, dst); err != nil {
			return nil, err
		}
		for _, p := range []string{dst, MetaPath(dst)} {
			if _, err := os.Lstat(p); err == nil {
				return nil, fmt.Errorf("%s already exists (not in the catalog); remove it first", p)
			}
		}
		if err := buildFile(dst, fromDir, size, inodes, ib, o); err != nil {
			return nil, err
		}
		im, warnings, err := catalogueFile(name, dst, ImageFormatExt4, true, ImageOptions{Progress: o.Progress})
		if err != nil {
			removeImageFile(dst)
			return nil, err
		}
		if im.Layout.InfoBlock != InfoPFNRAM || im.Layout.DataOffset != ib.DataOff {
			removeImageFile(dst)
			return nil, fmt.Errorf("%s: built image reads back as info block %s at data offset %d, want pfn-ram at %d",
				dst, im.Layout.InfoBlock, im.Layout.DataOffset, ib.DataOff)
		}
		rep = AddReport{Image: im, Warnings: warnings}
		return append(ims, im), nil
	})
	if err != nil {
		return AddReport{}, fmt.Errorf("image build %s: %w", name, err)
	}
	return rep, nil
}

// buildFile writes the image file dst: a temporary file filled by mke2fs
// at the info block's data offset, the info block, fsync, and a rename
// that never replaces an existing file.
func buildFile(dst, fromDir string, size, inodes uint64, ib *label.InfoBlock, o BuildOptions) (err error) {
	tmp := filepath.Join(filepath.Dir(dst), "."+filepath.Base(dst)+".build-"+strconv.Itoa(os.Getpid()))
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		f.Close()
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if err = f.Truncate(int64(size)); err != nil {
		return fmt.Errorf("%s: %w", tmp, err)
	}
	dataOff, dataSize := ib.DataOff, ib.NPFNs*PageSize
	ctx := o.Context
	if ctx == nil {
		ctx = context.Background()
	}
	prog := o.Mke2fs
	if prog == "" {
		prog = "mke2fs"
	}
	vol := filepath.Base(dst)
	vol = strings.TrimSuffix(vol, ".img")
	if len(vol) > 16 {
		vol = vol[:16]
	}
	// No journal: the guests mount it read-only, so there is nothing to
	// replay and nothing to write. -N leaves room for the tree's inodes.
	args := []string{
		"-q", "-F", "-t", "ext4", "-b", strconv.Itoa(ext4BlockSize), "-m", "0",
		"-O", "^has_journal", "-N", strconv.FormatUint(max(inodes+inodes/4+64, 1024), 10),
		"-L", vol, "-E", "offset=" + strconv.FormatUint(dataOff, 10) + ",nodiscard",
		"-d", fromDir, tmp, strconv.FormatUint(dataSize/ext4BlockSize, 10),
	}
	cmd := exec.CommandContext(ctx, prog, args...)
	out, cerr := cmd.CombinedOutput()
	if cerr != nil {
		if errors.Is(cerr, exec.ErrNotFound) {
			return fmt.Errorf("mke2fs not found (install e2fsprogs): %w", cerr)
		}
		return fmt.Errorf("mke2fs %s: %w: %s", strings.Join(args, " "), cerr, strings.TrimSpace(string(out)))
	}
	if err = checkExt4(f, dataOff); err != nil {
		return fmt.Errorf("%s: mke2fs output: %w", tmp, err)
	}
	if err = label.WriteInfoBlock(f, 0, ib); err != nil {
		return fmt.Errorf("%s: %w", tmp, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("%s: fsync: %w", tmp, err)
	}
	if err = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp, dst, err)
	}
	return nil
}

// checkExt4 checks that an ext4 superblock with 4 KiB blocks starts at off.
func checkExt4(f *os.File, off uint64) error {
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, int64(off+ext4SuperOffset)); err != nil {
		return fmt.Errorf("reading the ext4 superblock at %d: %w", off+ext4SuperOffset, err)
	}
	if m := binary.LittleEndian.Uint16(sb[ext4MagicOffset:]); m != ext4Magic {
		return fmt.Errorf("no ext4 superblock at %d (magic %#x)", off+ext4SuperOffset, m)
	}
	if lb := binary.LittleEndian.Uint32(sb[ext4LogBlockOff:]); lb != 2 {
		return fmt.Errorf("ext4 block size is %d, want 4096 (DAX needs the page size)", 1024<<min(lb, 20))
	}
	if bytes.Count(sb, []byte{0}) == len(sb) {
		return errors.New("empty superblock")
	}
	return nil
}

// removeImageFile clears the immutable attribute and deletes an image
// file and its metadata record.
func removeImageFile(path string) error {
	if f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0); err == nil {
		_, _ = setImmutable(f, false)
		f.Close()
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	if err := os.Remove(MetaPath(path)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", MetaPath(path), err)
	}
	return nil
}
