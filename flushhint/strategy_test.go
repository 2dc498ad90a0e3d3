package flushhint

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeSysfs builds a sysfs tree in which the character device maj:mnr is
// a dax device below an nd region; deep is the region's deep_flush
// content ("" for none).
func fakeSysfs(t *testing.T, maj, mnr uint32, deep string) (root, region string) {
	t.Helper()
	root = t.TempDir()
	region = filepath.Join(root, "devices", "platform", "ACPI0012:00", "ndbus0", "region0")
	dev := filepath.Join(region, "dax0.0", "dax0.0")
	if err := os.MkdirAll(dev, 0o755); err != nil {
		t.Fatal(err)
	}
	if deep != "" {
		if err := os.WriteFile(filepath.Join(region, "deep_flush"), []byte(deep), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	chr := filepath.Join(root, "dev", "char")
	if err := os.MkdirAll(chr, 0o755); err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(chr, dev)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(rel, filepath.Join(chr, devNum(maj, mnr))); err != nil {
		t.Fatal(err)
	}
	return root, region
}

func devNum(maj, mnr uint32) string {
	return strings.Join([]string{itoa(maj), itoa(mnr)}, ":")
}

func itoa(v uint32) string {
	if v == 0 {
		return "0"
	}
	var b []byte
	for ; v > 0; v /= 10 {
		b = append([]byte{byte('0' + v%10)}, b...)
	}
	return string(b)
}

// devZero stands in for /dev/daxX.Y: a character device we can open.
func devZero(t *testing.T) (*os.File, uint32, uint32) {
	t.Helper()
	f, err := os.OpenFile("/dev/zero", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no /dev/zero: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return f, unix.Major(st.Rdev), unix.Minor(st.Rdev)
}

func TestForDevDAXDeepFlush(t *testing.T) {
	f, maj, mnr := devZero(t)
	root, region := fakeSysfs(t, maj, mnr, "1\n")
	s, err := ForDevDAX(f, root)
	if err != nil {
		t.Fatal(err)
	}
	if s.Name() != "deep-flush" || !strings.Contains(s.Guarantee(), "deep_flush") {
		t.Fatalf("strategy %s (%s), want deep-flush", s.Name(), s.Guarantee())
	}
	attr := filepath.Join(region, "deep_flush")
	if err := os.WriteFile(attr, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(attr); strings.TrimSpace(string(got)) != "1" {
		t.Fatalf("deep_flush got %q, want 1 written", got)
	}
	// A vanished attribute is an error naming it, not a silent success.
	os.Remove(attr)
	if err := s.Sync(); err == nil || !strings.Contains(err.Error(), "deep_flush") {
		t.Fatalf("sync with the attribute gone: %v", err)
	}
}

func TestForDevDAXNoFlushNeeded(t *testing.T) {
	f, maj, mnr := devZero(t)
	for _, c := range []struct{ deep, why string }{{"0\n", "deep_flush 0"}, {"", "no deep_flush attribute"}} {
		root, _ := fakeSysfs(t, maj, mnr, c.deep)
		s, err := ForDevDAX(f, root)
		if err != nil {
			t.Fatal(err)
		}
		if s.Name() != "none" || !strings.Contains(s.Guarantee(), c.why) || s.Sync() != nil {
			t.Fatalf("deep_flush %q: strategy %s (%s)", c.deep, s.Name(), s.Guarantee())
		}
	}
}

func TestForDevDAXErrors(t *testing.T) {
	f, maj, mnr := devZero(t)
	root, _ := fakeSysfs(t, maj, mnr, "maybe\n")
	if _, err := ForDevDAX(f, root); err == nil || !strings.Contains(err.Error(), "deep_flush") || !strings.Contains(err.Error(), "maybe") {
		t.Fatalf("garbage deep_flush: %v", err)
	}
	if _, err := ForDevDAX(f, t.TempDir()); err == nil || !strings.Contains(err.Error(), "no sysfs device") {
		t.Fatalf("missing sysfs device: %v", err)
	}
	reg, err := os.CreateTemp(t.TempDir(), "plain")
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	if _, err := ForDevDAX(reg, root); err == nil || !strings.Contains(err.Error(), "not a character device") {
		t.Fatalf("regular file as devdax: %v", err)
	}
}

func TestForBacking(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "backing")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for kind, want := range map[string]string{"file": "fdatasync", "dax-file": "fdatasync", "pmem-block": "fdatasync", "memfd": "none"} {
		s, err := ForBacking(kind, f, "")
		if err != nil || s.Name() != want || s.Guarantee() == "" {
			t.Fatalf("kind %s: %v %v", kind, s, err)
		}
	}
	if _, err := ForBacking("floppy", f, ""); err == nil || !strings.Contains(err.Error(), "floppy") {
		t.Fatalf("unknown kind: %v", err)
	}
	if _, err := f.WriteAt([]byte("data"), 0); err != nil {
		t.Fatal(err)
	}
	if err := ForFile(f).Sync(); err != nil {
		t.Fatal(err)
	}
	closed, _ := os.CreateTemp(t.TempDir(), "closed")
	s := ForFile(closed)
	closed.Close()
	if err := s.Sync(); err == nil || !strings.Contains(err.Error(), closed.Name()) {
		t.Fatalf("sync of a closed file: %v", err)
	}
}

func TestParseDeepFlush(t *testing.T) {
	for in, want := range map[string]bool{"1": true, "1\n": true, " 0\n": false} {
		got, err := ParseDeepFlush([]byte(in), "x")
		if err != nil || got != want {
			t.Errorf("%q: %v %v", in, got, err)
		}
	}
	for _, in := range []string{"", "2", "-6", "yes", strings.Repeat("1", 100)} {
		if _, err := ParseDeepFlush([]byte(in), "/sys/x/deep_flush"); err == nil || !strings.Contains(err.Error(), "/sys/x/deep_flush") {
			t.Errorf("%q: %v", in, err)
		}
	}
}

func FuzzParseDeepFlush(f *testing.F) {
	for _, s := range []string{"1\n", "0\n", "", "2", "\x00\xff", "1 1"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := ParseDeepFlush(data, "fuzz")
		if err != nil {
			if v || len(err.Error()) > 200 {
				t.Fatalf("error result %v / %q", v, err)
			}
			return
		}
		s := strings.TrimSpace(string(data))
		if (s == "1") != v || (s != "0" && s != "1") {
			t.Fatalf("%q parsed as %v", data, v)
		}
	})
}
