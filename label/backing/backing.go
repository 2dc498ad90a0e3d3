// Package backing owns the label side of a backing store: its label area
// opened for reading or editing (the label tail of a memfile backing, or a
// bare label-area file), the PFN/DAX info blocks in its guest data, and
// the namespace and DIMM slot recorded in its metadata.
//
// It composes package label (area codec and crash-safe editor), memfile
// (open, lock, map, metadata record) and acpi (QEMU's interleave-set
// cookies for a DIMM slot), so that the CLI and the daemon make one call
// per operation. It lives under label/ rather than in it because memfile
// imports label (for image info blocks); label itself stays free of
// memfile and acpi.
//
// Every operation keeps label's crash-safety: the editor changes the area
// with the kernel's update order (one index update per destroy, retarget
// or repair; UPDATING then final for create and rename), the info block of
// a new namespace is written into space no label owns before its labels,
// and the metadata record is replaced atomically after the labels.
package backing

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/nvdimm-backend/nvdimm-backend/acpi"
	"github.com/nvdimm-backend/nvdimm-backend/label"
	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

// Options say where the label area is and how it is opened.
type Options struct {
	// LabelSize makes the label area the last LabelSize bytes of a file
	// without a metadata record. A value the record contradicts is
	// refused.
	LabelSize uint64
	// AreaOnly opens the path as a bare label area (no guest data, no
	// metadata, no lock).
	AreaOnly bool
	// DIMMSize is the guest-visible DIMM size; 0 takes it from the
	// backing. A bare area needs it to place or bound-check namespaces.
	DIMMSize uint64
	// Slot is the DIMM slot whose interleave-set cookies labels carry;
	// memfile.NoSlot (-1) takes the slot recorded in the metadata (none
	// known without a record).
	Slot int
	// Write opens for editing: read-write and, for a backing, under its
	// exclusive lock.
	Write bool
	// Force edits even though another user (a running VM) holds the
	// backing's lock.
	Force bool
}

// Area is an opened label area and, for a backing, its guest data and
// metadata record. It is not safe for concurrent use.
type Area struct {
	path     string
	dev      label.Device
	size     int64
	b        *memfile.Backing // nil for a bare area
	meta     *memfile.Meta    // the record as last written; nil if none
	dimmSize uint64
	slot     int // -1: unknown
	close    func() error
}

// Open opens the label area at path: a backing (its metadata record, or
// Options.LabelSize, gives the area) or, with Options.AreaOnly, a bare
// area file. With Options.Write a backing another user holds is refused
// with memfile's error (errors.Is memfile.ErrLocked) unless
// Options.Force.
func Open(path string, o Options) (*Area, error) {
	if o.AreaOnly {
		flag := os.O_RDONLY
		if o.Write {
			flag = os.O_RDWR
		}
		f, err := os.OpenFile(path, flag, 0)
		if err != nil {
			return nil, err
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, err
		}
		return &Area{path: path, dev: syncFile{f}, size: fi.Size(), dimmSize: o.DIMMSize, slot: o.Slot, close: f.Close}, nil
	}
	// A backing: its guest data as OpenData opens it, plus the label
	// area.
	a, err := OpenData(path, o)
	if err != nil {
		return nil, err
	}
	la, err := a.b.LabelArea()
	if err != nil {
		a.Close()
		return nil, err
	}
	a.dev, a.size = la, la.Size()
	return a, nil
}

// OpenData opens the backing at path for its guest data only (a label
// area is not needed): for reading and writing info blocks.
func OpenData(path string, o Options) (*Area, error) {
	if o.AreaOnly {
		return nil, fmt.Errorf("%s: %w", path, ErrNoData)
	}
	b, err := openBacking(path, o)
	if err != nil {
		return nil, err
	}
	return newArea(b, o), nil
}

// ErrNoData means the operation needs guest data and the path is only a
// label area.
var ErrNoData = errors.New("no guest data: the path is only a label area")

func openBacking(path string, o Options) (*memfile.Backing, error) {
	oo := memfile.OpenOptions{ReadOnly: !o.Write, LabelSize: o.LabelSize}
	b, err := memfile.Open(path, oo)
	if err != nil {
		return nil, err
	}
	// A label size the metadata record contradicts is refused, not
	// silently replaced by the recorded one.
	if err := b.CheckOptions(oo); err != nil {
		b.Close()
		return nil, err
	}
	if o.Write {
		if err := lockForEdit(b, o.Force); err != nil {
			b.Close()
			return nil, err
		}
	}
	return b, nil
}

// lockForEdit takes the backing's exclusive lock; a backing another user
// (a running VM) holds is refused unless force. memfile's error already
// says who holds it and to stop it.
func lockForEdit(b *memfile.Backing, force bool) error {
	err := b.Lock(memfile.LockExclusive, false)
	if err == nil || (force && errors.Is(err, memfile.ErrLocked)) {
		return nil
	}
	return err
}

