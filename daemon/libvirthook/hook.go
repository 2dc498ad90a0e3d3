package libvirthook

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nvdimm-backend/nvdimm-backend/daemon"
	"github.com/nvdimm-backend/nvdimm-backend/internal/atomicfile"
	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

// ClaimVersion is the version of the claim records this hook writes.
const ClaimVersion = 1

// EphemeralDir is the subdirectory of a backing directory whose backings
// the hook creates for one run of a domain and removes at "release end".
// Backings it creates elsewhere are kept.
const EphemeralDir = "ephemeral"

// Config configures the hook.
type Config struct {
	// StateDir holds the claim records (<StateDir>/libvirt/<domain>.json).
	StateDir string
	// Confiner decides which sources are managed.
	Confiner *daemon.Confiner
	// Log receives notes (sources left alone, backings created).
	Log io.Writer
}

// Claim is the record of the backings a running domain uses.
type Claim struct {
	Version  int            `json:"version"`
	Domain   string         `json:"domain"`
	UUID     string         `json:"uuid,omitempty"`
	Backings []ClaimBacking `json:"backings"`
}

// ClaimBacking is one claimed backing.
type ClaimBacking struct {
	Path      string `json:"path"`
	ReadOnly  bool   `json:"readonly"`
	Created   bool   `json:"created"`
	Ephemeral bool   `json:"ephemeral"`
}

// Run executes one hook invocation: args are libvirt's "<domain> <op>
// <subop> [extra]", stdin the domain XML. Only "prepare begin" and
// "release end" do anything. A returned error fails the domain start.
func Run(cfg Config, args []string, stdin io.Reader) error {
	if len(args) < 3 {
		return fmt.Errorf("libvirt-hook: want <domain> <op> <subop> [extra], got %d arguments", len(args))
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	name, op, sub := args[0], args[1], args[2]
	if err := validDomainName(name); err != nil {
		return err
	}
	switch {
	case op == "prepare" && sub == "begin":
	case op == "release" && sub == "end":
	default:
		return nil
	}
	dir := filepath.Join(cfg.StateDir, "libvirt")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("libvirt-hook: %w", err)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return err
	}
	defer unlock()
	if op == "release" {
		return release(cfg, dir, name)
	}
	dom, err := ParseDomain(stdin)
	if err != nil {
		return fmt.Errorf("libvirt-hook: domain %s: %w", name, err)
	}
	if dom.Name != "" && dom.Name != name {
		return fmt.Errorf("libvirt-hook: domain XML names %q but libvirt passed %q", dom.Name, name)
	}
	return prepare(cfg, dir, name, dom)
}

func validDomainName(n string) error {
	if n == "" || n == "." || n == ".." || strings.ContainsAny(n, "/\x00") || len(n) > 255 {
		return fmt.Errorf("libvirt-hook: domain name %q cannot name a claim record", n)
	}
	return nil
}

// lockDir serialises hook runs with an flock on <dir>/.lock.
func lockDir(dir string) (func(), error) {
	p := filepath.Join(dir, ".lock")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("libvirt-hook: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("libvirt-hook: lock %s: %w", p, err)
	}
	return func() { f.Close() }, nil
}

func prepare(cfg Config, dir, name string, dom *Domain) (err error) {
	if err := dom.Check(); err != nil {
		return fmt.Errorf("libvirt-hook: domain %s would fail to start:\n%w", name, err)
	}
	others, err := readClaims(dir, name)
	if err != nil {
		return err
	}
	claim := Claim{Version: ClaimVersion, Domain: name, UUID: dom.UUID, Backings: []ClaimBacking{}}
	var created []string
	defer func() {
		if err != nil {
			for _, p := range created {
				_ = os.Remove(p)
			}
		}
	}()
	var errs []error
	for _, m := range dom.Memories {
		where := fmt.Sprintf("<memory model='%s'> #%d (%s)", m.Model, m.Index, m.Path)
		path, cerr := cfg.Confiner.Check(m.Path)
		if cerr != nil {
			fmt.Fprintf(cfg.Log, "libvirt-hook: %s: not a managed backing, left to libvirt and QEMU (%v)\n", where, cerr)
			continue
		}
		for _, o := range others {
			for _, b := range o.Backings {
				if b.Path == path && !(b.ReadOnly && m.ReadOnly) {
					errs = append(errs, fmt.Errorf("%s: backing %s is in use by running domain %q (only read-only use can be shared)", where, path, o.Domain))
				}
			}
		}
		cb := ClaimBacking{Path: path, ReadOnly: m.ReadOnly, Ephemeral: isEphemeral(cfg.Confiner, path)}
		fi, serr := os.Stat(path)
		switch {
		case errors.Is(serr, fs.ErrNotExist):
			if m.ReadOnly {
				errs = append(errs, fmt.Errorf("%s: read-only backing %s does not exist", where, path))
				continue
			}
			if strings.HasPrefix(path, "/dev/") {
				errs = append(errs, fmt.Errorf("%s: device %s does not exist", where, path))
				continue
			}
			if err := createBacking(path, m.Size); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", where, err))
				continue
			}
			created = append(created, path)
			cb.Created = true
			fmt.Fprintf(cfg.Log, "libvirt-hook: %s: created %s (%d bytes)\n", where, path, m.Size)
		case serr != nil:
			errs = append(errs, fmt.Errorf("%s: %w", where, serr))
			continue
		case fi.Mode().IsRegular():
			if uint64(fi.Size()) != m.Size {
				errs = append(errs, fmt.Errorf("%s: backing %s is %d bytes but the target size is %d: QEMU needs them equal", where, path, fi.Size(), m.Size))
				continue
			}
			// A backing the daemon has attached to a running VM holds a lock.
			if l, lerr := (daemon.MemfileBackings{}).Lock(path, m.ReadOnly); lerr != nil {
				if errors.Is(lerr, daemon.ErrBackingLocked) {
					errs = append(errs, fmt.Errorf("%s: %w", where, lerr))
				}
			} else {
				l.Close()
			}
			if m.PMem {
				if b, oerr := memfile.Open(path, memfile.OpenOptions{ReadOnly: true, LabelSize: m.LabelSize, Align: m.AlignSize}); oerr == nil {
					if !b.PMem() {
						fmt.Fprintf(cfg.Log, "libvirt-hook: %s: <pmem/> asked for, but %s is not on persistent memory (kind %s): QEMU maps it without MAP_SYNC, so guest flushes are not persistent until the host syncs the file\n", where, path, b.Kind())
					}
					b.Close()
				}
			}
		case fi.Mode()&fs.ModeDevice != 0:
			// Device nodes: QEMU checks the size against the device.
		default:
			errs = append(errs, fmt.Errorf("%s: %s is neither a regular file nor a device (%s)", where, path, fi.Mode().Type()))
		}
		claim.Backings = append(claim.Backings, cb)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("libvirt-hook: domain %s would fail to start:\n%w", name, err)
	}
	if err := atomicfile.WriteJSON(filepath.Join(dir, name+".json"), claim, 0o600); err != nil {
		return fmt.Errorf("libvirt-hook: %w", err)
	}
	return nil
}

