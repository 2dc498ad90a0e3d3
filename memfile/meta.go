package memfile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/nvdimm-backend/nvdimm-backend/internal/atomicfile"
)

// MetaVersion is the version of the metadata record this package writes
// and the only one it reads.
const MetaVersion = 1

// MetaSuffix is appended to a backing's path to name its metadata record.
const MetaSuffix = ".nvdimm.json"

// maxMetaSize bounds how much of a metadata record is read.
const maxMetaSize = 1 << 20

// NoSlot is Meta.Slot when no DIMM slot has been assigned.
const NoSlot = -1

// Meta is the record kept beside a backing in <path>.nvdimm.json.
type Meta struct {
	Version int    `json:"version"`
	Kind    string `json:"kind"`
	Layout  Layout `json:"layout"`
	// Mode is the namespace mode provisioned in the label area (fsdax,
	// devdax, raw, sector), empty when none.
	Mode string `json:"mode,omitempty"`
	// UUID is the namespace UUID, empty when none.
	UUID string `json:"uuid,omitempty"`
	// Namespace is the namespace name, empty when none.
	Namespace string `json:"namespace,omitempty"`
	// ReadOnly marks a backing that must only be attached read-only.
	ReadOnly bool `json:"read_only"`
	// Slot is the DIMM slot the labels were written for, NoSlot if none.
	Slot int `json:"slot"`
	// Prealloc records that the blocks were allocated at creation.
	Prealloc bool `json:"prealloc,omitempty"`
	// Created is when the backing was created (UTC).
	Created time.Time `json:"created,omitzero"`
	// Image names the catalogued shared image this file is (see Catalog),
	// empty when it is none. Only a read-only record carries it: WriteMeta
	// drops it from a writable record (a writable copy of an image is no
	// longer that image) and Validate refuses it without read_only. It was
	// added within version 1: records without it read as before, and
	// binaries from before it refuse an image's record with "unknown field
	// \"image\"" rather than misread it.
	Image string `json:"image,omitempty"`
}

// MetaPath is the path of the metadata record of the backing at path.
func MetaPath(path string) string { return path + MetaSuffix }

// ReadMeta reads and validates the metadata record of the backing at path.
// When there is none the error wraps fs.ErrNotExist.
func ReadMeta(path string) (*Meta, error) {
	mp := MetaPath(path)
	f, err := os.Open(mp)
	if err != nil {
		return nil, fmt.Errorf("metadata %s: %w", mp, err)
	}
	defer f.Close()
	buf, err := io.ReadAll(io.LimitReader(f, maxMetaSize+1))
	if err != nil {
		return nil, fmt.Errorf("metadata %s: %w", mp, err)
	}
	if len(buf) > maxMetaSize {
		return nil, fmt.Errorf("metadata %s: larger than %s, not a metadata record", mp, FormatSize(maxMetaSize))
	}
	return ParseMeta(buf, mp)
}

// ParseMeta decodes and validates a metadata record; name is used in
// errors. Unknown fields are refused so a typo is not silently ignored.
func ParseMeta(data []byte, name string) (*Meta, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var m Meta
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("metadata %s: %w", name, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("metadata %s: trailing data after the record", name)
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("metadata %s: %w", name, err)
	}
	return &m, nil
}

// Validate checks a record's fields and that its layout is the one QEMU
// would compute from its backing size, label size and align.
func (m *Meta) Validate() error {
	if m.Version != MetaVersion {
		return fmt.Errorf("field version: %d is not supported (want %d)", m.Version, MetaVersion)
	}
	if !validKind(m.Kind) {
		return fmt.Errorf("field kind: %q is not one of file, dax-file, devdax, pmem-block, memfd", m.Kind)
	}
	switch m.Mode {
	case "", "fsdax", "devdax", "raw", "sector":
	default:
		return fmt.Errorf("field mode: %q is not one of fsdax, devdax, raw, sector", m.Mode)
	}
	if m.Image != "" {
		if err := validImageName(m.Image); err != nil {
			return fmt.Errorf("field image: %w", err)
		}
		if !m.ReadOnly {
			return fmt.Errorf("field image: %q is set but read_only is false: a catalogued image is always read-only", m.Image)
		}
	}
	if m.Slot < NoSlot || m.Slot > 255 {
		return fmt.Errorf("field slot: %d is out of range (-1 for none, 0..255)", m.Slot)
	}
	want, err := LayoutFromBacking(m.Layout.BackingSize, m.Layout.LabelSize, m.Layout.Align)
	if err != nil {
		return fmt.Errorf("field layout: %w", err)
	}
	if want.GuestSize != m.Layout.GuestSize || want.LabelOffset != m.Layout.LabelOffset {
		return fmt.Errorf("field layout: guest_size %d and label_offset %d do not match QEMU's %d and %d for backing_size %d, label_size %d, align %d",
			m.Layout.GuestSize, m.Layout.LabelOffset, want.GuestSize, want.LabelOffset,
			m.Layout.BackingSize, m.Layout.LabelSize, m.Layout.Align)
	}
	return nil
}

// WriteMeta validates m and writes it atomically beside the backing at path.
// A writable record is written without its image marker (m.Image is
// cleared): a writable copy of an image is no longer that image.
func WriteMeta(path string, m *Meta) error {
	if m.Version == 0 {
		m.Version = MetaVersion
	}
	if !m.ReadOnly {
		m.Image = ""
	}
	if err := m.Validate(); err != nil {
		return fmt.Errorf("metadata %s: %w", MetaPath(path), err)
	}
	return atomicfile.WriteJSON(MetaPath(path), m, 0o644)
}

// ReadOnlyReason says why the backing a record describes may only be
// attached read-only, naming the image when it is a catalogued one; it is
// empty for a writable backing. Refusals of writable use quote it.
func (m *Meta) ReadOnlyReason() string {
	switch {
	case m == nil || !m.ReadOnly:
		return ""
	case m.Image != "":
		return fmt.Sprintf("it is the shared read-only image %q (its metadata record says so); attach it read-only, or make a private writable copy with `image clone %s PATH`", m.Image, m.Image)
	default:
		return "its metadata record marks it read-only"
	}
}
