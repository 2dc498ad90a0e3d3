package label

import (
	"errors"
	"fmt"
	"sort"
)

// Severities of a Problem. An area is clean when it has no error and no
// warning; info notes describe normal leftovers (an interrupted update's
// staging block, UPDATING labels).
const (
	SevError   = "error"
	SevWarning = "warning"
	SevInfo    = "info"
)

// Problem codes.
const (
	CodeUnlabelled      = "unlabelled"
	CodeBothInvalid     = "index-both-invalid"
	CodeStagingInvalid  = "index-staging-invalid"
	CodeIndexNSlot      = "index-nslot"
	CodeSlotField       = "label-slot-mismatch"
	CodeLabelChecksum   = "label-checksum"
	CodeLabelAlign      = "label-misaligned"
	CodeDuplicateUUID   = "duplicate-uuid"
	CodeOverlap         = "dpa-overlap"
	CodeBeyondDIMM      = "label-beyond-dimm"
	CodeCookie          = "cookie-mismatch"
	CodeTypeGUID        = "type-guid"
	CodeAbstractionGUID = "abstraction-guid"
	CodeInterleave      = "interleave"
	CodeLocal           = "local-label"
	CodeUpdating        = "updating"
)

// Problem is one finding of Check.
type Problem struct {
	Severity string `json:"severity"`
	Code     string `json:"code"`
	// Where names the place: "index block 1 (offset 256)", "slot 5
	// (offset 1152)".
	Where   string `json:"where"`
	Message string `json:"message"`
	// Slot is the label slot concerned, -1 for none.
	Slot int64 `json:"slot"`
	// Repairable reports whether Repair fixes it.
	Repairable bool `json:"repairable"`
}

func (p Problem) String() string {
	return fmt.Sprintf("%s: %s: %s [%s]", p.Severity, p.Where, p.Message, p.Code)
}

// CheckOptions give Check what the area alone does not say.
type CheckOptions struct {
	// Cookies are the DIMM slot's interleave-set cookies; nil skips the
	// cookie check.
	Cookies *Cookies
	// DIMMSize is the mapped DPA range [0, DIMMSize); 0 skips the bound
	// check.
	DIMMSize uint64
}

// Clean reports whether probs holds no error and no warning.
func Clean(probs []Problem) bool {
	for _, p := range probs {
		if p.Severity != SevInfo {
			return false
		}
	}
	return true
}

type where string

func (w where) String() string { return string(w) }

// lazyWhere formats a slot's place only when a problem is reported.
type lazyWhere struct {
	a *Area
	k uint32
}

func (w lazyWhere) String() string {
	return fmt.Sprintf("slot %d (offset %d)", w.k, w.a.Geometry.SlotOffset(w.k))
}