func newArea(b *memfile.Backing, o Options) *Area {
	a := &Area{path: b.Path(), b: b, dimmSize: o.DIMMSize, slot: o.Slot, close: b.Close}
	if a.dimmSize == 0 {
		a.dimmSize = b.Layout().GuestSize
	}
	if m := b.Meta(); m != nil {
		mm := *m
		a.meta = &mm
		if a.slot < 0 {
			a.slot = m.Slot
		}
	}
	if a.slot < 0 {
		a.slot = -1
	}
	return a
}

// Close releases the area (and the backing's lock).
func (a *Area) Close() error { return a.close() }

// Path is the path the area was opened from.
func (a *Area) Path() string { return a.path }

// Backing is the opened backing, nil for a bare area.
func (a *Area) Backing() *memfile.Backing { return a.b }

// Meta is the backing's metadata record as this Area last wrote it, nil
// for a bare area or a backing without one. Do not modify it.
func (a *Area) Meta() *memfile.Meta { return a.meta }

// DIMMSize is the guest-visible DIMM size (0: unknown, a bare area
// without Options.DIMMSize).
func (a *Area) DIMMSize() uint64 { return a.dimmSize }

// Slot is the DIMM slot labels are written and checked for, -1 if
// unknown.
func (a *Area) Slot() int { return a.slot }

// Size is the label area size in bytes (0 for OpenData).
func (a *Area) Size() int64 { return a.size }

// Cookies are the interleave-set cookies QEMU gives the DIMM in Slot;
// nil if the slot is unknown.
func (a *Area) Cookies() *label.Cookies {
	if a.slot < 0 {
		return nil
	}
	v11, v12 := acpi.QEMUSlotCookies(a.slot)
	return &label.Cookies{V11: v11, V12: v12}
}

// needLabels refuses an Area OpenData opened: it has no label area.
func (a *Area) needLabels() error {
	if a.dev == nil {
		return fmt.Errorf("%s: opened for its data only, not its label area", a.path)
	}
	return nil
}

func (a *Area) editor() (*label.Editor, error) {
	if err := a.needLabels(); err != nil {
		return nil, err
	}
	return label.NewEditor(a.dev, a.size)
}

// find opens the editor and finds the namespace sel chooses.
func (a *Area) find(sel Selector) (*label.Editor, *label.Namespace, error) {
	e, err := a.editor()
	if err != nil {
		return nil, nil, err
	}
	ns, err := e.Area().FindNamespace(sel.UUID, sel.Name)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", a.path, err)
	}
	return e, ns, nil
}

func (a *Area) parse() (*label.Area, error) {
	if err := a.needLabels(); err != nil {
		return nil, err
	}
	la, err := label.Parse(a.dev, a.size)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", a.path, err)
	}
	return la, nil
}

// syncFile adds Sync to a bare area file.
type syncFile struct{ *os.File }

func (s syncFile) Sync() error { return unix.Fdatasync(int(s.Fd())) }

// recordMeta stores the namespace (and the slot, if known) in the
// backing's metadata record; with clear it forgets the recorded namespace
// if it is uuid. Bare areas and backings without a record have nothing
// to update.
func (a *Area) recordMeta(name, mode string, uuid label.UUID, clear bool) error {
	if a.meta == nil {
		return nil
	}
	m := *a.meta
	if clear {
		if m.UUID != uuid.String() {
			return nil
		}
		m.Namespace, m.Mode, m.UUID = "", "", ""
	} else {
		m.Namespace, m.Mode, m.UUID = name, mode, uuid.String()
		if a.slot >= 0 {
			m.Slot = a.slot
		}
	}
	return a.writeMeta(&m)
}

// recordSlot stores slot in the metadata record if it says otherwise.
func (a *Area) recordSlot(slot int) error {
	if a.meta == nil || a.meta.Slot == slot {
		return nil
	}
	m := *a.meta
	m.Slot = slot
	return a.writeMeta(&m)
}

func (a *Area) writeMeta(m *memfile.Meta) error {
	if err := memfile.WriteMeta(a.path, m); err != nil {
		return err
	}
	a.meta = m
	return nil
}

// Init writes two empty index blocks (see label.Editor.Init). If it
// re-initialised a labelled area, the namespace the metadata records is
// gone and is forgotten. It returns the new geometry. An area that is
// already labelled without o.Force is refused with label.ErrLabelled.
func (a *Area) Init(o label.InitOptions) (label.Geometry, error) {
	e, err := a.editor()
	if err != nil {
		return label.Geometry{}, err
	}
	if err := e.Init(o); err != nil {
		return label.Geometry{}, fmt.Errorf("%s: %w", a.path, err)
	}
	if m := a.meta; m != nil && m.UUID != "" {
		if u, err := label.ParseUUID(m.UUID); err == nil {
			if err := a.recordMeta("", "", u, true); err != nil {
				return label.Geometry{}, err
			}
		}
	}
	return e.Area().Geometry, nil
}

// Selector chooses a namespace: by UUID, or by Name if UUID is zero.
type Selector struct {
	UUID label.UUID
	Name string
}

