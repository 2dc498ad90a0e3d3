package memfile

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// QEMUArgOptions selects how a backing is attached to a guest.
type QEMUArgOptions struct {
	// ID names the device; the memory backend is "mem-" + ID. Default "nv0".
	ID string
	// VirtioPMEM attaches a virtio-pmem-pci device instead of an nvdimm.
	VirtioPMEM bool
	// ReadOnly attaches read-only: readonly=on on the backend and
	// unarmed=on on the nvdimm.
	ReadOnly bool
	// Slot is the nvdimm slot; a negative value means "not given" (the slot
	// recorded in the metadata is then used, if any). Labels are written
	// for one slot: attaching in another makes the guest ignore them.
	Slot int
	// RAM is the guest's RAM size used for maxmem; 0 means 1 GiB.
	RAM uint64
	// Slots is the number of memory slots; 0 means 4 (or enough for Slot).
	Slots int
}

// QEMUArgs are the QEMU command-line pieces that attach one backing.
type QEMUArgs struct {
	// Object is the -object value (memory-backend-file,...).
	Object string `json:"object"`
	// Device is the -device value (nvdimm,... or virtio-pmem-pci,...).
	Device string `json:"device"`
	// Machine are -machine properties the device needs ("nvdimm=on").
	Machine []string `json:"machine"`
	// Memory is the -m value with the slots and maxmem the device needs.
	Memory string `json:"memory"`
	// Argv is all of it as arguments, in order.
	Argv []string `json:"argv"`
	// Warnings are what the guest would complain about.
	Warnings []string `json:"warnings,omitempty"`
}

// QEMUTarget is what QEMUArgs needs to know about a backing; QEMUArgsFor
// fills it from an open Backing, QEMUArgsForMeta from a metadata record.
type QEMUTarget struct {
	Path     string
	Kind     string
	Layout   Layout
	DAX      bool // real persistent memory mapped directly: pmem=on
	ReadOnly bool // the backing must only be attached read-only
	Slot     int  // slot the labels were written for, NoSlot if none
}

// QEMUArgsFor builds the arguments for an open backing.
func QEMUArgsFor(b *Backing, o QEMUArgOptions) (QEMUArgs, error) {
	t := QEMUTarget{
		Path: b.path, Kind: b.kind, Layout: b.layout,
		DAX:      b.PMem(),
		ReadOnly: b.readOnly, Slot: NoSlot,
	}
	if b.meta != nil {
		t.ReadOnly = t.ReadOnly || b.meta.ReadOnly
		t.Slot = b.meta.Slot
	}
	return BuildQEMUArgs(t, o)
}

// QEMUArgsForMeta builds the arguments from a metadata record alone (the
// daemon uses it for backings it does not hold open).
func QEMUArgsForMeta(path string, m *Meta, o QEMUArgOptions) (QEMUArgs, error) {
	return BuildQEMUArgs(QEMUTarget{
		Path: path, Kind: m.Kind, Layout: m.Layout,
		DAX:      m.Kind == KindDevDAX || m.Kind == KindDAXFile,
		ReadOnly: m.ReadOnly, Slot: m.Slot,
	}, o)
}

// validID reports whether s is a QEMU identifier: a letter followed by
// letters, digits, '-', '.' and '_'.
func validID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i, c := range s {
		letter := (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
		if i == 0 && !letter {
			return false
		}
		if !letter && !(c >= '0' && c <= '9') && c != '-' && c != '.' && c != '_' {
			return false
		}
	}
	return true
}

// qemuSize renders n with QEMU's binary suffixes when exact, else in bytes.
func qemuSize(n uint64) string {
	for _, u := range []struct {
		div uint64
		s   string
	}{{TiB, "T"}, {GiB, "G"}, {MiB, "M"}, {KiB, "K"}} {
		if n >= u.div && n%u.div == 0 {
			return strconv.FormatUint(n/u.div, 10) + u.s
		}
	}
	return strconv.FormatUint(n, 10)
}

