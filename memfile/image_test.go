package memfile

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nvdimm-backend/nvdimm-backend/label"
)

func needMke2fs(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("mke2fs"); err != nil {
		t.Skip("mke2fs (e2fsprogs) is not installed")
	}
}

// sourceTree makes a small directory tree to build images from.
func sourceTree(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "src")
	files := map[string]string{
		"hello.txt":         "hello from a shared image\n",
		"etc/os-release":    "ID=test\n",
		"usr/bin/big.bin":   strings.Repeat("0123456789abcdef", 64<<10), // 1 MiB
		"usr/share/empty":   "",
		"var/lib/state.txt": "state\n",
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("hello.txt", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	return dir
}

func newCatalog(t testing.TB) *Catalog {
	t.Helper()
	c, err := OpenCatalog(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func fileSHA(t testing.TB, path string, off, n int64) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n < 0 {
		n = int64(len(b)) - off
	}
	s := sha256.Sum256(b[off : off+n])
	return hex.EncodeToString(s[:])
}

// cleanupImmutable clears the immutable attribute of every file under dir
// so that t.TempDir's cleanup can delete them.
func cleanupImmutable(t testing.TB, dir string) {
	t.Cleanup(func() {
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				if f, err := os.Open(p); err == nil {
					setImmutable(f, false)
					f.Close()
				}
			}
			return nil
		})
	})
}