// Destroy frees every label of the chosen namespace in one index update
// and forgets it in the metadata record if recorded there. It returns
// the namespace as it was.
func (a *Area) Destroy(sel Selector) (*label.Namespace, error) {
	e, ns, err := a.find(sel)
	if err != nil {
		return nil, err
	}
	if err := e.Destroy(ns.UUID); err != nil {
		return nil, fmt.Errorf("%s: %w", a.path, err)
	}
	if err := a.recordMeta("", "", ns.UUID, true); err != nil {
		return nil, err
	}
	return ns, nil
}

// Rename gives the chosen namespace the name to, and updates the
// metadata record if it records that namespace. It returns the namespace
// as it was (its old name).
func (a *Area) Rename(sel Selector, to string) (*label.Namespace, error) {
	e, ns, err := a.find(sel)
	if err != nil {
		return nil, err
	}
	if err := e.Rename(ns.UUID, to); err != nil {
		return nil, fmt.Errorf("%s: %w", a.path, err)
	}
	if m := a.meta; m != nil && m.UUID == ns.UUID.String() {
		if err := a.recordMeta(to, m.Mode, ns.UUID, false); err != nil {
			return nil, err
		}
	}
	return ns, nil
}

// Retarget rewrites the interleave-set cookies of every namespace for
// DIMM slot (one index update for the whole area), records the slot in
// the metadata and makes it the Area's slot. It returns how many
// namespaces were rewritten.
func (a *Area) Retarget(slot int) (int, error) {
	if slot < 0 {
		return 0, fmt.Errorf("%s: retarget: DIMM slot %d", a.path, slot)
	}
	e, err := a.editor()
	if err != nil {
		return 0, err
	}
	a.slot = slot
	n, err := e.Retarget(*a.Cookies())
	if err != nil {
		return 0, fmt.Errorf("%s: %w", a.path, err)
	}
	if err := a.recordSlot(slot); err != nil {
		return 0, err
	}
	return n, nil
}

// CheckResult is the outcome of Check (`label check --json`).
type CheckResult struct {
	Clean    bool                `json:"clean"`
	Slot     int                 `json:"slot"`
	Problems []label.Problem     `json:"problems"`
	Repair   *label.RepairReport `json:"repair,omitempty"`
}

// Check diagnoses the area against the Area's slot cookies (skipped if
// the slot is unknown) and DIMM size. With repair (the Area must be open
// for writing) it first fixes what can be fixed in one crash-safe update;
// if that retargeted labels, the metadata records the slot. A result that
// is not clean is not an error.
func (a *Area) Check(repair bool) (*CheckResult, error) {
	co := label.CheckOptions{Cookies: a.Cookies(), DIMMSize: a.dimmSize}
	res := &CheckResult{Slot: a.slot}
	if repair {
		e, err := a.editor()
		if err != nil {
			return nil, err
		}
		r, err := e.Repair(co)
		if err != nil {
			return nil, fmt.Errorf("%s: repair: %w", a.path, err)
		}
		res.Repair, res.Problems = &r, r.Remaining
		// Cookies now follow the slot: record it, as Retarget does.
		if r.Retarget > 0 {
			if err := a.recordSlot(a.slot); err != nil {
				return nil, err
			}
		}
	} else {
		la, err := a.parse()
		if err != nil {
			return nil, err
		}
		res.Problems = label.Check(la, co)
	}
	if res.Problems == nil {
		res.Problems = []label.Problem{}
	}
	res.Clean = label.Clean(res.Problems)
	return res, nil
}

// dataRW reads and writes the guest-visible region of a backing.
type dataRW interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
}

type mapRW struct{ m []byte }

func (r mapRW) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(r.m)) {
		return 0, io.EOF
	}
	return copy(p, r.m[off:]), nil
}

func (r mapRW) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(r.m)) {
		return 0, io.ErrShortWrite
	}
	return copy(r.m[off:], p), nil
}

func (r mapRW) Sync() error { return unix.Msync(r.m, unix.MS_SYNC) }

type fileRW struct {
	f     *os.File
	limit int64
}

func (r fileRW) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > r.limit {
		return 0, io.EOF
	}
	return r.f.ReadAt(p, off)
}

func (r fileRW) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > r.limit {
		return 0, fmt.Errorf("write of %d bytes at %d beyond the %d-byte guest region", len(p), off, r.limit)
	}
	return r.f.WriteAt(p, off)
}

func (r fileRW) Sync() error { return unix.Fdatasync(int(r.f.Fd())) }

// withData runs fn over the guest-visible region of b: file I/O, or a
// mapping for a devdax device.
func withData(b *memfile.Backing, write bool, fn func(rw dataRW) error) error {
	guest := int64(b.Layout().GuestSize)
	if b.Kind() == memfile.KindDevDAX {
		m, unmap, err := memfile.Map(b, !write)
		if err != nil {
			return err
		}
		err = fn(mapRW{m[:guest]})
		if uerr := unmap(); err == nil {
			err = uerr
		}
		return err
	}
	return fn(fileRW{b.File(), guest})
}

// data runs fn over the guest data of the backing (ErrNoData for a bare
// area).
func (a *Area) data(write bool, fn func(rw dataRW) error) error {
	if a.b == nil {
		return ErrNoData
	}
	return withData(a.b, write, fn)
}