// qemuEscape doubles commas, QEMU's escape inside an option value.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// BuildQEMUArgs builds the -object/-device/-machine/-m arguments for t.
func BuildQEMUArgs(t QEMUTarget, o QEMUArgOptions) (QEMUArgs, error) {
	id := o.ID
	if id == "" {
		id = "nv0"
	}
	if !validID(id) {
		return QEMUArgs{}, fmt.Errorf("device id %q: QEMU ids start with a letter and contain only letters, digits, '-', '.' and '_'", id)
	}
	if t.Path == "" || strings.ContainsAny(t.Path, "\x00\n") {
		return QEMUArgs{}, fmt.Errorf("backing path %q cannot be passed to QEMU", t.Path)
	}
	if !filepath.IsAbs(t.Path) {
		// QEMU resolves mem-path against its own working directory.
		abs, err := filepath.Abs(t.Path)
		if err != nil {
			return QEMUArgs{}, fmt.Errorf("backing path %q: %w", t.Path, err)
		}
		t.Path = abs
	}
	l := t.Layout
	if t.ReadOnly && !o.ReadOnly {
		return QEMUArgs{}, fmt.Errorf("backing %s is read-only: a writable attach would let the guest change a shared image; attach it read-only (--readonly)", t.Path)
	}
	size := l.BackingSize
	var warnings []string
	if o.VirtioPMEM {
		if err := CheckVirtioPMEM(t.Path, l, o.ReadOnly); err != nil {
			return QEMUArgs{}, err
		}
	} else {
		warnings = append(warnings, l.Warnings...)
	}
	slot := t.Slot
	if o.Slot >= 0 {
		if o.Slot > 255 {
			return QEMUArgs{}, fmt.Errorf("slot %d: out of range 0..255", o.Slot)
		}
		if t.Slot >= 0 && t.Slot != o.Slot && l.LabelSize != 0 {
			return QEMUArgs{}, fmt.Errorf("backing %s: its labels were written for slot %d; in slot %d the guest computes another interleave-set cookie and ignores them",
				t.Path, t.Slot, o.Slot)
		}
		slot = o.Slot
	}

	obj := []string{"memory-backend-file", "id=mem-" + id, "mem-path=" + qemuEscape(t.Path),
		"size=" + qemuSize(size), "share=on", "align=" + qemuSize(l.Align)}
	if t.DAX {
		obj = append(obj, "pmem=on")
	}
	if o.ReadOnly {
		obj = append(obj, "readonly=on")
	}
	var dev []string
	var machine []string
	if o.VirtioPMEM {
		dev = []string{"virtio-pmem-pci", "id=" + id, "memdev=mem-" + id}
	} else {
		dev = []string{"nvdimm", "id=" + id, "memdev=mem-" + id}
		if l.LabelSize != 0 {
			dev = append(dev, "label-size="+qemuSize(l.LabelSize))
		}
		if o.ReadOnly {
			dev = append(dev, "unarmed=on")
		}
		if slot >= 0 {
			dev = append(dev, "slot="+strconv.Itoa(slot))
		}
		machine = []string{"nvdimm=on"}
	}
	ram := o.RAM
	if ram == 0 {
		ram = GiB
	}
	slots := o.Slots
	if slots <= 0 {
		slots = 4
	}
	if slot >= slots {
		slots = slot + 1
	}
	// maxmem must cover RAM plus every device; round up so that the
	// device's alignment padding fits too.
	maxmem := ram + size + l.Align
	maxmem = (maxmem + GiB - 1) &^ (GiB - 1)
	memory := fmt.Sprintf("%s,slots=%d,maxmem=%s", qemuSize(ram), slots, qemuSize(maxmem))
	a := QEMUArgs{
		Object:   strings.Join(obj, ","),
		Device:   strings.Join(dev, ","),
		Machine:  machine,
		Memory:   memory,
		Warnings: warnings,
	}
	if len(machine) > 0 {
		a.Argv = append(a.Argv, "-machine", strings.Join(machine, ","))
	}
	a.Argv = append(a.Argv, "-m", memory, "-object", a.Object, "-device", a.Device)
	return a, nil
}