func TestImageBuild(t *testing.T) {
	needMke2fs(t)
	c := newCatalog(t)
	cleanupImmutable(t, c.Dir())
	rep, err := c.Build("rootfs", sourceTree(t), BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	im := rep.Image
	if im.Path != filepath.Join(c.Dir(), "rootfs.img") || !im.Owned || im.Layout.Format != ImageFormatExt4 {
		t.Fatalf("image = %+v", im)
	}
	if im.Size%RegionAlign != 0 || im.Size < ext4MinImageSize {
		t.Errorf("default size %d is not a multiple of 16 MiB of at least 16 MiB", im.Size)
	}
	// The info block the guest will find at namespace offset 4 KiB.
	f, err := os.Open(im.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ib, err := label.ReadInfoBlock(f, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := ib.Validate(im.Size, label.UUID{}); err != nil {
		t.Fatalf("info block rejected by the kernel's rules: %v", err)
	}
	if ib.Kind() != label.ModeFSDAX || ib.Mode != label.PFNModeRAM || ib.DataOff != 2*MiB {
		t.Errorf("info block kind %s mode %d dataoff %d, want fsdax, RAM (1), 2 MiB", ib.Kind(), ib.Mode, ib.DataOff)
	}
	if im.Layout.InfoBlock != InfoPFNRAM || im.Layout.DataOffset != 2*MiB || im.Layout.DataSize != im.Size-2*MiB {
		t.Errorf("layout %+v", im.Layout)
	}
	if err := checkExt4(f, im.Layout.DataOffset); err != nil {
		t.Fatal(err)
	}
	// The digests are those of the bytes on disk.
	if got := fileSHA(t, im.Path, 0, -1); got != im.SHA256 {
		t.Errorf("sha256 %s, file %s", im.SHA256, got)
	}
	if got := fileSHA(t, im.Path, int64(im.Layout.DataOffset), int64(im.Layout.DataSize)); got != im.DataSHA256 {
		t.Errorf("data_sha256 %s, data range %s", im.DataSHA256, got)
	}
	// The filesystem holds the tree: extract the data range and read it
	// back with debugfs, and e2fsck finds it clean.
	raw, err := os.ReadFile(im.Path)
	if err != nil {
		t.Fatal(err)
	}
	fsImg := filepath.Join(t.TempDir(), "fs.img")
	if err := os.WriteFile(fsImg, raw[im.Layout.DataOffset:], 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("e2fsck", "-fn", fsImg).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn: %v\n%s", err, out)
	}
	out, err := exec.Command("debugfs", "-R", "cat /usr/bin/big.bin", fsImg).Output()
	if err != nil {
		t.Fatalf("debugfs: %v", err)
	}
	if want := strings.Repeat("0123456789abcdef", 64<<10); string(out) != want {
		t.Errorf("big.bin read back %d bytes, want %d", len(out), len(want))
	}
	out, _ = exec.Command("debugfs", "-R", "stat /", fsImg).CombinedOutput()
	if !strings.Contains(string(out), "Inode: 2") {
		t.Errorf("debugfs stat /: %s", out)
	}
	// Metadata record: read-only, fsdax, label-less.
	m, err := ReadMeta(im.Path)
	if err != nil {
		t.Fatal(err)
	}
	if !m.ReadOnly || m.Mode != "fsdax" || m.Layout.LabelSize != 0 || m.Layout.BackingSize != im.Size {
		t.Errorf("meta %+v", m)
	}
	fi, _ := os.Stat(im.Path)
	if fi.Mode().Perm()&0o222 != 0 {
		t.Errorf("image mode %v is writable", fi.Mode().Perm())
	}
	// No build leftovers in the catalog directory.
	ents, _ := os.ReadDir(c.Dir())
	for _, e := range ents {
		if strings.Contains(e.Name(), ".build-") {
			t.Errorf("leftover %s", e.Name())
		}
	}
	got, err := c.Get("rootfs")
	if err != nil || got.SHA256 != im.SHA256 {
		t.Fatalf("Get: %+v, %v", got, err)
	}
}

func TestImageBuildRefusals(t *testing.T) {
	needMke2fs(t)
	c := newCatalog(t)
	cleanupImmutable(t, c.Dir())
	src := sourceTree(t)
	for _, tc := range []struct {
		name, dir string
		size      uint64
		want      string
	}{
		{"odd", src, 17*MiB + 4096, "not a multiple of 2 MiB"},
		{"tiny", src, 4 * MiB, "below the 16 MiB minimum"},
		{"bad/name", src, 0, "character '/'"},
		{"nodir", filepath.Join(src, "missing"), 0, "--from-dir"},
		{"file", filepath.Join(src, "hello.txt"), 0, "not a directory"},
	} {
		_, err := c.Build(tc.name, tc.dir, BuildOptions{Size: tc.size})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Build(%s): %v, want %q", tc.name, err, tc.want)
		}
	}
	// A tree that does not fit: mke2fs fails and nothing is left.
	big := t.TempDir()
	if err := os.WriteFile(filepath.Join(big, "blob"), bytes.Repeat([]byte{1}, 20<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Build("toobig", big, BuildOptions{Size: 16 * MiB}); err == nil {
		t.Fatal("20 MiB tree fits in a 16 MiB image?")
	}
	ents, _ := os.ReadDir(c.Dir())
	for _, e := range ents {
		if e.Name() != catalogLockName && e.Name() != CatalogFileName {
			t.Errorf("leftover after failed builds: %s", e.Name())
		}
	}
	if ims, _ := c.List(); len(ims) != 0 {
		t.Errorf("catalog has %d images after failed builds", len(ims))
	}
	// A name already taken.
	if _, err := c.Build("one", src, BuildOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Build("one", src, BuildOptions{}); !errors.Is(err, ErrImageExists) {
		t.Errorf("second build of one: %v, want ErrImageExists", err)
	}
}

func TestImageInfoBlock(t *testing.T) {
	for _, size := range []uint64{16 * MiB, 64 * MiB, 1 * GiB, 1*GiB + 2*MiB} {
		ib, err := ImageInfoBlock(size)
		if err != nil {
			t.Fatalf("%d: %v", size, err)
		}
		if ib.Mode != label.PFNModeRAM || ib.DataOff != 2*MiB || ib.NPFNs != (size-2*MiB)/4096 || ib.EndTrunc != 0 {
			t.Errorf("%d: mode %d dataoff %d npfns %d end_trunc %d", size, ib.Mode, ib.DataOff, ib.NPFNs, ib.EndTrunc)
		}
		raw, _ := ib.MarshalBinary()
		var back label.InfoBlock
		if err := back.UnmarshalBinary(raw); err != nil || back.Validate(size, label.UUID{}) != nil {
			t.Errorf("%d: round trip: %v", size, err)
		}
	}
	if _, err := ImageInfoBlock(2 * MiB); err == nil {
		t.Error("2 MiB namespace accepted: no room for data after the 2 MiB offset")
	}
}

// rawImage writes a file of size bytes with a recognisable pattern.
func rawImage(t testing.TB, dir, name string, size int) string {
	t.Helper()
	p := filepath.Join(dir, name)
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i / 4096)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestImageAddRaw(t *testing.T) {
	c := newCatalog(t)
	dir := t.TempDir()
	cleanupImmutable(t, dir)
	p := rawImage(t, dir, "raw.img", 4<<20)
	want := fileSHA(t, p, 0, -1)
	var calls int
	rep, err := c.Add("raw", p, ImageOptions{Progress: func(done, total uint64) { calls++ }})
	if err != nil {
		t.Fatal(err)
	}
	im := rep.Image
	if im.SHA256 != want || im.DataSHA256 != want || im.Owned || im.Layout.InfoBlock != InfoNone {
		t.Errorf("image %+v", im)
	}
	if calls == 0 {
		t.Error("progress never called")
	}
	if len(rep.Warnings) == 0 || !strings.Contains(strings.Join(rep.Warnings, "\n"), "DAX unsupported") {
		t.Errorf("no warning about the missing info block: %q", rep.Warnings)
	}
	// Re-adding the same file under another name is refused, as is the
	// same name for another file.
	if _, err := c.Add("raw2", p, ImageOptions{}); !errors.Is(err, ErrImageExists) {
		t.Errorf("same file twice: %v", err)
	}
	q := rawImage(t, dir, "other.img", 2<<20)
	if _, err := c.Add("raw", q, ImageOptions{}); !errors.Is(err, ErrImageExists) {
		t.Errorf("same name twice: %v", err)
	}
	// Through a symlink, the real path is recorded (and is a duplicate).
	ln := filepath.Join(dir, "ln.img")
	os.Symlink(p, ln)
	if _, err := c.Add("viaLink", ln, ImageOptions{}); !errors.Is(err, ErrImageExists) {
		t.Errorf("same file via a symlink: %v", err)
	}
}

func TestImageAddRefusals(t *testing.T) {
	c := newCatalog(t)
	dir := t.TempDir()
	odd := rawImage(t, dir, "odd.img", 3<<20)
	if _, err := c.Add("odd", odd, ImageOptions{}); err == nil || !strings.Contains(err.Error(), "truncate -s 4194304") {
		t.Errorf("odd size: %v", err)
	}
	if _, err := ReadMeta(odd); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused add left a metadata record: %v", err)
	}
	if _, err := c.Add("dir", dir, ImageOptions{}); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: %v", err)
	}
	// A backing with a label area.
	lb, err := Create(filepath.Join(dir, "labels.img"), CreateOptions{Size: 16 * MiB, LabelSize: 128 * KiB})
	if err != nil {
		t.Fatal(err)
	}
	lb.Close()
	if _, err := c.Add("labels", filepath.Join(dir, "labels.img"), ImageOptions{}); err == nil || !strings.Contains(err.Error(), "label-less") {
		t.Errorf("label area: %v", err)
	}
	// A PFN signature with a bad checksum: the guest would refuse it.
	bad := rawImage(t, dir, "bad.img", 16<<20)
	ib, _ := ImageInfoBlock(16 * MiB)
	ib.Checksum ^= 1
	f, _ := os.OpenFile(bad, os.O_RDWR, 0)
	label.WriteInfoBlock(f, 0, ib)
	f.Close()
	if _, err := c.Add("bad", bad, ImageOptions{}); err == nil || !strings.Contains(err.Error(), "offset 4096") || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("bad info block: %v", err)
	}
	fi, _ := os.Stat(bad)
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("refused add changed the mode to %v", fi.Mode().Perm())
	}
	// A file a writer holds: refused with ErrLocked.
	w := rawImage(t, dir, "busy.img", 2<<20)
	b, err := Open(w, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Lock(LockExclusive, false); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Add("busy", w, ImageOptions{}); !errors.Is(err, ErrLocked) {
		t.Errorf("busy file: %v, want ErrLocked", err)
	}
	if ims, _ := c.List(); len(ims) != 0 {
		t.Errorf("catalog has %d images after refusals", len(ims))
	}
}

// TestImageReadOnlyEnforced checks that nothing below the daemon lets a
// catalogued image be used writable.
func TestImageReadOnlyEnforced(t *testing.T) {
	c := newCatalog(t)
	dir := t.TempDir()
	cleanupImmutable(t, dir)
	p := rawImage(t, dir, "ro.img", 16<<20)
	ib, _ := ImageInfoBlock(16 * MiB)
	f, _ := os.OpenFile(p, os.O_RDWR, 0)
	label.WriteInfoBlock(f, 0, ib)
	f.Close()
	rep, err := c.Add("ro", p, ImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Image.Layout.InfoBlock != InfoPFNRAM || rep.Image.Layout.DataOffset != 2*MiB {
		t.Errorf("layout %+v", rep.Image.Layout)
	}
	// memfile opens it read-only even when asked for writable use ...
	b, err := Open(p, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if !b.ReadOnly() {
		t.Fatal("image opened writable")
	}
	// ... refuses an exclusive (writer's) lock and a writable mapping ...
	if err := b.Lock(LockExclusive, false); err == nil {
		t.Error("exclusive lock on an image")
	}
	if _, _, err := Map(b, false); err == nil {
		t.Error("writable mapping of an image")
	}
	// ... and a writable attach, from the open backing or the record.
	if _, err := QEMUArgsFor(b, QEMUArgOptions{}); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("writable QEMUArgsFor: %v", err)
	}
	m, _ := ReadMeta(p)
	if _, err := QEMUArgsForMeta(p, m, QEMUArgOptions{}); err == nil {
		t.Error("writable QEMUArgsForMeta")
	}
	if _, err := c.QEMUArgs("ro", QEMUArgOptions{}, true); err == nil || !strings.Contains(err.Error(), "image clone") {
		t.Errorf("catalog writable attach: %v", err)
	}
	a, err := c.QEMUArgs("ro", QEMUArgOptions{ID: "img0"}, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"readonly=on", "share=on"} {
		if !strings.Contains(a.Object, want) {
			t.Errorf("object %q lacks %s", a.Object, want)
		}
	}
	if !strings.Contains(a.Device, "unarmed=on") || strings.Contains(a.Device, "label-size") {
		t.Errorf("device %q", a.Device)
	}
	// A read-only mapping works and shows the image.
	mp, unmap, err := Map(b, true)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mp[4096:4096+16], label.PFNSignature[:]) {
		t.Errorf("mapping does not show the info block")
	}
	unmap()
	// The kernel refuses writable opens, even root's, when the
	// filesystem took the immutable attribute.
	if rep.Image.Immutable {
		if _, err := os.OpenFile(p, os.O_RDWR, 0); !errors.Is(err, unix.EPERM) {
			t.Errorf("O_RDWR open of an immutable image: %v, want EPERM", err)
		}
	} else {
		t.Logf("immutable attribute not available here: %v", rep.Warnings)
	}
	// Catalog.Open holds a shared lock, which refuses Remove.
	ob, err := c.Open("ro")
	if err != nil {
		t.Fatal(err)
	}
	if ob.Held() != LockShared || !ob.ReadOnly() {
		t.Errorf("Open: lock %v read-only %v", ob.Held(), ob.ReadOnly())
	}
	if _, err := c.Remove("ro", false); !errors.Is(err, ErrLocked) {
		t.Errorf("remove while open: %v, want ErrLocked", err)
	}
	ob.Close()
}

func TestImageVerify(t *testing.T) {
	c := newCatalog(t)
	dir := t.TempDir()
	cleanupImmutable(t, dir)
	p := rawImage(t, dir, "v.img", 8<<20)
	rep, err := c.Add("v", p, ImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v, err := c.Verify("v", nil)
	if err != nil || !v.OK || v.SHA256 != rep.Image.SHA256 {
		t.Fatalf("verify of an intact image: %+v, %v", v, err)
	}
	// Tamper the way only a determined root could: clear the attribute,
	// restore write permission, flip a byte.
	f, _ := os.Open(p)
	setImmutable(f, false)
	f.Close()
	os.Chmod(p, 0o644)
	w, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.WriteAt([]byte{0xff}, 5<<20)
	w.Close()
	v, err = c.Verify("v", nil)
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(v.Problems, "\n")
	if v.OK || !strings.Contains(all, "was modified") || !strings.Contains(all, "write permission") {
		t.Errorf("verify of a modified image: %+v", v)
	}
	if rep.Image.Immutable && !strings.Contains(all, "immutable") {
		t.Errorf("cleared immutable attribute not reported: %q", all)
	}
	if _, err := c.Verify("nope", nil); !errors.Is(err, ErrImageNotFound) {
		t.Errorf("verify of a missing image: %v", err)
	}
}

func TestImageRemove(t *testing.T) {
	c := newCatalog(t)
	dir := t.TempDir()
	cleanupImmutable(t, dir)
	cleanupImmutable(t, c.Dir())
	p := rawImage(t, dir, "kept.img", 2<<20)
	if _, err := c.Add("kept", p, ImageOptions{}); err != nil {
		t.Fatal(err)
	}
	if m, err := ReadMeta(p); err != nil || m.Image != "kept" || !strings.Contains(m.ReadOnlyReason(), `"kept"`) {
		t.Fatalf("record of a catalogued file: %+v, %v: want image \"kept\"", m, err)
	}
	rep, err := c.Remove("kept", false)
	if err != nil || rep.Deleted {
		t.Fatalf("remove: %+v, %v", rep, err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Errorf("added file deleted: %v", err)
	}
	if isImmutable(p) {
		t.Error("immutable attribute left on an uncatalogued file")
	}
	if m, err := ReadMeta(p); err != nil || m.Image != "" || !m.ReadOnly {
		t.Errorf("record of a removed image: %+v, %v: want read-only without an image marker", m, err)
	}
	if _, err := c.Get("kept"); !errors.Is(err, ErrImageNotFound) {
		t.Errorf("Get after remove: %v", err)
	}
	// Purge deletes the file and its record.
	if _, err := c.Add("gone", p, ImageOptions{}); err != nil {
		t.Fatal(err)
	}
	if rep, err := c.Remove("gone", true); err != nil || !rep.Deleted {
		t.Fatalf("purge: %+v, %v", rep, err)
	}
	for _, q := range []string{p, MetaPath(p)} {
		if _, err := os.Stat(q); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there: %v", q, err)
		}
	}
	if _, err := c.Remove("gone", false); !errors.Is(err, ErrImageNotFound) {
		t.Errorf("second remove: %v", err)
	}
}

func TestImageClone(t *testing.T) {
	c := newCatalog(t)
	dir := t.TempDir()
	cleanupImmutable(t, dir)
	p := rawImage(t, dir, "base.img", 4<<20)
	rep, err := c.Add("base", p, ImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "vm1.img")
	method, err := c.Clone("base", dst, nil)
	if err != nil {
		t.Fatal(err)
	}
	if method == "" {
		t.Error("no clone method reported")
	}
	m, err := ReadMeta(dst)
	if err != nil || m.ReadOnly || m.Image != "" {
		t.Fatalf("clone record %+v, %v: want a writable record that is no image", m, err)
	}
	b, err := Open(dst, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if b.ReadOnly() {
		t.Fatal("clone opened read-only")
	}
	if err := b.Lock(LockExclusive, false); err != nil {
		t.Fatal(err)
	}
	if _, err := b.File().WriteAt([]byte("private"), 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := QEMUArgsFor(b, QEMUArgOptions{}); err != nil {
		t.Errorf("writable attach of a clone: %v", err)
	}
	b.Close()
	if fileSHA(t, dst, 0, -1) == rep.Image.SHA256 {
		t.Error("clone unchanged after a write")
	}
	if v, err := c.Verify("base", nil); err != nil || !v.OK {
		t.Errorf("image changed by a write to its clone: %+v, %v", v, err)
	}
	if _, err := c.Clone("base", dst, nil); err == nil {
		t.Error("clone over an existing file")
	}
}

func TestCatalogConcurrentAdds(t *testing.T) {
	c := newCatalog(t)
	dir := t.TempDir()
	cleanupImmutable(t, dir)
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		p := rawImage(t, dir, "c"+string(rune('a'+i))+".img", 2<<20)
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A catalog opened separately, as another process would.
			c2, _ := OpenCatalog(c.Dir())
			_, errs[i] = c2.Add("c"+string(rune('a'+i)), p, ImageOptions{})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("add %d: %v", i, err)
		}
	}
	if ims, err := c.List(); err != nil || len(ims) != len(errs) {
		t.Errorf("catalog has %d images (%v), want %d", len(ims), err, len(errs))
	}
}

func TestParseCatalog(t *testing.T) {
	good := `{"version":1,"images":[{"name":"a","path":"/srv/a.img","size":4194304,
"layout":{"format":"raw","guest_size":4194304,"align":2097152,"info_block":"none","data_offset":0,"data_size":4194304},
"sha256":"` + strings.Repeat("ab", 32) + `","data_sha256":"` + strings.Repeat("cd", 32) + `",
"created":"2026-01-02T03:04:05Z","immutable":true,"owned":false}]}`
	ims, err := ParseCatalog([]byte(good), "t")
	if err != nil || len(ims) != 1 || ims[0].Name != "a" {
		t.Fatalf("good catalog: %v, %v", ims, err)
	}
	for _, tc := range []struct{ from, to, want string }{
		{`"version":1`, `"version":2`, "field version"},
		{`"owned":false`, `"owned":false,"extra":1`, "unknown field"},
		{`"/srv/a.img"`, `"srv/a.img"`, "field path"},
		{`"/srv/a.img"`, `"/srv/../a.img"`, "field path"},
		{`"name":"a"`, `"name":"-a"`, "image name"},
		{`"size":4194304`, `"size":0`, "field size"},
		{`"format":"raw"`, `"format":"qcow2"`, "layout.format"},
		{`"info_block":"none"`, `"info_block":"btt"`, "info_block"},
		{`"align":2097152`, `"align":3`, "layout.align"},
		{`"guest_size":4194304`, `"guest_size":8388608`, "guest_size"},
		{`"data_size":4194304`, `"data_size":4194305`, "data_size"},
		{`"sha256":"ab`, `"sha256":"AB`, "field sha256"},
		{`"data_sha256":"cdcd`, `"data_sha256":"cd`, "field data_sha256"},
		{`]}`, `]} {}`, "trailing data"},
	} {
		bad := strings.Replace(good, tc.from, tc.to, 1)
		if bad == good {
			t.Fatalf("replacement %q did not apply", tc.from)
		}
		if _, err := ParseCatalog([]byte(bad), "t"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s -> %s: %v, want %q", tc.from, tc.to, err, tc.want)
		}
	}
	dup := strings.Replace(good, `]}`, `,`+good[strings.Index(good, "{\"name"):strings.LastIndex(good, "]")]+`]}`, 1)
	if _, err := ParseCatalog([]byte(dup), "t"); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("duplicate name: %v", err)
	}
}

func TestResidentBytes(t *testing.T) {
	dir := t.TempDir()
	p := rawImage(t, dir, "r.img", 8<<20)
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fsync(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	r0, size, err := ResidentBytes(p)
	if err != nil || size != 8<<20 {
		t.Fatalf("ResidentBytes: %d, %d, %v", r0, size, err)
	}
	buf := make([]byte, 2<<20)
	if _, err := f.ReadAt(buf, 4<<20); err != nil {
		t.Fatal(err)
	}
	r1, _, err := ResidentBytes(p)
	if err != nil {
		t.Fatal(err)
	}
	if r1 < r0+2<<20-64<<10 || r1 > size {
		t.Errorf("resident before %d, after reading 2 MiB %d", r0, r1)
	}
}

func TestHashImageShortFile(t *testing.T) {
	r := bytes.NewReader(make([]byte, 1000))
	if _, err := hashImage(r, 4096, 0, 4096, nil); err == nil || !strings.Contains(err.Error(), "ended early") {
		t.Errorf("short file: %v", err)
	}
	if _, err := hashImage(r, 1000, 900, 200, nil); err == nil {
		t.Error("data range past the end accepted")
	}
}

func BenchmarkHashImage(b *testing.B) {
	p := rawImage(b, b.TempDir(), "bench.img", 64<<20)
	f, err := os.Open(p)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	b.SetBytes(64 << 20)
	for b.Loop() {
		if _, err := hashImage(f, 64<<20, 2<<20, 62<<20, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// TestImageAddInfoBlockKinds: what add reports for each info block a file
// may carry.
func TestImageAddInfoBlockKinds(t *testing.T) {
	c := newCatalog(t)
	dir := t.TempDir()
	cleanupImmutable(t, dir)
	for _, tc := range []struct {
		name, mode string
		kind, warn string
	}{
		{"pmem", label.ModeFSDAX, InfoPFNPMEM, "mode pmem"},
		{"devdax", label.ModeDevDAX, InfoDevDAX, "device-DAX"},
	} {
		p := rawImage(t, dir, tc.name+".img", 64<<20)
		ib, err := label.NewInfoBlock(label.InfoParams{Mode: tc.mode, Size: 64 * MiB})
		if err != nil {
			t.Fatal(err)
		}
		f, _ := os.OpenFile(p, os.O_RDWR, 0)
		label.WriteInfoBlock(f, 0, ib)
		f.Close()
		rep, err := c.Add(tc.name, p, ImageOptions{})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		l := rep.Image.Layout
		if l.InfoBlock != tc.kind || l.DataOffset != ib.DataOff || l.DataSize != ib.NPFNs*4096 {
			t.Errorf("%s: layout %+v, info block dataoff %d npfns %d", tc.name, l, ib.DataOff, ib.NPFNs)
		}
		if !strings.Contains(strings.Join(rep.Warnings, "\n"), tc.warn) {
			t.Errorf("%s: warnings %q lack %q", tc.name, rep.Warnings, tc.warn)
		}
		if got := fileSHA(t, p, int64(l.DataOffset), int64(l.DataSize)); got != rep.Image.DataSHA256 {
			t.Errorf("%s: data digest %s, range %s", tc.name, rep.Image.DataSHA256, got)
		}
	}
}
