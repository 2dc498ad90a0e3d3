package memfile

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// listDir returns the names in dir, sorted.
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

func TestCreateSparseWithLabels(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a.img")
	b, rep, err := CreateWithReport(p, CreateOptions{Size: 4 * GiB, LabelSize: 128 * KiB})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 4*GiB+128*KiB || fi.Mode().Perm() != 0o600 {
		t.Fatalf("size %d perm %v", fi.Size(), fi.Mode().Perm())
	}
	if blocks := fi.Sys().(*syscall.Stat_t).Blocks; blocks*512 > MiB {
		t.Fatalf("not sparse: %d bytes allocated", blocks*512)
	}
	if rep.ZeroFilled || rep.FreeBytes == 0 {
		t.Fatalf("report %+v", rep)
	}
	m, err := ReadMeta(p)
	if err != nil {
		t.Fatal(err)
	}
	if m.Kind != KindFile || m.Layout.LabelOffset != 4*GiB || m.Slot != NoSlot || m.Created.IsZero() {
		t.Fatalf("meta %+v", m)
	}
	if got := listDir(t, dir); strings.Join(got, " ") != "a.img a.img.nvdimm.json" {
		t.Fatalf("dir has %v", got)
	}
	// Re-open: the same layout comes from the record.
	b2, err := Open(p, OpenOptions{LabelSize: 999}) // ignored: the record wins
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	if b2.Layout().GuestSize != 4*GiB || b2.Layout().LabelSize != 128*KiB || b2.Meta() == nil {
		t.Fatalf("reopened layout %+v", b2.Layout())
	}
}

