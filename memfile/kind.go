package memfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Kinds of backing.
const (
	KindFile      = "file"       // regular file on a filesystem without DAX
	KindDAXFile   = "dax-file"   // regular file on a DAX filesystem (fsdax)
	KindDevDAX    = "devdax"     // device-DAX character device /dev/daxX.Y
	KindPMemBlock = "pmem-block" // pmem block device /dev/pmemN
	KindMemfd     = "memfd"      // anonymous memory file, gone with the process
)

func validKind(k string) bool {
	switch k {
	case KindFile, KindDAXFile, KindDevDAX, KindPMemBlock, KindMemfd:
		return true
	}
	return false
}

// StatxFunc reports a file's statx attributes and the mask of attributes
// the filesystem supports. Tests inject one to fake STATX_ATTR_DAX.
type StatxFunc func(path string) (attributes, mask uint64, err error)

// MapSyncFunc reports whether f can be mapped with MAP_SYNC. length is the
// smallest mapping the file accepts (the devdax alignment, else a page).
type MapSyncFunc func(f *os.File, length int, writable bool) bool

// Probe is how the kind of a backing is found: a sysfs root (default /sys)
// and injectable statx and MAP_SYNC probes. The zero value uses the host.
type Probe struct {
	SysfsRoot string
	Statx     StatxFunc
	MapSync   MapSyncFunc
}

func (p Probe) sysfs() string {
	if p.SysfsRoot == "" {
		return "/sys"
	}
	return p.SysfsRoot
}

func (p Probe) statx(path string) (uint64, uint64, error) {
	if p.Statx != nil {
		return p.Statx(path)
	}
	return HostStatx(path)
}

func (p Probe) mapSync(f *os.File, length int, writable bool) bool {
	if p.MapSync != nil {
		return p.MapSync(f, length, writable)
	}
	return HostMapSync(f, length, writable)
}

// HostStatx is the real statx probe.
func HostStatx(path string) (uint64, uint64, error) {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_BASIC_STATS, &st); err != nil {
		return 0, 0, fmt.Errorf("statx %s: %w", path, err)
	}
	return st.Attributes, st.Attributes_mask, nil
}

// HostMapSync tries a MAP_SHARED_VALIDATE|MAP_SYNC mapping of length bytes
// and reports whether the kernel accepted it.
func HostMapSync(f *os.File, length int, writable bool) bool {
	if length <= 0 {
		return false
	}
	prot := unix.PROT_READ
	if writable {
		prot |= unix.PROT_WRITE
	}
	m, err := unix.Mmap(int(f.Fd()), 0, length, prot, unix.MAP_SHARED_VALIDATE|unix.MAP_SYNC)
	if err != nil {
		return false
	}
	_ = unix.Munmap(m)
	return true
}

// deviceInfo is what probing a path found.
type deviceInfo struct {
	kind     string
	size     uint64
	dax      bool
	mapSync  bool
	devAlign uint64 // devdax alignment from sysfs, 0 otherwise
	sysfsDir string // sysfs device directory for devices
}

// readSysfsUint reads a decimal or 0x-prefixed number from a sysfs file.
func readSysfsUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return parseSysfsUint(string(b), path)
}

func parseSysfsUint(s, path string) (uint64, error) {
	t := strings.TrimSpace(s)
	v, err := strconv.ParseUint(t, 0, 64)
	if err != nil {
		return 0, fmt.Errorf("sysfs %s: %q is not a number", path, t)
	}
	return v, nil
}

// probeDevice classifies the already-open f at path.
func probeDevice(path string, f *os.File, fi os.FileInfo, p Probe, writable bool) (deviceInfo, error) {
	mode := fi.Mode()
	switch {
	case mode.IsDir():
		return deviceInfo{}, fmt.Errorf("%s is a directory, not a backing: give a file path inside it", path)
	case mode.IsRegular():
		d := deviceInfo{kind: KindFile, size: uint64(fi.Size())}
		attrs, mask, err := p.statx(path)
		if err != nil {
			return deviceInfo{}, err
		}
		if mask&unix.STATX_ATTR_DAX != 0 && attrs&unix.STATX_ATTR_DAX != 0 {
			d.kind, d.dax = KindDAXFile, true
		}
		if d.size >= PageSize {
			d.mapSync = p.mapSync(f, PageSize, writable)
		}
		return d, nil
	case mode&os.ModeDevice != 0 && mode&os.ModeCharDevice != 0:
		return probeDevDAX(path, f, fi, p, writable)
	case mode&os.ModeDevice != 0:
		return probePMemBlock(path, f, fi, p)
	default:
		return deviceInfo{}, fmt.Errorf("%s is a %s, not a regular file, devdax or pmem device", path, describeMode(mode))
	}
}