// Check diagnoses every inconsistency Linux would trip over.
func Check(a *Area, o CheckOptions) []Problem {
	var out []Problem
	add := func(sev, code string, where fmt.Stringer, slot int64, rep bool, format string, args ...any) {
		out = append(out, Problem{Severity: sev, Code: code, Where: where.String(), Slot: slot, Repairable: rep, Message: fmt.Sprintf(format, args...)})
	}
	if !a.Labelled {
		if a.Blank() {
			add(SevInfo, CodeUnlabelled, where("area"), -1, false, "area is blank: no index blocks (run label init; Linux treats the DIMM as unlabelled)")
		} else if a.onlyFirstIndexDirty() {
			add(SevInfo, CodeUnlabelled, where("area"), -1, false, "no valid index block and nothing but a partial first index block (an interrupted init); Linux treats the DIMM as unlabelled: %v", errors.Join(a.Probe...))
		} else {
			add(SevError, CodeBothInvalid, where("area"), -1, false, "both index blocks are invalid, so Linux ignores every label: %v", errors.Join(a.Probe...))
		}
		return out
	}
	g := a.Geometry
	c := a.Current
	if b := a.Blocks[1-c]; b.Err != nil {
		add(SevInfo, CodeStagingInvalid, where(fmt.Sprintf("index block %d (offset %d)", 1-c, b.Offset)), -1, true,
			"staging block invalid (%v); block %d is current, so this is the leftover of an interrupted update", b.Err, c)
	}
	cur := a.CurrentIndex()
	if cur.NSlot != g.NSlot {
		add(SevWarning, CodeIndexNSlot, where(fmt.Sprintf("index block %d (offset %d)", c, a.Blocks[c].Offset)), -1, false,
			"nslot %d, but a %d-byte area holds %d %d-byte labels", cur.NSlot, g.AreaSize, g.NSlot, g.LabelSize)
	}
	v := a.Version()
	type owner struct {
		uuid UUID
		slot uint32
		ext  Extent
	}
	var valid []owner
	seen := map[[2]uint64]uint32{} // uuid half-hash + position -> slot
	for _, s := range a.LiveSlots() {
		w := lazyWhere{a, s.Slot}
		k := int64(s.Slot)
		l := &s.Label
		if s.Err != nil {
			code := CodeLabelChecksum
			switch {
			case l.Slot != s.Slot:
				code = CodeSlotField
			case (l.DPA|l.RawSize)%4096 != 0:
				code = CodeLabelAlign
			}
			add(SevError, code, w, k, true, "live label is invalid, Linux skips it: %v", s.Err)
			continue
		}
		key := [2]uint64{leUint64(l.UUID[:8]) ^ uint64(l.Position)<<1, leUint64(l.UUID[8:])}
		if prev, dup := seen[key]; dup {
			add(SevError, CodeDuplicateUUID, w, k, true, "uuid %s position %d is also live in slot %d", l.UUID, l.Position, prev)
			continue
		}
		seen[key] = s.Slot
		end := l.DPA + l.RawSize
		if o.DIMMSize != 0 && (end < l.DPA || end > o.DIMMSize) {
			add(SevError, CodeBeyondDIMM, w, k, true, "dpa range [%#x, %#x) of %q lies beyond the %d-byte DIMM; Linux ignores it", l.DPA, end, l.NameString(), o.DIMMSize)
		}
		if o.Cookies != nil {
			want := o.Cookies.For(v)
			if l.ISetCookie != want {
				hint := "it was written for another DIMM slot"
				if other := o.Cookies.For(otherVersion(v)); l.ISetCookie == other {
					hint = fmt.Sprintf("it is the v%s cookie of this slot", otherVersion(v))
				}
				add(SevError, CodeCookie, w, k, true, "isetcookie %#016x of %q is not this slot's v%s cookie %#016x (%s); Linux silently ignores the label (label retarget fixes it)",
					l.ISetCookie, l.NameString(), v, want, hint)
			}
		}
		if v == V12 {
			if l.TypeGUID != PMemTypeGUID {
				add(SevError, CodeTypeGUID, w, k, false, "type_guid %s is not the persistent-memory GUID %s; Linux ignores the label", l.TypeGUID, PMemTypeGUID)
			}
			if GUIDMode(l.AbstractionGUID) == "" {
				add(SevWarning, CodeAbstractionGUID, w, k, false, "unknown abstraction_guid %s (claim class)", l.AbstractionGUID)
			}
		}
		if l.NLabel != 1 || l.Position != 0 {
			add(SevWarning, CodeInterleave, w, k, false, "nlabel %d position %d: QEMU regions have one DIMM, so Linux expects nlabel 1 position 0", l.NLabel, l.Position)
		}
		if l.Flags&FlagLocal != 0 {
			add(SevWarning, CodeLocal, w, k, false, "LOCAL flag set: a blk label, which pmem regions ignore")
		}
		if l.Flags&FlagUpdating != 0 {
			add(SevInfo, CodeUpdating, w, k, false, "UPDATING flag set: an update of %q was interrupted; the namespace is usable", l.NameString())
		}
		valid = append(valid, owner{l.UUID, s.Slot, Extent{l.DPA, l.RawSize}})
	}
	sort.Slice(valid, func(i, j int) bool { return valid[i].ext.Start < valid[j].ext.Start })
	for i := 1; i < len(valid); i++ {
		p, q := valid[i-1], valid[i]
		if p.uuid != q.uuid && q.ext.Start < p.ext.Start+p.ext.Size {
			add(SevError, CodeOverlap, lazyWhere{a, q.slot}, int64(q.slot), false,
				"dpa range [%#x, %#x) overlaps slot %d [%#x, %#x) of another namespace",
				q.ext.Start, q.ext.Start+q.ext.Size, p.slot, p.ext.Start, p.ext.Start+p.ext.Size)
		}
	}
	return out
}

