package flushhint

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// Strategy makes a backing's written data durable. Sync must make durable
// at least every write that completed before Sync was called. An Engine
// runs at most Options.MaxInFlight syncs at once (one by default).
type Strategy interface {
	// Sync makes earlier writes durable, or reports why it could not.
	Sync() error
	// Name is a short stable identifier ("fdatasync", "deep-flush", "none").
	Name() string
	// Guarantee says in one sentence what a successful Sync guarantees.
	Guarantee() string
}

// fileSync syncs a file (or block device) with fdatasync(2).
type fileSync struct {
	f    *os.File
	fd   int
	path string
}

// ForFile returns the strategy for a regular file, a file on a DAX
// filesystem or a pmem block device: fdatasync(2) on f. Writes through a
// MAP_SHARED mapping of f are in the page cache (or, on fsdax, possibly in
// CPU caches over media) and fdatasync writes them back, flushes the
// device's volatile cache and, on fsdax, makes the filesystem's metadata
// for them stable. f must stay open while the strategy is used.
func ForFile(f *os.File) Strategy {
	return &fileSync{f: f, fd: int(f.Fd()), path: f.Name()}
}

func (s *fileSync) Sync() error {
	err := unix.Fdatasync(s.fd)
	runtime.KeepAlive(s.f)
	if err != nil {
		return fmt.Errorf("fdatasync %s: %w", s.path, err)
	}
	return nil
}

func (s *fileSync) Name() string { return "fdatasync" }

func (s *fileSync) Guarantee() string {
	return "fdatasync(2): every write to the file (including through shared mappings) completed before the sync is on stable storage, with the metadata needed to read it back"
}

// deepFlush writes "1" to an nd region's deep_flush attribute, which makes
// the kernel write the region's flush hint addresses (nvdimm_flush).
type deepFlush struct {
	attr string
}

func (s *deepFlush) Sync() error {
	f, err := os.OpenFile(s.attr, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("deep flush: %w", err)
	}
	_, werr := f.Write([]byte("1\n"))
	cerr := f.Close()
	if werr != nil {
		return fmt.Errorf("deep flush: write %s: %w", s.attr, werr)
	}
	if cerr != nil {
		return fmt.Errorf("deep flush: close %s: %w", s.attr, cerr)
	}
	return nil
}

func (s *deepFlush) Name() string { return "deep-flush" }

func (s *deepFlush) Guarantee() string {
	return "region deep_flush (" + s.attr + "): the memory controller's write-pending queues are flushed to media; stores must already have left the CPU caches (the guest's clwb/sfence or non-temporal stores)"
}

// noSync has nothing to do.
type noSync struct {
	reason string
}

// None returns a strategy whose Sync does nothing; reason says why that is
// enough (or why nothing better exists), and is reported as its guarantee.
func None(reason string) Strategy { return &noSync{reason: reason} }

func (s *noSync) Sync() error       { return nil }
func (s *noSync) Name() string      { return "none" }
func (s *noSync) Guarantee() string { return s.reason }

// ParseDeepFlush parses the content of an nd region's deep_flush sysfs
// attribute: "1" means the region has flush hints (writing 1 flushes them),
// "0" means the platform persists stores that reach the memory controller
// (ADR) and there is nothing to flush. Anything else is an error naming
// where it was read.
func ParseDeepFlush(data []byte, where string) (bool, error) {
	s := strings.TrimSpace(string(data))
	switch s {
	case "1":
		return true, nil
	case "0":
		return false, nil
	}
	if len(s) > 32 {
		s = s[:32] + "..."
	}
	return false, fmt.Errorf("%s: deep_flush is %q, want 0 or 1", where, s)
}

// maxSysfsWalk bounds how many parent directories are searched for a
// region's deep_flush attribute.
const maxSysfsWalk = 16

// ForDevDAX returns the strategy for a device-DAX character device: the
// deep_flush attribute of the nd region that contains it when the region
// has flush hints, else a no-op (stores the guest made persistent in its
// CPU caches are persistent once they reach the platform's ADR domain; a
// devdax mapping has no page cache to write back). sysfsRoot is "/sys" on
// a host ("" means that); tests pass a fake tree.
func ForDevDAX(f *os.File, sysfsRoot string) (Strategy, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("devdax %s: fstat: %w", f.Name(), err)
	}
	runtime.KeepAlive(f)
	if st.Mode&unix.S_IFMT != unix.S_IFCHR {
		return nil, fmt.Errorf("devdax %s: not a character device", f.Name())
	}
	return forDevNum(f.Name(), unix.Major(st.Rdev), unix.Minor(st.Rdev), sysfsRoot)
}

func forDevNum(name string, maj, mnr uint32, sysfsRoot string) (Strategy, error) {
	if sysfsRoot == "" {
		sysfsRoot = "/sys"
	}
	link := filepath.Join(sysfsRoot, "dev", "char", fmt.Sprintf("%d:%d", maj, mnr))
	dir, err := filepath.EvalSymlinks(link)
	if err != nil {
		return nil, fmt.Errorf("devdax %s: no sysfs device at %s: %w", name, link, err)
	}
	root, err := filepath.EvalSymlinks(sysfsRoot)
	if err != nil {
		return nil, fmt.Errorf("devdax %s: sysfs root %s: %w", name, sysfsRoot, err)
	}
	for i := 0; i < maxSysfsWalk; i++ {
		attr := filepath.Join(dir, "deep_flush")
		data, err := os.ReadFile(attr)
		if err == nil {
			if len(data) > 4096 {
				data = data[:4096]
			}
			has, err := ParseDeepFlush(data, attr)
			if err != nil {
				return nil, fmt.Errorf("devdax %s: %w", name, err)
			}
			if has {
				return &deepFlush{attr: attr}, nil
			}
			return None("the region of " + name + " reports deep_flush 0: the platform persists stores that reach the memory controller, nothing to flush"), nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("devdax %s: read %s: %w", name, attr, err)
		}
		parent := filepath.Dir(dir)
		if parent == dir || dir == root || !strings.HasPrefix(parent, root) {
			break
		}
		dir = parent
	}
	return None("no deep_flush attribute above the sysfs device of " + name + ": no flush hints to write; stores are persistent once they leave the CPU caches"), nil
}

// Kinds of backing understood by ForBacking; they are memfile's kind
// names.
const (
	kindFile      = "file"
	kindDAXFile   = "dax-file"
	kindDevDAX    = "devdax"
	kindPMemBlock = "pmem-block"
	kindMemfd     = "memfd"
)

// ForBacking chooses the strategy for a backing of the given memfile kind
// ("file", "dax-file", "pmem-block": fdatasync; "devdax": ForDevDAX;
// "memfd": nothing, it has no stable storage).
func ForBacking(kind string, f *os.File, sysfsRoot string) (Strategy, error) {
	switch kind {
	case kindFile, kindDAXFile, kindPMemBlock:
		return ForFile(f), nil
	case kindDevDAX:
		return ForDevDAX(f, sysfsRoot)
	case kindMemfd:
		return None("memfd backing: memory only, nothing can make it durable"), nil
	}
	return nil, fmt.Errorf("flush strategy for %s: unknown backing kind %q", f.Name(), kind)
}
