package memfile

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvdimm-backend/nvdimm-backend/label"
)

// hashChunk is the read size while hashing and the progress granularity.
const hashChunk = 4 * MiB

// ImageDigests are the SHA-256 digests recorded for an image.
type ImageDigests struct {
	SHA256     string // whole file
	DataSHA256 string // [DataOffset, DataOffset+DataSize)
}

// hashImage reads size bytes of r and returns the whole-file digest and
// the digest of [dataOff, dataOff+dataSize), in one pass. progress, if
// set, is called as bytes are read.
func hashImage(r io.ReaderAt, size, dataOff, dataSize uint64, progress func(done, total uint64)) (ImageDigests, error) {
	if dataOff > size || dataSize > size-dataOff {
		return ImageDigests{}, fmt.Errorf("data range [%d, %d) is outside the %d-byte file", dataOff, dataOff+dataSize, size)
	}
	whole, data := sha256.New(), sha256.New()
	buf := make([]byte, hashChunk)
	dataEnd := dataOff + dataSize
	for off := uint64(0); off < size; {
		n := min(uint64(len(buf)), size-off)
		got, err := r.ReadAt(buf[:n], int64(off))
		if uint64(got) != n {
			if err == nil || err == io.EOF {
				return ImageDigests{}, fmt.Errorf("read at %d: file ended early (%d of %d bytes)", off, off+uint64(got), size)
			}
			return ImageDigests{}, fmt.Errorf("read at %d: %w", off, err)
		}
		chunk := buf[:n]
		// The part of this chunk inside the data range is hashed on
		// another core while this one hashes the whole chunk.
		lo, hi := max(off, dataOff), min(off+n, dataEnd)
		var done chan struct{}
		if lo < hi {
			done = make(chan struct{})
			go func() {
				data.Write(chunk[lo-off : hi-off])
				close(done)
			}()
		}
		whole.Write(chunk)
		if done != nil {
			<-done
		}
		off += n
		if progress != nil {
			progress(off, size)
		}
	}
	return ImageDigests{SHA256: hex.EncodeToString(whole.Sum(nil)), DataSHA256: hex.EncodeToString(data.Sum(nil))}, nil
}

// infoBlockReserve is the kernel's info_block_reserve(): 8 KiB at the
// start of a namespace with a PFN or device-DAX info block.
const infoBlockReserve = 8 * KiB

// probeImageLayout reads what a label-less guest namespace of guestSize
// bytes at the start of r holds at offset 4 KiB, and returns the layout
// (without Format and Align) and warnings for the operator. A block with
// a PFN or DAX signature that the guest kernel would refuse is an error.
func probeImageLayout(r io.ReaderAt, guestSize uint64) (ImageLayout, []string, error) {
	l := ImageLayout{GuestSize: guestSize, InfoBlock: InfoNone, DataSize: guestSize}
	if guestSize < label.InfoBlockOffset+label.InfoBlockSize {
		return l, []string{"image is too small for a PFN info block: the guest sees a raw namespace without DAX"}, nil
	}
	ib, err := label.ReadInfoBlock(r, 0)
	if errors.Is(err, label.ErrNoInfoBlock) {
		return l, []string{"no PFN info block at offset 4 KiB: the guest sees a raw namespace and cannot mount it with DAX (\"DAX unsupported by block device\"); build the image with `image build` to get one"}, nil
	}
	if err != nil {
		return l, nil, err
	}
	if err := ib.Validate(guestSize, label.UUID{}); err != nil {
		return l, nil, fmt.Errorf("info block at offset %d (for a %d-byte label-less namespace): %w; the guest kernel would refuse it",
			label.InfoBlockOffset, guestSize, err)
	}
	// The kernel keeps the first 8 KiB of the namespace for the info
	// block (info_block_reserve) and refuses a ram-mode block whose data
	// starts inside it; a pmem-mode one would get a negative memmap
	// reserve. Validate (nd_pfn_validate) does not check this.
	if ib.DataOff < infoBlockReserve {
		return l, nil, fmt.Errorf("info block at offset %d: dataoff %d lies inside the first %d bytes the kernel reserves for the info block",
			label.InfoBlockOffset, ib.DataOff, infoBlockReserve)
	}
	start := ib.DataOff
	if ib.VersionMinor >= 1 {
		start += uint64(ib.StartPad)
	}
	// The kernel's data range: npfns pages from dataoff (nd_pfn_validate
	// already bounded dataoff; npfns comes from the file, so clamp it).
	size := ib.NPFNs * label.InfoBlockSize
	if ib.NPFNs > guestSize/label.InfoBlockSize || start > guestSize || size > guestSize-start {
		return l, nil, fmt.Errorf("info block at offset %d: npfns %d from dataoff %d runs past the %d-byte namespace",
			label.InfoBlockOffset, ib.NPFNs, start, guestSize)
	}
	if size == 0 {
		return l, nil, fmt.Errorf("info block at offset %d: npfns is 0", label.InfoBlockOffset)
	}
	l.DataOffset, l.DataSize = start, size
	var warnings []string
	switch {
	case ib.Kind() == label.ModeDevDAX:
		l.InfoBlock = InfoDevDAX
		warnings = append(warnings, "the info block is a device-DAX block: the guest gets /dev/daxN.M, not a block device it can mount")
	case ib.Mode == label.PFNModeRAM:
		l.InfoBlock = InfoPFNRAM
	default:
		l.InfoBlock = InfoPFNPMEM
		warnings = append(warnings, "the PFN info block keeps the memmap in the namespace (mode pmem): the guest must write it there, which a read-only attach does not allow; rebuild with `image build` (memmap in guest RAM)")
	}
	return l, warnings, nil
}