func isEphemeral(c *daemon.Confiner, path string) bool {
	for _, d := range c.Dirs() {
		if strings.HasPrefix(path, filepath.Join(d, EphemeralDir)+"/") {
			return true
		}
	}
	return false
}

// createBacking creates a sparse backing of exactly size bytes.
func createBacking(path string, size uint64) error {
	if size > 1<<62 {
		return fmt.Errorf("create %s: size %d too large", path, size)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if err := f.Truncate(int64(size)); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("create %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return fmt.Errorf("create %s: %w", path, err)
	}
	return atomicfile.SyncDir(filepath.Dir(path))
}

// readClaims reads the claim records of the other domains.
func readClaims(dir, self string) ([]Claim, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("libvirt-hook: %w", err)
	}
	var out []Claim
	for _, e := range ents {
		n := e.Name()
		if !strings.HasSuffix(n, ".json") || strings.HasPrefix(n, ".") || n == self+".json" {
			continue
		}
		c, err := readClaim(filepath.Join(dir, n))
		if err != nil {
			return nil, err
		}
		out = append(out, *c)
	}
	return out, nil
}

func readClaim(p string) (*Claim, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("libvirt-hook: claim record: %w", err)
	}
	return ParseClaim(b, p)
}

// ParseClaim decodes and checks a claim record; name (its path) is used
// in errors. The record decides which files release removes, so beyond
// the version it must name a usable domain and clean absolute backing
// paths, and hold nothing after the record.
func ParseClaim(b []byte, name string) (*Claim, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	var c Claim
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("libvirt-hook: claim record %s: %w", name, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("libvirt-hook: claim record %s: trailing data after the record", name)
	}
	if c.Version != ClaimVersion {
		return nil, fmt.Errorf("libvirt-hook: claim record %s: version %d, want %d", name, c.Version, ClaimVersion)
	}
	if err := validDomainName(c.Domain); err != nil {
		return nil, fmt.Errorf("libvirt-hook: claim record %s: field domain: %w", name, err)
	}
	for i, cb := range c.Backings {
		if !filepath.IsAbs(cb.Path) || filepath.Clean(cb.Path) != cb.Path || strings.IndexByte(cb.Path, 0) >= 0 {
			return nil, fmt.Errorf("libvirt-hook: claim record %s: backings[%d]: path %q is not a clean absolute path", name, i, cb.Path)
		}
	}
	return &c, nil
}

// release drops the domain's claim and removes its ephemeral backings.
func release(cfg Config, dir, name string) error {
	p := filepath.Join(dir, name+".json")
	c, err := readClaim(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, b := range c.Backings {
		if b.Created && b.Ephemeral {
			// The record is a file: remove only what the configuration
			// still calls an ephemeral managed backing, never a path a
			// damaged or planted record names elsewhere.
			if r, cerr := cfg.Confiner.Check(b.Path); cerr != nil || r != b.Path || !isEphemeral(cfg.Confiner, b.Path) {
				errs = append(errs, fmt.Errorf("claim record %s: backing %s is not an ephemeral managed backing: not removed", p, b.Path))
				continue
			}
			if err := os.Remove(b.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			} else {
				fmt.Fprintf(cfg.Log, "libvirt-hook: removed ephemeral backing %s\n", b.Path)
			}
		}
	}
	if err := os.Remove(p); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("libvirt-hook: release %s: %w", name, err)
	}
	return nil
}
