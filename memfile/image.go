package memfile

// Shared read-only images: a catalog of backing files that many guests map
// at once. This file owns the catalog record and its JSON file; the
// operations live in image_*.go.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvdimm-backend/nvdimm-backend/internal/atomicfile"
)

// CatalogVersion is the version of the catalog file this package writes
// and the only one it reads.
const CatalogVersion = 1

// CatalogFileName is the catalog file inside the catalog directory.
const CatalogFileName = "catalog.json"

// catalogLockName is the flock file that serialises catalog writers.
const catalogLockName = "catalog.lock"

// maxCatalogSize bounds how much of a catalog file is read.
const maxCatalogSize = 16 << 20

// Image formats recorded in ImageLayout.Format.
const (
	ImageFormatExt4 = "ext4" // built by Build: ext4, 4 KiB blocks, after a PFN info block
	ImageFormatRaw  = "raw"  // added by Add: contents not interpreted
)

// Info-block kinds recorded in ImageLayout.InfoBlock.
const (
	InfoNone    = "none"     // no info block: the guest sees a raw namespace without DAX
	InfoPFNRAM  = "pfn-ram"  // fsdax, memmap in guest RAM (what read-only sharing needs)
	InfoPFNPMEM = "pfn-pmem" // fsdax, memmap in the namespace (the guest writes it)
	InfoDevDAX  = "devdax"   // device-DAX info block: no filesystem mount
)

// ErrImageNotFound is wrapped when a catalog has no image of that name.
var ErrImageNotFound = errors.New("no such image")

// ErrImageExists is wrapped when a name or path is already catalogued.
var ErrImageExists = errors.New("image already exists")

// ImageLayout is where the data lies in an image file and what the guest
// finds there.
type ImageLayout struct {
	// Format is ImageFormatExt4 or ImageFormatRaw.
	Format string `json:"format"`
	// GuestSize is what the guest's namespace covers (label-less: the
	// whole file rounded down to Align).
	GuestSize uint64 `json:"guest_size"`
	// Align is the backend alignment given to QEMU.
	Align uint64 `json:"align"`
	// InfoBlock is one of the Info* kinds: what the guest finds at
	// namespace offset 4 KiB.
	InfoBlock string `json:"info_block"`
	// DataOffset and DataSize are the range the guest's /dev/pmemN
	// covers: after the info block's dataoff, or the whole namespace when
	// there is no info block.
	DataOffset uint64 `json:"data_offset"`
	DataSize   uint64 `json:"data_size"`
}

// Image is one catalog entry. Its JSON form is stable.
type Image struct {
	Name string `json:"name"`
	// Path is the absolute path of the image file.
	Path string `json:"path"`
	// Size is the file size in bytes.
	Size   uint64      `json:"size"`
	Layout ImageLayout `json:"layout"`
	// SHA256 is the hex SHA-256 of the whole file.
	SHA256 string `json:"sha256"`
	// DataSHA256 is the hex SHA-256 of [DataOffset, DataOffset+DataSize):
	// what a guest reading its /dev/pmemN sees.
	DataSHA256 string    `json:"data_sha256"`
	Created    time.Time `json:"created"`
	// Immutable records that the file carries the filesystem's immutable
	// attribute, so the kernel refuses every writable open (root's too).
	Immutable bool `json:"immutable"`
	// Owned marks a file made inside the catalog directory (Build): it is
	// deleted with the image. Added files are left in place.
	Owned bool `json:"owned"`
}

// catalogFile is the JSON document.
type catalogFile struct {
	Version int     `json:"version"`
	Images  []Image `json:"images"`
}