// ImageOptions controls Add.
type ImageOptions struct {
	// Progress, if set, is called while the file is hashed.
	Progress func(done, total uint64)
	// Now is the creation time; zero means time.Now.
	Now time.Time
}

// AddReport is what Add (and Build) did.
type AddReport struct {
	Image    Image    `json:"image"`
	Warnings []string `json:"warnings,omitempty"`
}

// Add catalogues the existing file path as the read-only image name, in
// place: it checks the file (a regular file, a multiple of 2 MiB, no label
// area, an info block the guest would accept), hashes it under a shared
// lock, marks its metadata record read-only (writing one if it has none),
// removes its write permission bits and sets the immutable attribute where
// the filesystem and privileges allow.
func (c *Catalog) Add(name, path string, o ImageOptions) (AddReport, error) {
	if err := validImageName(name); err != nil {
		return AddReport{}, fmt.Errorf("image add: %w", err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return AddReport{}, fmt.Errorf("image add %s: %w", path, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return AddReport{}, fmt.Errorf("image add %s: %w", path, err)
	}
	var rep AddReport
	err = c.update(func(ims []Image) ([]Image, error) {
		if err := checkFree(ims, name, real); err != nil {
			return nil, err
		}
		im, warnings, err := catalogueFile(name, real, ImageFormatRaw, false, o)
		if err != nil {
			return nil, err
		}
		rep = AddReport{Image: im, Warnings: warnings}
		return append(ims, im), nil
	})
	if err != nil {
		return AddReport{}, fmt.Errorf("image add %s: %w", name, err)
	}
	return rep, nil
}

func checkFree(ims []Image, name, path string) error {
	for _, im := range ims {
		if im.Name == name {
			return fmt.Errorf("name %q: %w (file %s)", name, ErrImageExists, im.Path)
		}
		if im.Path == path {
			return fmt.Errorf("file %s: %w as %q", path, ErrImageExists, im.Name)
		}
	}
	return nil
}

// catalogueFile checks, hashes and protects the file at path (absolute,
// symlinks resolved) and returns its catalog entry. On error the file's
// metadata record and permissions are as before.
func catalogueFile(name, path, format string, owned bool, o ImageOptions) (im Image, warnings []string, err error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return Image{}, nil, err
	}
	if !fi.Mode().IsRegular() {
		return Image{}, nil, fmt.Errorf("%s: %s, not a regular file; images are files", path, describeMode(fi.Mode()))
	}
	oldMeta, err := ReadMeta(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return Image{}, nil, err
	}
	align := uint64(DefaultAlign)
	if oldMeta != nil {
		if oldMeta.Layout.LabelSize != 0 {
			return Image{}, nil, fmt.Errorf("%s has a %s label area: images are label-less (the guest finds the filesystem through the PFN info block of its raw namespace); use a file without one",
				path, FormatSize(oldMeta.Layout.LabelSize))
		}
		align = oldMeta.Layout.Align
	}
	b, err := Open(path, OpenOptions{ReadOnly: true, Align: align})
	if err != nil {
		return Image{}, nil, err
	}
	defer b.Close()
	if b.Kind() != KindFile && b.Kind() != KindDAXFile {
		return Image{}, nil, fmt.Errorf("%s is a %s backing; images are regular files", path, b.Kind())
	}
	if err := b.Lock(LockShared, false); err != nil {
		return Image{}, nil, err
	}
	size := b.Size()
	if size%align != 0 {
		return Image{}, nil, fmt.Errorf("%s is %d bytes, not a multiple of the %s alignment: QEMU would hide the last %d bytes from the guest; pad it (truncate -s %d)",
			path, size, FormatSize(align), size%align, (size/align+1)*align)
	}
	layout, warnings, err := probeImageLayout(b.File(), b.Layout().GuestSize)
	if err != nil {
		return Image{}, nil, fmt.Errorf("%s: %w", path, err)
	}
	layout.Format, layout.Align = format, align
	warnings = append(append([]string(nil), b.Layout().Warnings...), warnings...)
	d, err := hashImage(b.File(), size, layout.DataOffset, layout.DataSize, o.Progress)
	if err != nil {
		return Image{}, nil, fmt.Errorf("hashing %s: %w", path, err)
	}
	now := o.Now
	if now.IsZero() {
		now = time.Now()
	}
	// Mark the record read-only (the rule memfile's Open, Lock, Map and
	// QEMUArgsFor enforce), then drop write permission and set immutable.
	m := Meta{Kind: b.Kind(), Layout: b.Layout(), ReadOnly: true, Slot: NoSlot, Created: now.UTC()}
	if oldMeta != nil {
		m = *oldMeta
		m.ReadOnly = true
	}
	m.Image = name // names the image in refusals of writable use
	if layout.InfoBlock == InfoPFNRAM || layout.InfoBlock == InfoPFNPMEM {
		m.Mode = "fsdax"
	} else if layout.InfoBlock == InfoDevDAX {
		m.Mode = "devdax"
	}
	if err := WriteMeta(path, &m); err != nil {
		return Image{}, nil, err
	}
	defer func() {
		if err != nil {
			restoreMeta(path, oldMeta)
			_ = os.Chmod(path, fi.Mode().Perm())
		}
	}()
	if err = os.Chmod(path, fi.Mode().Perm()&^0o222); err != nil {
		return Image{}, nil, fmt.Errorf("%s: dropping write permission: %w", path, err)
	}
	immutable, ierr := setImmutable(b.File(), true)
	if ierr != nil {
		warnings = append(warnings, fmt.Sprintf("could not set the immutable attribute (%v): read-only is enforced by the metadata record and permissions only", ierr))
	}
	im = Image{
		Name: name, Path: path, Size: size, Layout: layout,
		SHA256: d.SHA256, DataSHA256: d.DataSHA256, Created: now.UTC(),
		Immutable: immutable, Owned: owned,
	}
	if err = im.Validate(); err != nil {
		if immutable {
			_, _ = setImmutable(b.File(), false)
		}
		return Image{}, nil, err
	}
	return im, warnings, nil
}

func restoreMeta(path string, old *Meta) {
	if old == nil {
		_ = os.Remove(MetaPath(path))
		return
	}
	_ = WriteMeta(path, old)
}

// setImmutable sets or clears FS_IMMUTABLE_FL on f. It reports whether
// the flag is now set; filesystems without the attribute and callers
// without CAP_LINUX_IMMUTABLE get an error.
func setImmutable(f *os.File, on bool) (bool, error) {
	fd := int(f.Fd())
	flags, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		return false, fmt.Errorf("FS_IOC_GETFLAGS: %w", err)
	}
	want := flags &^ fsImmutableFL
	if on {
		want |= fsImmutableFL
	}
	if want == flags {
		return on, nil
	}
	if err := unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(want)); err != nil {
		return !on, fmt.Errorf("FS_IOC_SETFLAGS: %w", err)
	}
	return on, nil
}

// isImmutable reports whether the file at path has FS_IMMUTABLE_FL.
func isImmutable(path string) bool {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	return err == nil && flags&fsImmutableFL != 0
}

// fsImmutableFL is FS_IMMUTABLE_FL from linux/fs.h.
const fsImmutableFL = 0x00000010
