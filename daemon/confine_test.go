package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestConfiner(t *testing.T) {
	root := t.TempDir()
	allowed := filepath.Join(root, "backings")
	outside := filepath.Join(root, "outside")
	os.MkdirAll(filepath.Join(allowed, "sub"), 0o700)
	os.MkdirAll(outside, 0o700)
	os.Symlink(outside, filepath.Join(allowed, "escape"))                // dir link out
	os.Symlink(filepath.Join(allowed, "sub"), filepath.Join(root, "in")) // link in
	os.Symlink("../outside/f", filepath.Join(allowed, "rel"))            // relative link out
	os.Symlink(filepath.Join(allowed, "loop"), filepath.Join(allowed, "loop"))
	c, err := NewConfiner([]string{allowed})
	if err != nil {
		t.Fatal(err)
	}
	ok := map[string]string{
		allowed + "/a.img":              allowed + "/a.img",
		allowed + "/sub/../b.img":       allowed + "/b.img",
		root + "/in/c.img":              allowed + "/sub/c.img",
		allowed + "/./sub/new/deep.img": allowed + "/sub/new/deep.img",
		"/dev/pmem0":                    "/dev/pmem0",
		"/dev/dax0.0":                   "/dev/dax0.0",
	}
	for in, want := range ok {
		got, err := c.Check(in)
		if err != nil || got != want {
			t.Errorf("Check(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	bad := map[string]string{
		allowed:                          "must resolve",
		allowed + "/../outside/x":        "must resolve",
		allowed + "/escape/x":            "must resolve",
		allowed + "/rel":                 "must resolve",
		allowed + "/loop":                "symlinks",
		allowed + "/new/../../outside/x": `".." after a component`,
		"/dev/null":                      "must resolve",
		"/dev/pmem0/../null":             `".." after a component`,
		"relative.img":                   "absolute",
		"":                               "empty",
		allowed + "/a\x00b":              "NUL",
	}
	for in, want := range bad {
		_, err := c.Check(in)
		var ce *ConfinementError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), want) {
			t.Errorf("Check(%q) = %v; want a ConfinementError containing %q", in, err, want)
		}
	}
}

func FuzzConfinerCheck(f *testing.F) {
	root := f.TempDir()
	allowed := filepath.Join(root, "backings")
	os.MkdirAll(filepath.Join(allowed, "sub"), 0o700)
	os.Symlink(root, filepath.Join(allowed, "up"))
	os.Symlink("sub/../../..", filepath.Join(allowed, "rel"))
	c, err := NewConfiner([]string{allowed})
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{"a.img", "sub/../a", "up/backings/x", "rel/etc/passwd", "../../../../etc/shadow", "new/../x", "./././a", "/dev/pmem0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, rel string) {
		p := rel
		if !strings.HasPrefix(rel, "/") {
			p = allowed + "/" + rel
		}
		got, err := c.Check(p)
		if err != nil {
			var ce *ConfinementError
			if !errors.As(err, &ce) {
				t.Fatalf("Check(%q): error %v is not a ConfinementError", p, err)
			}
			return
		}
		inDir := strings.HasPrefix(got, allowed+"/")
		dev := filepath.Dir(got) == "/dev" && (strings.HasPrefix(filepath.Base(got), "dax") || strings.HasPrefix(filepath.Base(got), "pmem"))
		if !inDir && !dev {
			t.Fatalf("Check(%q) allowed %q", p, got)
		}
		if filepath.Clean(got) != got {
			t.Fatalf("Check(%q) = %q, not clean", p, got)
		}
	})
}
