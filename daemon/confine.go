package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// ConfinementError says why a backing path was refused: the path as
// given, what it resolved to and the rule it broke.
type ConfinementError struct {
	Path     string
	Resolved string
	Rule     string
}

func (e *ConfinementError) Error() string {
	if e.Resolved != "" && e.Resolved != e.Path {
		return fmt.Sprintf("backing path %q (resolves to %q) refused: %s", e.Path, e.Resolved, e.Rule)
	}
	return fmt.Sprintf("backing path %q refused: %s", e.Path, e.Rule)
}

// Confiner decides whether a backing path may be created or adopted: it
// must resolve (symlinks and ".." followed) to a path strictly under one of
// the backing directories, or to a /dev/dax* or /dev/pmem* device node.
//
// With an image catalog (AllowImages), paths under the catalog directory
// are refused as backings: they may only be used as images, whose files
// must resolve under the catalog directory or a backing directory
// (CheckImage).
type Confiner struct {
	dirs    []string // resolved backing directories
	catalog string   // resolved image catalog directory ("" = none)
}

// maxSymlinks bounds symlink expansion, like the kernel's ELOOP limit.
const maxSymlinks = 40

// NewConfiner returns a confiner for the given backing directories. Each
// must be absolute; they are resolved now (they need not exist yet).
func NewConfiner(dirs []string) (*Confiner, error) {
	c := &Confiner{}
	for _, d := range dirs {
		if !filepath.IsAbs(d) {
			return nil, fmt.Errorf("backing directory %q: must be an absolute path", d)
		}
		r, err := resolvePath(d)
		if err != nil {
			return nil, fmt.Errorf("backing directory %q: %w", d, err)
		}
		c.dirs = append(c.dirs, r)
	}
	return c, nil
}

// Dirs returns the resolved backing directories.
func (c *Confiner) Dirs() []string { return append([]string(nil), c.dirs...) }

// AllowImages sets the image catalog directory (absolute; resolved now).
// Call it before the confiner is shared.
func (c *Confiner) AllowImages(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("image catalog directory %q: must be an absolute path", dir)
	}
	r, err := resolvePath(dir)
	if err != nil {
		return fmt.Errorf("image catalog directory %q: %w", dir, err)
	}
	c.catalog = r
	return nil
}

// CatalogDir returns the resolved image catalog directory ("" when none).
func (c *Confiner) CatalogDir() string { return c.catalog }

// under reports whether r lies strictly under dir.
func under(r, dir string) bool {
	return r != dir && strings.HasPrefix(r, dir+string(filepath.Separator)) || (dir == "/" && r != "/")
}

// CheckImage resolves the file of a catalogued image and returns the
// resolved path if it lies under the image catalog directory or a backing
// directory, or a *ConfinementError. The catalog names files, and a file
// anywhere else (a catalogue entry pointing at /etc, say) is refused.
func (c *Confiner) CheckImage(path string) (string, error) {
	if path == "" || strings.IndexByte(path, 0) >= 0 || !filepath.IsAbs(path) {
		return "", &ConfinementError{Path: path, Rule: "image file path must be absolute"}
	}
	r, err := resolvePath(path)
	if err != nil {
		return "", &ConfinementError{Path: path, Rule: "cannot resolve: " + err.Error()}
	}
	if c.catalog != "" && under(r, c.catalog) {
		return r, nil
	}
	for _, d := range c.dirs {
		if under(r, d) {
			return r, nil
		}
	}
	return "", &ConfinementError{Path: path, Resolved: r, Rule: fmt.Sprintf(
		"an image file must resolve to a path under the image catalog (%s) or a backing directory (%s); move it there and catalogue it again",
		c.catalog, strings.Join(c.dirs, ", "))}
}

// Check resolves path and returns the resolved path if it is allowed, or a
// *ConfinementError naming the rule it broke.
func (c *Confiner) Check(path string) (string, error) {
	if path == "" {
		return "", &ConfinementError{Path: path, Rule: "path is empty"}
	}
	if strings.IndexByte(path, 0) >= 0 {
		return "", &ConfinementError{Path: path, Rule: "path contains a NUL byte"}
	}
	if !filepath.IsAbs(path) {
		return "", &ConfinementError{Path: path, Rule: "path must be absolute"}
	}
	r, err := resolvePath(path)
	if err != nil {
		return "", &ConfinementError{Path: path, Rule: "cannot resolve: " + err.Error()}
	}
	if c.catalog != "" && under(r, c.catalog) {
		return "", &ConfinementError{Path: path, Resolved: r, Rule: fmt.Sprintf(
			"it is in the image catalog directory %s: catalogued images are shared read-only and attached with --image NAME, never as a backing", c.catalog)}
	}
	if filepath.Dir(r) == "/dev" {
		b := filepath.Base(r)
		if strings.HasPrefix(b, "dax") || strings.HasPrefix(b, "pmem") {
			return r, nil
		}
	}
	for _, d := range c.dirs {
		if under(r, d) {
			return r, nil
		}
	}
	return "", &ConfinementError{Path: path, Resolved: r, Rule: fmt.Sprintf(
		"must resolve to a path under a backing directory (%s) or to a /dev/dax* or /dev/pmem* device",
		strings.Join(c.dirs, ", "))}
}

// resolvePath resolves an absolute path component by component, following
// symlinks and applying ".." to the resolved prefix (as the kernel does).
// Components after the first one that does not exist are kept lexically;
// a ".." among them is refused, since its meaning cannot be known.
func resolvePath(p string) (string, error) {
	if !filepath.IsAbs(p) {
		return "", errors.New("not an absolute path")
	}
	rest := splitPath(p)
	resolved := "/"
	links := 0
	missing := false
	for len(rest) > 0 {
		comp := rest[0]
		rest = rest[1:]
		switch comp {
		case ".":
			continue
		case "..":
			if missing {
				return "", errors.New(`".." after a component that does not exist`)
			}
			resolved = filepath.Dir(resolved)
			continue
		}
		next := filepath.Join(resolved, comp)
		if missing {
			resolved = next
			continue
		}
		fi, err := os.Lstat(next)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			missing = true
			resolved = next
			continue
		case err != nil:
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			resolved = next
			continue
		}
		links++
		if links > maxSymlinks {
			return "", fmt.Errorf("more than %d symlinks", maxSymlinks)
		}
		target, err := os.Readlink(next)
		if err != nil {
			return "", err
		}
		if filepath.IsAbs(target) {
			resolved = "/"
		}
		rest = append(splitPath(target), rest...)
	}
	return resolved, nil
}

func splitPath(p string) []string {
	var out []string
	for _, s := range strings.Split(p, "/") {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}