func describeMode(m os.FileMode) string {
	switch {
	case m&os.ModeNamedPipe != 0:
		return "named pipe"
	case m&os.ModeSocket != 0:
		return "socket"
	case m&os.ModeSymlink != 0:
		return "symbolic link"
	}
	return "special file (" + m.String() + ")"
}

func rdev(fi os.FileInfo) (uint32, uint32, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	return unix.Major(st.Rdev), unix.Minor(st.Rdev), true
}

func probeDevDAX(path string, f *os.File, fi os.FileInfo, p Probe, writable bool) (deviceInfo, error) {
	maj, mnr, ok := rdev(fi)
	if !ok {
		return deviceInfo{}, fmt.Errorf("%s: no device number", path)
	}
	dir := filepath.Join(p.sysfs(), "dev", "char", fmt.Sprintf("%d:%d", maj, mnr))
	sub, err := os.Readlink(filepath.Join(dir, "subsystem"))
	if err != nil {
		return deviceInfo{}, fmt.Errorf("%s is a character device (%d:%d) but not a device-DAX device (no subsystem link in %s); use /dev/daxX.Y or a regular file", path, maj, mnr, dir)
	}
	if s := filepath.Base(sub); s != "dax" {
		return deviceInfo{}, fmt.Errorf("%s is a character device (%d:%d) of subsystem %q, not a device-DAX device; use /dev/daxX.Y or a regular file", path, maj, mnr, s)
	}
	size, err := readSysfsUint(filepath.Join(dir, "size"))
	if err != nil {
		return deviceInfo{}, fmt.Errorf("devdax %s: size: %w", path, err)
	}
	align, err := readSysfsUint(filepath.Join(dir, "align"))
	if errors.Is(err, os.ErrNotExist) {
		// Older kernels keep it one level down.
		align, err = readSysfsUint(filepath.Join(dir, "device", "align"))
	}
	if err != nil {
		return deviceInfo{}, fmt.Errorf("devdax %s: align: %w", path, err)
	}
	if align < PageSize || align&(align-1) != 0 {
		return deviceInfo{}, fmt.Errorf("devdax %s: sysfs align %d is not a power of two of at least %d", path, align, PageSize)
	}
	if size == 0 || size%align != 0 {
		return deviceInfo{}, fmt.Errorf("devdax %s: size %d is not a non-zero multiple of its align %s", path, size, FormatSize(align))
	}
	d := deviceInfo{kind: KindDevDAX, size: size, dax: true, devAlign: align, sysfsDir: dir}
	if align <= 1<<30 {
		d.mapSync = p.mapSync(f, int(align), writable)
	}
	return d, nil
}

func probePMemBlock(path string, f *os.File, fi os.FileInfo, p Probe) (deviceInfo, error) {
	maj, mnr, ok := rdev(fi)
	if !ok {
		return deviceInfo{}, fmt.Errorf("%s: no device number", path)
	}
	dir := filepath.Join(p.sysfs(), "dev", "block", fmt.Sprintf("%d:%d", maj, mnr))
	daxFlag, err := readSysfsUint(filepath.Join(dir, "queue", "dax"))
	if err != nil {
		return deviceInfo{}, fmt.Errorf("%s is a block device (%d:%d) whose DAX support cannot be read: %w", path, maj, mnr, err)
	}
	if daxFlag != 1 {
		return deviceInfo{}, fmt.Errorf("%s is a block device (%d:%d) without DAX (queue/dax is %d): not persistent memory; use /dev/pmemN, a devdax device or a file", path, maj, mnr, daxFlag)
	}
	var size uint64
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); e != 0 {
		return deviceInfo{}, fmt.Errorf("pmem %s: BLKGETSIZE64: %w", path, e)
	}
	if size == 0 {
		return deviceInfo{}, fmt.Errorf("pmem %s: size 0", path)
	}
	return deviceInfo{kind: KindPMemBlock, size: size, dax: true, sysfsDir: dir}, nil
}