func TestCreatePreallocProgress(t *testing.T) {
	p := filepath.Join(t.TempDir(), "p.img")
	var last, calls uint64
	b, err := Create(p, CreateOptions{Size: 8 * MiB, Prealloc: true, Progress: func(done, total uint64) {
		calls++
		if done < last || total != 8*MiB {
			t.Errorf("progress %d/%d after %d", done, total, last)
		}
		last = done
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if calls == 0 || last != 8*MiB {
		t.Fatalf("progress calls %d last %d", calls, last)
	}
	fi, _ := os.Stat(p)
	if fi.Sys().(*syscall.Stat_t).Blocks*512 < 8*MiB {
		t.Fatalf("not preallocated: %d bytes", fi.Sys().(*syscall.Stat_t).Blocks*512)
	}
	if m, _ := ReadMeta(p); m == nil || !m.Prealloc {
		t.Fatalf("meta %+v", m)
	}
}

func TestCreateBadInputLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "exists.img")
	if err := os.WriteFile(existing, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	orphan := filepath.Join(dir, "orphan.img")
	if err := os.WriteFile(MetaPath(orphan), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	before := listDir(t, dir)
	cases := []struct {
		name string
		path string
		o    CreateOptions
		want string
	}{
		{"missing directory", filepath.Join(dir, "nope", "a.img"), CreateOptions{Size: GiB}, "directory " + filepath.Join(dir, "nope") + " does not exist"},
		{"directory as path", sub, CreateOptions{Size: GiB}, "already exists as a directory"},
		{"parent is a file", filepath.Join(existing, "a.img"), CreateOptions{Size: GiB}, "is not a directory"},
		{"existing file", existing, CreateOptions{Size: GiB}, "already exists as a file; refusing to overwrite it"},
		{"orphan metadata", orphan, CreateOptions{Size: GiB}, "metadata record"},
		{"size 0", filepath.Join(dir, "a.img"), CreateOptions{Size: 0}, "size 0"},
		{"below the label", filepath.Join(dir, "a.img"), CreateOptions{Size: 64 * KiB, LabelSize: 128 * KiB, Align: 4 * KiB}, "size 64 KiB is below the label-size 128 KiB"},
		{"not a multiple of the align", filepath.Join(dir, "a.img"), CreateOptions{Size: 3 * MiB}, "size 3 MiB is not a multiple of the align 2 MiB"},
		{"label 64K", filepath.Join(dir, "a.img"), CreateOptions{Size: GiB, LabelSize: 64 * KiB}, "label-size 64 KiB is below QEMU's minimum of 128 KiB"},
		{"align 3M", filepath.Join(dir, "a.img"), CreateOptions{Size: 6 * MiB, Align: 3 * MiB}, "not a power of two"},
		{"non-DAX character device", "/dev/null", CreateOptions{Size: GiB}, "already exists as a device"},
		// Below the label with the default 2 MiB align: the size rule is
		// reported, not the alignment the 64 KiB also breaks.
		{"below the label, default align", filepath.Join(dir, "a.img"), CreateOptions{Size: 64 * KiB, LabelSize: 128 * KiB}, "size 64 KiB is below the label-size 128 KiB: --size is what the guest sees, not counting the label area; use a size of at least 2 MiB"},
		{"beyond a file", filepath.Join(dir, "a.img"), CreateOptions{Size: 17179869183 * GiB}, "size 17179869183 GiB is beyond 8 EiB (2^63-1 bytes), the largest file Linux supports"},
		{"beyond a file with labels", filepath.Join(dir, "a.img"), CreateOptions{Size: 17179869183 * GiB, LabelSize: 128 * KiB}, "size 17179869183 GiB plus label-size 128 KiB is beyond 8 EiB"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, err := Create(c.path, c.o)
			if err == nil {
				b.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
			if after := listDir(t, dir); strings.Join(after, " ") != strings.Join(before, " ") {
				t.Fatalf("left behind: before %v after %v", before, after)
			}
		})
	}
	if b, _ := os.ReadFile(existing); string(b) != "precious" {
		t.Fatalf("existing file changed: %q", b)
	}
	// The label size can never exceed the guest range's backing: sizes
	// below the label are refused by LayoutFromBacking too.
	if _, err := LayoutFromBacking(64*KiB, 128*KiB, 4*KiB); err == nil {
		t.Fatal("backing below the label accepted")
	}
}

func TestCreateFailureAfterOpenCleansUp(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.img")
	// The probe fails after the file exists: nothing may remain.
	boom := errors.New("statx exploded")
	_, err := Create(p, CreateOptions{Size: 4 * MiB, Probe: Probe{Statx: func(string) (uint64, uint64, error) { return 0, 0, boom }}})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	if got := listDir(t, dir); len(got) != 0 {
		t.Fatalf("left behind %v", got)
	}
	// A cancelled preallocation leaves nothing either.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Create(p, CreateOptions{Size: 4 * MiB, Prealloc: true, Context: ctx}); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if got := listDir(t, dir); len(got) != 0 {
		t.Fatalf("left behind %v", got)
	}
}

// mountTmpfs mounts a tmpfs of the given size for the test.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

func TestCreateFullFilesystem(t *testing.T) {
	dir := mountTmpfs(t, "2m")
	// Prealloc larger than the filesystem: refused by the free-space check.
	_, err := Create(filepath.Join(dir, "big.img"), CreateOptions{Size: 16 * MiB, Prealloc: true})
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "not enough free space") || !strings.Contains(err.Error(), "--prealloc") {
		t.Fatalf("err = %v", err)
	}
	if got := listDir(t, dir); len(got) != 0 {
		t.Fatalf("left behind %v", got)
	}
	// Fill it up: even a sparse backing with a label area is refused.
	fill, err := os.Create(filepath.Join(dir, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64*KiB)
	for {
		if _, err := fill.Write(buf); err != nil {
			break
		}
	}
	fill.Close()
	_, err = Create(filepath.Join(dir, "a.img"), CreateOptions{Size: 16 * MiB, LabelSize: 128 * KiB})
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "not enough free space") {
		t.Fatalf("err = %v", err)
	}
	if got := listDir(t, dir); strings.Join(got, " ") != "fill" {
		t.Fatalf("left behind %v", got)
	}
	// The free-space check passes but the filesystem fills during
	// preallocation: fallocate's ENOSPC is reported and cleaned up.
	os.Remove(filepath.Join(dir, "fill"))
	saved := statfsFree
	statfsFree = func(string) (uint64, error) { return TiB, nil }
	t.Cleanup(func() { statfsFree = saved })
	_, err = Create(filepath.Join(dir, "b.img"), CreateOptions{Size: 16 * MiB, Prealloc: true})
	if !errors.Is(err, ErrNoSpace) || !errors.Is(err, unix.ENOSPC) || !strings.Contains(err.Error(), "b.img") {
		t.Fatalf("err = %v", err)
	}
	if got := listDir(t, dir); len(got) != 0 {
		t.Fatalf("left behind %v", got)
	}
}

// TestCreateNoSpace: the up-front free-space refusal and an ENOSPC or
// EDQUOT while writing are errors.Is ErrNoSpace, with their text as it
// was; other failures are not.
func TestCreateNoSpace(t *testing.T) {
	saved := statfsFree
	statfsFree = func(string) (uint64, error) { return 1 * MiB, nil }
	t.Cleanup(func() { statfsFree = saved })
	dir := t.TempDir()
	p := filepath.Join(dir, "n.img")
	_, err := Create(p, CreateOptions{Size: 16 * MiB, LabelSize: 2 * MiB})
	if want := "create " + p + ": not enough free space in " + dir + ": 1 MiB free, "; !errors.Is(err, ErrNoSpace) || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("err = %v, want ErrNoSpace starting %q", err, want)
	}
	if got := listDir(t, dir); len(got) != 0 {
		t.Fatalf("left behind %v", got)
	}

	for _, errno := range []unix.Errno{unix.ENOSPC, unix.EDQUOT} {
		cause := fmt.Errorf("create /b/x.img: preallocate: %w", &fs.PathError{Op: "write", Path: "/b/x.img", Err: errno})
		err := markNoSpace(cause)
		if !errors.Is(err, ErrNoSpace) || !errors.Is(err, errno) || err.Error() != cause.Error() {
			t.Errorf("%v: marked %q (ErrNoSpace %v, errno %v)", errno, err, errors.Is(err, ErrNoSpace), errors.Is(err, errno))
		}
	}
	eio := fmt.Errorf("create /b/x.img: fsync: %w", unix.EIO)
	if err := markNoSpace(eio); err != eio || errors.Is(err, ErrNoSpace) {
		t.Errorf("EIO marked: %v", err)
	}
	already := fmt.Errorf("create /b/x.img: %w in /b", ErrNoSpace)
	if err := markNoSpace(already); err != already {
		t.Errorf("an ErrNoSpace error wrapped again: %#v", err)
	}
}