func otherVersion(v Version) Version {
	if v == V11 {
		return V12
	}
	return V11
}

func leUint64(b []byte) uint64 {
	var v uint64
	for i := 7; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

// RepairReport says what Repair did.
type RepairReport struct {
	Freed     []uint32  `json:"freed_slots"`
	Retarget  int       `json:"retargeted_namespaces"`
	Staging   bool      `json:"rewrote_staging_index"`
	Remaining []Problem `json:"remaining"`
}

// Repair fixes what Check marks repairable: live labels Linux would skip
// (bad checksum, wrong slot field, misaligned, duplicate, beyond the
// DIMM) are freed and labels with another slot's cookie are retargeted,
// all in one crash-safe update (new labels into free slots, then one
// staging-index write), so a crash leaves the area as it was or fully
// repaired. If nothing else needed writing, an invalid staging index is
// rewritten as a copy of the current one (with the preceding sequence
// number, so the current block stays current); an update rewrites it
// anyway.
func (e *Editor) Repair(o CheckOptions) (RepairReport, error) {
	var r RepairReport
	if !e.area.Labelled {
		r.Remaining = Check(e.area, o)
		return r, nil
	}
	var free []uint32
	cookieBad := false
	for _, p := range Check(e.area, o) {
		if !p.Repairable {
			continue
		}
		switch p.Code {
		case CodeSlotField, CodeLabelChecksum, CodeLabelAlign, CodeDuplicateUUID, CodeBeyondDIMM:
			free = append(free, uint32(p.Slot))
		case CodeCookie:
			cookieBad = true
		}
	}
	switch {
	case cookieBad && o.Cookies != nil:
		n, err := e.retargetAnd(*o.Cookies, free)
		if err != nil {
			return r, fmt.Errorf("repairing (freeing %d invalid label(s) and retargeting cookies in one update): %w", len(free), err)
		}
		r.Freed, r.Retarget = free, n
	case len(free) > 0:
		if _, err := e.commit(nil, free); err != nil {
			return r, fmt.Errorf("freeing invalid labels: %w", err)
		}
		r.Freed = free
	}
	a := e.area
	if a.Blocks[1-a.Current].Err != nil {
		c := a.Current
		x := a.CurrentIndex().clone()
		x.Seq = prevSeq(x.Seq)
		x.MyOff, x.OtherOff = uint64(a.Geometry.IndexOffset(1-c)), uint64(a.Geometry.IndexOffset(c))
		x.Seal()
		if err := e.writeIndex(x, a.Geometry, 1-c); err != nil {
			return r, err
		}
		if err := e.reparse(); err != nil {
			return r, err
		}
		r.Staging = true
	}
	r.Remaining = Check(e.area, o)
	return r, nil
}

// onlyFirstIndexDirty reports whether every non-zero byte lies inside
// index block 0 of one of the geometries: what a torn init leaves.
func (a *Area) onlyFirstIndexDirty() bool {
	last := -1
	for i := len(a.raw) - 1; i >= 0; i-- {
		if a.raw[i] != 0 {
			last = i
			break
		}
	}
	for _, z := range []int{LabelSizeV11, LabelSizeV12} {
		if g, err := NewGeometry(a.Size, z); err == nil && int64(last) < g.IndexSize {
			return true
		}
	}
	return false
}
