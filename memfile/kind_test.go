package memfile

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeSysfs builds a sysfs tree with a device-DAX entry for the character
// device dev (by its device number) of the given size and align.
func fakeDevDAX(t *testing.T, dev string, size, align uint64, subsystem string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		t.Skipf("%s: %v", dev, err)
	}
	root := t.TempDir()
	dir := filepath.Join(root, "dev", "char", fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev)))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../../../bus/"+subsystem, filepath.Join(dir, "subsystem")); err != nil {
		t.Fatal(err)
	}
	write := func(name, v string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("size", fmt.Sprintf("%d\n", size))
	if align != 0 {
		write("align", fmt.Sprintf("%d\n", align))
	}
	return root
}

func noDAX(string) (uint64, uint64, error) { return 0, unix.STATX_ATTR_DAX, nil }

func TestKindFile(t *testing.T) {
	b, err := Create(filepath.Join(t.TempDir(), "f.img"), CreateOptions{Size: 16 * MiB, Probe: Probe{Statx: noDAX}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Kind() != KindFile || b.DAX() || b.MapSync() {
		t.Fatalf("kind %s dax %v map_sync %v", b.Kind(), b.DAX(), b.MapSync())
	}
}

func TestKindDAXFileFromStatx(t *testing.T) {
	p := filepath.Join(t.TempDir(), "d.img")
	var probed bool
	probe := Probe{
		Statx: func(path string) (uint64, uint64, error) {
			return unix.STATX_ATTR_DAX, unix.STATX_ATTR_DAX, nil
		},
		MapSync: func(f *os.File, length int, writable bool) bool { probed = length == PageSize && writable; return true },
	}
	b, err := Create(p, CreateOptions{Size: 16 * MiB, LabelSize: 128 * KiB, Probe: probe})
	if err != nil {
		t.Fatal(err)
	}
	if b.Kind() != KindDAXFile || !b.DAX() || !b.MapSync() || !probed {
		t.Fatalf("kind %s dax %v map_sync %v probed %v", b.Kind(), b.DAX(), b.MapSync(), probed)
	}
	if b.Meta().Kind != KindDAXFile {
		t.Fatalf("meta kind %s", b.Meta().Kind)
	}
	b.Close()
	// The real MAP_SYNC probe on a non-DAX filesystem says no.
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if HostMapSync(f, PageSize, false) {
		t.Skip("the temp filesystem accepts MAP_SYNC (it is DAX)")
	}
	// Open with a statx that reports no DAX support at all (mask clear).
	b2, err := Open(p, OpenOptions{Probe: Probe{Statx: func(string) (uint64, uint64, error) { return unix.STATX_ATTR_DAX, 0, nil }}})
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	if b2.Kind() != KindFile {
		t.Fatalf("attribute without mask taken as DAX: %s", b2.Kind())
	}
}

func TestKindDevDAXFakeSysfs(t *testing.T) {
	// /dev/zero stands in for /dev/dax0.0: a mappable character device.
	root := fakeDevDAX(t, "/dev/zero", 64*MiB, 2*MiB, "dax")
	// A shared mapping of /dev/zero is backed only from offset 0: map
	// from 0 and hand back the window (Munmap finds it by its end).
	mmapLabel = func(fd int, off int64, length int, prot, flags int) ([]byte, error) {
		m, err := unix.Mmap(fd, 0, int(off)+length, prot, flags)
		if err != nil {
			return nil, err
		}
		return m[off:], nil
	}
	t.Cleanup(func() { mmapLabel = unix.Mmap })
	b, err := Open("/dev/zero", OpenOptions{LabelSize: 128 * KiB, Probe: Probe{SysfsRoot: root}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	l := b.Layout()
	if b.Kind() != KindDevDAX || b.Size() != 64*MiB || b.DevAlign() != 2*MiB || !b.DAX() || !b.PMem() || l.Align != 2*MiB {
		t.Fatalf("kind %s size %d align %d dax %v layout %+v", b.Kind(), b.Size(), b.DevAlign(), b.DAX(), l)
	}
	// devdax loses one align unit to a label area.
	if l.GuestSize != 62*MiB || l.LabelOffset != 64*MiB-128*KiB {
		t.Fatalf("layout %+v", l)
	}
	// The label area is accessed through an aligned mapping.
	a, err := b.LabelArea()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.WriteAt([]byte("NAMESPACE_INDEX"), 4096); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 15)
	if _, err := a.ReadAt(got, 4096); err != nil || string(got) != "NAMESPACE_INDEX" {
		t.Fatalf("read back %q, %v", got, err)
	}
	if err := a.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.ReadAt(got, 128*KiB-10); err == nil {
		t.Fatal("read past the label area accepted")
	}
	// An align below the device's is refused.
	if _, err := Open("/dev/zero", OpenOptions{Align: 4 * KiB, Probe: Probe{SysfsRoot: root}}); err == nil || !strings.Contains(err.Error(), "below the device's alignment 2 MiB") {
		t.Fatalf("err = %v", err)
	}
	// Create never touches a device.
	if _, err := Create("/dev/zero", CreateOptions{Size: 2 * MiB, Probe: Probe{SysfsRoot: root}}); err == nil || !strings.Contains(err.Error(), "already exists as a device") {
		t.Fatalf("err = %v", err)
	}
}

func TestKindDevDAXBadSysfs(t *testing.T) {
	cases := []struct {
		name        string
		size, align uint64
		sub         string
		want        string
	}{
		{"not dax", 64 * MiB, 2 * MiB, "mem", `subsystem "mem", not a device-DAX device`},
		{"size not multiple of align", 3 * MiB, 2 * MiB, "dax", "not a non-zero multiple of its align"},
		{"align not power of two", 64 * MiB, 3 * MiB, "dax", "not a power of two"},
		{"no align", 64 * MiB, 0, "dax", "align"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := fakeDevDAX(t, "/dev/zero", c.size, c.align, c.sub)
			_, err := Open("/dev/zero", OpenOptions{Probe: Probe{SysfsRoot: root}})
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "/dev/zero") {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
		})
	}
	// No sysfs entry at all: a non-DAX character device.
	_, err := Open("/dev/null", OpenOptions{Probe: Probe{SysfsRoot: t.TempDir()}})
	if err == nil || !strings.Contains(err.Error(), "/dev/null is a character device") || !strings.Contains(err.Error(), "not a device-DAX device") {
		t.Fatalf("err = %v", err)
	}
	// Garbage in sysfs gives a clear error.
	root := fakeDevDAX(t, "/dev/zero", 0, 2*MiB, "dax")
	var st unix.Stat_t
	_ = unix.Stat("/dev/zero", &st)
	sizeFile := filepath.Join(root, "dev", "char", fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev)), "size")
	_ = os.WriteFile(sizeFile, []byte("lots\n"), 0o644)
	if _, err := Open("/dev/zero", OpenOptions{Probe: Probe{SysfsRoot: root}}); err == nil || !strings.Contains(err.Error(), `"lots" is not a number`) {
		t.Fatalf("err = %v", err)
	}
}

