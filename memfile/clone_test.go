package memfile

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// makeSource creates a backing with data at the start and in the label
// area and a hole in between.
func makeSource(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "golden.img")
	b, err := Create(p, CreateOptions{Size: 32 * MiB, LabelSize: 128 * KiB, ReadOnly: false})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.File().WriteAt(bytes.Repeat([]byte("golden"), 1000), 0); err != nil {
		t.Fatal(err)
	}
	a, err := b.LabelArea()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.WriteAt([]byte("labels"), 0); err != nil {
		t.Fatal(err)
	}
	return p
}

func sameContent(t *testing.T, a, b string) {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(x, y) {
		t.Fatalf("%s and %s differ", a, b)
	}
}

func TestCloneCopyFallback(t *testing.T) {
	dir := t.TempDir()
	src := makeSource(t, dir)
	// Mark the golden image read-only: the clone is writable.
	m, _ := ReadMeta(src)
	m.ReadOnly = true
	if err := WriteMeta(src, m); err != nil {
		t.Fatal(err)
	}
	for _, force := range []bool{false, true} {
		dst := filepath.Join(dir, "guest.img")
		if force {
			copyFileRange = func(int, *int64, int, *int64, int, int) (int, error) { return 0, unix.EXDEV }
			t.Cleanup(func() { copyFileRange = unix.CopyFileRange })
		}
		var last uint64
		method, err := Clone(src, dst, func(done, total uint64) { last = done })
		if err != nil {
			t.Fatal(err)
		}
		want := CloneCopyFileRange
		if force {
			want = CloneCopy
		}
		if method == CloneReflink {
			t.Skip("the temp filesystem reflinks; the fallback cannot be tested here")
		}
		if method != want {
			t.Fatalf("method %s, want %s", method, want)
		}
		sameContent(t, src, dst)
		fi, _ := os.Stat(dst)
		if last != uint64(fi.Size()) {
			t.Fatalf("progress ended at %d of %d", last, fi.Size())
		}
		if alloc := fi.Sys().(*syscall.Stat_t).Blocks * 512; alloc > 4*MiB {
			t.Fatalf("clone not sparse: %d bytes allocated", alloc)
		}
		dm, err := ReadMeta(dst)
		if err != nil || dm.ReadOnly || dm.Layout.GuestSize != m.Layout.GuestSize || dm.Layout.LabelOffset != m.Layout.LabelOffset {
			t.Fatalf("clone meta %+v, %v", dm, err)
		}
		if err := Remove(dst); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCloneRefusals(t *testing.T) {
	dir := t.TempDir()
	src := makeSource(t, dir)
	exists := filepath.Join(dir, "exists.img")
	if err := os.WriteFile(exists, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Clone(src, exists, nil); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("err = %v", err)
	}
	if b, _ := os.ReadFile(exists); string(b) != "keep" {
		t.Fatal("existing destination changed")
	}
	if _, err := Clone(src, filepath.Join(dir, "no", "x.img"), nil); err == nil {
		t.Fatal("clone into a missing directory")
	}
	if _, err := Clone("/dev/null", filepath.Join(dir, "x.img"), nil); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("err = %v", err)
	}
	// A source a VM writes is refused.
	b, err := Open(src, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Lock(LockExclusive, false); err != nil {
		t.Fatal(err)
	}
	if _, err := Clone(src, filepath.Join(dir, "y.img"), nil); !errors.Is(err, ErrLocked) {
		t.Fatalf("err = %v", err)
	}
	for _, n := range []string{"x.img", "y.img", "x.img.nvdimm.json", "y.img.nvdimm.json"} {
		if _, err := os.Lstat(filepath.Join(dir, n)); err == nil {
			t.Fatalf("%s left behind", n)
		}
	}
}

func TestCloneReflinkXFS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to loop-mount an XFS image")
	}
	mkfs, err := exec.LookPath("mkfs.xfs")
	if err != nil {
		t.Skip("mkfs.xfs (xfsprogs) not installed")
	}
	work := t.TempDir()
	img := filepath.Join(work, "xfs.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 320*MiB); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, "-q", "-m", "reflink=1", img).CombinedOutput(); err != nil {
		t.Skipf("mkfs.xfs -m reflink=1: %v: %s", err, out)
	}
	mnt := filepath.Join(work, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Skipf("loop-mount XFS: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	src := makeSource(t, mnt)
	dst := filepath.Join(mnt, "guest.img")
	method, err := Clone(src, dst, nil)
	if err != nil {
		t.Fatal(err)
	}
	if method != CloneReflink {
		t.Fatalf("method %s on XFS with reflink", method)
	}
	sameContent(t, src, dst)
	// The clone is independent: writing it leaves the source alone.
	f, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("changed"), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	got := make([]byte, 6)
	sf, _ := os.Open(src)
	_, _ = sf.ReadAt(got, 0)
	sf.Close()
	if string(got) != "golden" {
		t.Fatalf("source changed through the clone: %q", got)
	}
}