// validImageName reports whether s is a usable image name: 1-64 of
// letters, digits, '-', '_' and '.', starting with a letter or digit.
func validImageName(s string) error {
	if s == "" || len(s) > 64 {
		return fmt.Errorf("image name %q: want 1 to 64 characters", s)
	}
	for i, c := range s {
		ok := (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
		if !ok && i > 0 && (c == '-' || c == '_' || c == '.') {
			ok = true
		}
		if !ok {
			return fmt.Errorf("image name %q: character %q at %d; use letters, digits, '-', '_' and '.' (not first)", s, c, i)
		}
	}
	return nil
}

func validDigest(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9') && !(c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// Validate checks one catalog entry.
func (im *Image) Validate() error {
	if err := validImageName(im.Name); err != nil {
		return err
	}
	if !filepath.IsAbs(im.Path) || filepath.Clean(im.Path) != im.Path {
		return fmt.Errorf("image %s: field path %q is not a clean absolute path", im.Name, im.Path)
	}
	if im.Size == 0 {
		return fmt.Errorf("image %s: field size is 0", im.Name)
	}
	l := im.Layout
	switch l.Format {
	case ImageFormatExt4, ImageFormatRaw:
	default:
		return fmt.Errorf("image %s: field layout.format %q is not ext4 or raw", im.Name, l.Format)
	}
	switch l.InfoBlock {
	case InfoNone, InfoPFNRAM, InfoPFNPMEM, InfoDevDAX:
	default:
		return fmt.Errorf("image %s: field layout.info_block %q is not none, pfn-ram, pfn-pmem or devdax", im.Name, l.InfoBlock)
	}
	if l.Align == 0 || l.Align&(l.Align-1) != 0 {
		return fmt.Errorf("image %s: field layout.align %d is not a power of two", im.Name, l.Align)
	}
	if l.GuestSize == 0 || l.GuestSize > im.Size {
		return fmt.Errorf("image %s: field layout.guest_size %d is not within the %d-byte file", im.Name, l.GuestSize, im.Size)
	}
	if l.DataSize == 0 || l.DataOffset > l.GuestSize || l.DataSize > l.GuestSize-l.DataOffset {
		return fmt.Errorf("image %s: fields layout.data_offset %d and data_size %d are not within the %d-byte namespace",
			im.Name, l.DataOffset, l.DataSize, l.GuestSize)
	}
	if !validDigest(im.SHA256) {
		return fmt.Errorf("image %s: field sha256 %q is not 64 lower-case hex digits", im.Name, im.SHA256)
	}
	if !validDigest(im.DataSHA256) {
		return fmt.Errorf("image %s: field data_sha256 %q is not 64 lower-case hex digits", im.Name, im.DataSHA256)
	}
	return nil
}

// ParseCatalog decodes and validates a catalog file; name is used in
// errors. Unknown fields, other versions, duplicate names or paths and
// invalid entries are refused.
func ParseCatalog(data []byte, name string) ([]Image, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var cf catalogFile
	if err := dec.Decode(&cf); err != nil {
		return nil, fmt.Errorf("catalog %s: %w", name, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("catalog %s: trailing data after the catalog", name)
	}
	if cf.Version != CatalogVersion {
		return nil, fmt.Errorf("catalog %s: field version: %d is not supported (want %d)", name, cf.Version, CatalogVersion)
	}
	names := map[string]bool{}
	paths := map[string]string{}
	for i := range cf.Images {
		im := &cf.Images[i]
		if err := im.Validate(); err != nil {
			return nil, fmt.Errorf("catalog %s: images[%d]: %w", name, i, err)
		}
		if names[im.Name] {
			return nil, fmt.Errorf("catalog %s: images[%d]: name %q appears twice", name, i, im.Name)
		}
		if other, ok := paths[im.Path]; ok {
			return nil, fmt.Errorf("catalog %s: images[%d]: path %s is also image %q", name, i, im.Path, other)
		}
		names[im.Name] = true
		paths[im.Path] = im.Name
	}
	return cf.Images, nil
}

// DefaultCatalogDir is <state dir>/images: /var/lib/nvdimm-backend/images
// as root, else $XDG_STATE_HOME/nvdimm-backend/images (falling back to
// ~/.local/state).
func DefaultCatalogDir() string {
	const sub = "nvdimm-backend"
	if os.Geteuid() == 0 {
		return filepath.Join("/var/lib", sub, "images")
	}
	if x := os.Getenv("XDG_STATE_HOME"); filepath.IsAbs(x) {
		return filepath.Join(x, sub, "images")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", sub, "images")
	}
	return filepath.Join(os.TempDir(), sub+"-images")
}

// Catalog is a directory of shared read-only images and their catalog
// file. Readers see a consistent catalog at any time (it is replaced
// atomically); writers are serialised by an flock on catalog.lock.
type Catalog struct {
	dir string
}

// OpenCatalog opens (creating when missing) the catalog directory dir.
func OpenCatalog(dir string) (*Catalog, error) {
	if dir == "" {
		return nil, errors.New("catalog: empty directory name")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("catalog %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("catalog %s: %w", abs, err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("catalog %s: %w", abs, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("catalog %s: not a directory", abs)
	}
	return &Catalog{dir: abs}, nil
}

// Dir is the catalog directory (absolute).
func (c *Catalog) Dir() string { return c.dir }

// FilePath is the catalog file's path.
func (c *Catalog) FilePath() string { return filepath.Join(c.dir, CatalogFileName) }

// List returns every image, in catalog order.
func (c *Catalog) List() ([]Image, error) {
	return c.read()
}

// Get returns the image called name; the error wraps ErrImageNotFound
// when there is none.
func (c *Catalog) Get(name string) (Image, error) {
	ims, err := c.read()
	if err != nil {
		return Image{}, err
	}
	for _, im := range ims {
		if im.Name == name {
			return im, nil
		}
	}
	return Image{}, fmt.Errorf("image %q in catalog %s: %w", name, c.dir, ErrImageNotFound)
}

func (c *Catalog) read() ([]Image, error) {
	p := c.FilePath()
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("catalog %s: %w", p, err)
	}
	defer f.Close()
	buf, err := io.ReadAll(io.LimitReader(f, maxCatalogSize+1))
	if err != nil {
		return nil, fmt.Errorf("catalog %s: %w", p, err)
	}
	if len(buf) > maxCatalogSize {
		return nil, fmt.Errorf("catalog %s: larger than %s, not a catalog", p, FormatSize(maxCatalogSize))
	}
	return ParseCatalog(buf, p)
}

func (c *Catalog) write(ims []Image) error {
	if ims == nil {
		ims = []Image{}
	}
	for i := range ims {
		if err := ims[i].Validate(); err != nil {
			return fmt.Errorf("catalog %s: %w", c.FilePath(), err)
		}
	}
	return atomicfile.WriteJSON(c.FilePath(), catalogFile{Version: CatalogVersion, Images: ims}, 0o644)
}

// update runs fn on the catalog under the writers' lock and writes the
// result when fn succeeds.
func (c *Catalog) update(fn func(ims []Image) ([]Image, error)) error {
	unlock, err := c.lock()
	if err != nil {
		return err
	}
	defer unlock()
	ims, err := c.read()
	if err != nil {
		return err
	}
	out, err := fn(ims)
	if err != nil {
		return err
	}
	return c.write(out)
}

// lock takes the catalog writers' flock, waiting for another writer.
func (c *Catalog) lock() (func(), error) {
	p := filepath.Join(c.dir, catalogLockName)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("catalog lock %s: %w", p, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("catalog lock %s: %w", p, err)
	}
	return func() { f.Close() }, nil
}

func findImage(ims []Image, name string) int {
	for i := range ims {
		if ims[i].Name == name {
			return i
		}
	}
	return -1
}