func TestKindPMemBlockLoop(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to attach a loop device")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("losetup not installed")
	}
	img := filepath.Join(t.TempDir(), "blk.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 32*MiB); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		t.Skipf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", dev).Run() })
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	q := filepath.Join(root, "dev", "block", fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev)), "queue")
	if err := os.MkdirAll(q, 0o755); err != nil {
		t.Fatal(err)
	}
	// Without DAX the block device is refused.
	_ = os.WriteFile(filepath.Join(q, "dax"), []byte("0\n"), 0o644)
	if _, err := Open(dev, OpenOptions{Probe: Probe{SysfsRoot: root}}); err == nil || !strings.Contains(err.Error(), "without DAX") {
		t.Fatalf("err = %v", err)
	}
	_ = os.WriteFile(filepath.Join(q, "dax"), []byte("1\n"), 0o644)
	b, err := Open(dev, OpenOptions{LabelSize: 128 * KiB, Probe: Probe{SysfsRoot: root}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Kind() != KindPMemBlock || b.Size() != 32*MiB || !b.DAX() || b.PMem() || b.Layout().GuestSize != 30*MiB {
		t.Fatalf("kind %s size %d dax %v layout %+v", b.Kind(), b.Size(), b.DAX(), b.Layout())
	}
	a, err := b.LabelArea()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.WriteAt([]byte("label"), 0); err != nil {
		t.Fatal(err)
	}
	if err := a.Sync(); err != nil {
		t.Fatal(err)
	}
}

func TestKindRefusesDirectoryAndFifo(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(dir, OpenOptions{}); err == nil || !strings.Contains(err.Error(), "is a directory") {
		t.Fatalf("err = %v", err)
	}
	fifo := filepath.Join(dir, "p")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Skip(err)
	}
	// Opening a FIFO O_RDWR does not block on Linux.
	if _, err := Open(fifo, OpenOptions{}); err == nil || !strings.Contains(err.Error(), "named pipe") {
		t.Fatalf("err = %v", err)
	}
}

func TestMemfd(t *testing.T) {
	b, err := CreateMemfd("guest0", CreateOptions{Size: 4 * MiB, LabelSize: 128 * KiB})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Kind() != KindMemfd || b.Size() != 4*MiB+128*KiB || !strings.HasPrefix(b.Path(), "/proc/") {
		t.Fatalf("kind %s size %d path %s", b.Kind(), b.Size(), b.Path())
	}
	if _, err := os.Stat(b.Path()); err != nil {
		t.Fatalf("memfd path not openable: %v", err)
	}
	m, unmap, err := Map(b, false)
	if err != nil {
		t.Fatal(err)
	}
	m[0] = 0x5a
	if err := unmap(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1)
	if _, err := b.File().ReadAt(got, 0); err != nil || got[0] != 0x5a {
		t.Fatalf("memfd content %x, %v", got, err)
	}
	if _, err := CreateMemfd("x", CreateOptions{Size: 3 * MiB}); err == nil {
		t.Fatal("misaligned memfd accepted")
	}
}

func FuzzParseSysfsUint(f *testing.F) {
	for _, s := range []string{"2097152\n", "0x200000", "", "-1", "lots", " 42 "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := parseSysfsUint(s, "/sys/x/size")
		if err != nil {
			if !strings.Contains(err.Error(), "/sys/x/size") {
				t.Fatalf("error %q does not name the file", err)
			}
			return
		}
		if strings.TrimSpace(s) == "" {
			t.Fatalf("empty accepted as %d", v)
		}
		// The kernel's decimal form of the value reads back the same.
		if w, err := parseSysfsUint(strconv.FormatUint(v, 10)+"\n", "/sys/x/size"); err != nil || w != v {
			t.Fatalf("%q read as %d, its decimal form as %d (%v)", s, v, w, err)
		}
	})
}