func TestCreateSparseOvercommitWarns(t *testing.T) {
	saved := statfsFree
	statfsFree = func(string) (uint64, error) { return 8 * MiB, nil }
	t.Cleanup(func() { statfsFree = saved })
	b, rep, err := CreateWithReport(filepath.Join(t.TempDir(), "o.img"), CreateOptions{Size: 64 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	if len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], "8 MiB free") {
		t.Fatalf("warnings %q", rep.Warnings)
	}
}

func TestRemove(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "r.img")
	b, err := Create(p, CreateOptions{Size: 2 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Lock(LockExclusive, false); err != nil {
		t.Fatal(err)
	}
	if err := Remove(p); !errors.Is(err, ErrLocked) {
		t.Fatalf("remove of a locked backing: %v", err)
	}
	b.Close()
	if err := Remove(p); err != nil {
		t.Fatal(err)
	}
	if got := listDir(t, dir); len(got) != 0 {
		t.Fatalf("left behind %v", got)
	}
	if err := Remove("/dev/null"); err == nil {
		t.Fatal("removed a device")
	}
}

func TestOpenDetectsResize(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s.img")
	b, err := Create(p, CreateOptions{Size: 4 * MiB, LabelSize: 128 * KiB})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	if err := os.Truncate(p, 8*MiB); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(p, OpenOptions{}); err == nil || !strings.Contains(err.Error(), "resized outside nvdimm-backend") {
		t.Fatalf("err = %v", err)
	}
	if err := os.WriteFile(MetaPath(p), []byte(`{"version":7}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(p, OpenOptions{}); err == nil || !strings.Contains(err.Error(), "field version") || !strings.Contains(err.Error(), MetaPath(p)) {
		t.Fatalf("err = %v", err)
	}
}

func TestReadOnlyBacking(t *testing.T) {
	p := filepath.Join(t.TempDir(), "ro.img")
	b, err := Create(p, CreateOptions{Size: 2 * MiB, LabelSize: 128 * KiB, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if !b.ReadOnly() || !b.Meta().ReadOnly {
		t.Fatal("not read-only")
	}
	if _, _, err := Map(b, false); err == nil {
		t.Fatal("writable map of a read-only backing")
	}
	a, err := b.LabelArea()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.WriteAt([]byte{1}, 0); err == nil {
		t.Fatal("label write on a read-only backing")
	}
	if err := b.Lock(LockExclusive, false); err == nil {
		t.Fatal("exclusive lock on a read-only backing")
	}
	if err := b.Lock(LockShared, false); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkCreateSparse64G creates a 64 GiB sparse backing with a label
// area and its metadata record; the target is under 10 ms each.
func BenchmarkCreateSparse64G(b *testing.B) {
	dir := b.TempDir()
	probe := Probe{}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		p := filepath.Join(dir, fmt.Sprintf("b%d.img", i))
		bk, err := Create(p, CreateOptions{Size: 64 * GiB, LabelSize: 128 * KiB, Probe: probe})
		if err != nil {
			b.Fatal(err)
		}
		bk.Close()
		b.StopTimer()
		os.Remove(p)
		os.Remove(MetaPath(p))
		b.StartTimer()
	}
}

// TestCreateBeyondFilesystemLimit: a size the filesystem cannot hold
// (ext4 with 4 KiB blocks: 16 TiB - 4 KiB) is refused with the size, the
// filesystem's limit and the largest --size that fits, and leaves nothing.
func TestCreateBeyondFilesystemLimit(t *testing.T) {
	dir := t.TempDir()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Type != unix.EXT4_SUPER_MAGIC || st.Bsize != 4096 {
		t.Skipf("temp dir is not ext4 with 4 KiB blocks (type %#x, bsize %d); TestMaxFileSize covers the search", st.Type, st.Bsize)
	}
	before := listDir(t, dir)
	_, err := Create(filepath.Join(dir, "huge.img"), CreateOptions{Size: 8191 * TiB, LabelSize: 128 * KiB})
	want := []string{
		"backing size 8795019280512 KiB (9006099743244288 bytes) ",
		"is larger than the filesystem at " + dir + " accepts: its largest file is 17592186040320 bytes (16 TiB - 4 KiB); use --size 16777214M or less",
	}
	if err == nil || !errors.Is(err, unix.EFBIG) {
		t.Fatalf("err = %v, want EFBIG explained", err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("err = %v\nwant it to contain %q", err, w)
		}
	}
	if after := listDir(t, dir); strings.Join(after, " ") != strings.Join(before, " ") {
		t.Fatalf("left behind: %v", after)
	}
}

// TestMaxFileSize: the binary search finds an exact limit, whatever it is.
func TestMaxFileSize(t *testing.T) {
	for _, limit := range []uint64{1, 4095, 16*TiB - 4*KiB, 8*1024*TiB - 1, MaxBackingSize - 1} {
		calls := 0
		got, ok := maxFileSize(func(n int64) error {
			calls++
			if n < 0 {
				t.Fatalf("truncate to %d", n)
			}
			if uint64(n) > limit {
				return unix.EFBIG
			}
			return nil
		}, MaxBackingSize)
		if !ok || got != limit {
			t.Errorf("limit %d: got %d, %v", limit, got, ok)
		}
		if calls > 64 {
			t.Errorf("limit %d: %d truncates", limit, calls)
		}
	}
	if _, ok := maxFileSize(func(int64) error { return unix.EIO }, GiB); ok {
		t.Error("an I/O error gave a limit")
	}
	if got := approxSize(16*TiB - 4*KiB); got != "16 TiB - 4 KiB" {
		t.Errorf("approxSize = %q", got)
	}
	if got := approxSize(2 * GiB); got != "2 GiB" {
		t.Errorf("approxSize = %q", got)
	}
}

// TestCheckOptions: layout options that Open ignores because of the
// metadata record are refused when they disagree with it.
func TestCheckOptions(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.img")
	b, err := Create(p, CreateOptions{Size: 4 * MiB, LabelSize: 128 * KiB})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	o := OpenOptions{LabelSize: 256 * KiB}
	b, err = Open(p, o) // Open still ignores it: the record wins
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, c := range []struct {
		o    OpenOptions
		want string
	}{
		{OpenOptions{}, ""},
		{OpenOptions{LabelSize: 128 * KiB, Align: 2 * MiB}, ""},
		{OpenOptions{LabelSize: 256 * KiB}, "--label-size 256 KiB conflicts with the label-size 128 KiB recorded in " + MetaPath(p)},
		{OpenOptions{LabelSize: 64 * KiB}, "--label-size 64 KiB is below QEMU's minimum of 128 KiB; the label-size recorded in " + MetaPath(p) + " is 128 KiB"},
		{OpenOptions{Align: 4 * KiB}, "--align 4 KiB conflicts with the align 2 MiB"},
	} {
		err := b.CheckOptions(c.o)
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%+v: err = %v, want %q", c.o, err, c.want)
		}
	}
	if _, err := Inspect(p, OpenOptions{LabelSize: 256 * KiB}); err == nil || !strings.Contains(err.Error(), "conflicts") {
		t.Errorf("inspect with a conflicting label size: %v", err)
	}
}
