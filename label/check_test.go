package label

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

func populated(t *testing.T, v Version) *memDev {
	t.Helper()
	d := &memDev{b: make([]byte, 128<<10)}
	e, err := NewEditor(d, int64(len(d.b)))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Init(InitOptions{Version: v}); err != nil {
		t.Fatal(err)
	}
	for _, s := range []NamespaceSpec{
		{UUID: uuidA, Name: "a", Size: 64 << 20, Mode: ModeFSDAX},
		{UUID: uuidB, Name: "b", Size: 32 << 20, Mode: ModeDevDAX},
	} {
		s.DIMMSize, s.Cookies = 512<<20, slot0Cookies
		if _, err := e.Create(s); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func codes(ps []Problem) string {
	var c []string
	for _, p := range ps {
		if p.Severity != SevInfo {
			c = append(c, p.Code)
		}
	}
	return strings.Join(c, ",")
}

// TestCheckFindsAndRepairs corrupts a clean area one way at a time and
// checks the diagnosis, then repairs where possible.
func TestCheckFindsAndRepairs(t *testing.T) {
	o := CheckOptions{Cookies: &slot0Cookies, DIMMSize: 512 << 20}
	liveSlot := func(d *memDev, name string) (uint32, int64) {
		a, _ := ParseBytes(d.b)
		ns, err := a.FindNamespace(UUID{}, name)
		if err != nil {
			t.Fatal(err)
		}
		return ns.Labels[0].Slot, ns.Labels[0].Offset
	}
	for _, c := range []struct {
		name, want string
		v          Version
		corrupt    func(d *memDev)
		opts       CheckOptions
		repairable bool
	}{
		{"checksum", CodeLabelChecksum, V12, func(d *memDev) { _, off := liveSlot(d, "a"); d.b[off+20] ^= 1 }, o, true},
		{"slot-field", CodeSlotField, V11, func(d *memDev) {
			_, off := liveSlot(d, "a")
			binary.LittleEndian.PutUint32(d.b[off+120:], 77)
		}, o, true},
		{"beyond-dimm", CodeBeyondDIMM, V11, nil, CheckOptions{Cookies: &slot0Cookies, DIMMSize: 80 << 20}, true},
		{"other-slot", CodeCookie, V12, nil, CheckOptions{Cookies: &slot1Cookies, DIMMSize: 512 << 20}, true},
		{"overlap", CodeOverlap, V11, func(d *memDev) {
			_, off := liveSlot(d, "b")
			binary.LittleEndian.PutUint64(d.b[off+104:], 0) // dpa of b onto a
		}, o, false},
		{"duplicate", CodeDuplicateUUID, V11, func(d *memDev) {
			ka, offA := liveSlot(d, "a")
			kb, offB := liveSlot(d, "b")
			copy(d.b[offB:offB+128], d.b[offA:offA+128])
			binary.LittleEndian.PutUint32(d.b[offB+120:], kb)
			_ = ka
		}, o, true},
		{"both-index", CodeBothInvalid, V12, func(d *memDev) { d.b[100] ^= 1; d.b[256+100] ^= 1 }, o, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := populated(t, c.v)
			if c.corrupt != nil {
				c.corrupt(d)
			}
			a, _ := ParseBytes(d.b)
			ps := Check(a, c.opts)
			if !strings.Contains(codes(ps), c.want) {
				t.Fatalf("check found %q, want %s: %v", codes(ps), c.want, ps)
			}
			for _, p := range ps {
				if p.Code == c.want && (p.Where == "" || p.Message == "") {
					t.Errorf("problem without place or message: %+v", p)
				}
			}
			before := append([]byte(nil), d.b...)
			_ = Check(a, c.opts)
			if string(before) != string(d.b) {
				t.Fatal("check wrote to the area")
			}
			e, _ := NewEditor(d, int64(len(d.b)))
			r, err := e.Repair(c.opts)
			if err != nil {
				t.Fatal(err)
			}
			if c.repairable && !Clean(r.Remaining) {
				t.Errorf("after repair: %v", r.Remaining)
			}
			if !c.repairable && strings.Contains(codes(r.Remaining), c.want) == false {
				t.Errorf("unrepairable %s vanished: %v", c.want, r.Remaining)
			}
		})
	}
}

func TestStagingRepair(t *testing.T) {
	d := populated(t, V12)
	a, _ := ParseBytes(d.b)
	stage := 1 - a.Current
	d.b[a.Blocks[stage].Offset+30] ^= 0xff
	a, _ = ParseBytes(d.b)
	ps := Check(a, CheckOptions{})
	if !Clean(ps) || len(ps) == 0 || ps[0].Code != CodeStagingInvalid {
		t.Fatalf("staging damage: %v", ps)
	}
	e, _ := NewEditor(d, int64(len(d.b)))
	r, err := e.Repair(CheckOptions{})
	if err != nil || !r.Staging {
		t.Fatalf("%+v %v", r, err)
	}
	a, _ = ParseBytes(d.b)
	if a.Blocks[0].Err != nil || a.Blocks[1].Err != nil || len(a.Namespaces()) != 2 || a.Current != 1-stage {
		t.Fatalf("after repair: %+v current %d", a.Blocks, a.Current)
	}
}

func TestEditorOps(t *testing.T) {
	for _, v := range []Version{V11, V12} {
		d := populated(t, v)
		e, _ := NewEditor(d, int64(len(d.b)))
		ns, err := e.Area().FindNamespace(uuidB, "")
		if err != nil || ns.DPA() != 64<<20 || ns.Size != 32<<20 {
			t.Fatalf("b placed at %d size %d: %v", ns.DPA(), ns.Size, err)
		}
		if v == V12 && ns.Mode != ModeDevDAX {
			t.Errorf("v1.2 mode %q", ns.Mode)
		}
		if err := e.Rename(uuidA, "renamed"); err != nil {
			t.Fatal(err)
		}
		if _, err := e.Area().FindNamespace(UUID{}, "renamed"); err != nil {
			t.Fatal(err)
		}
		if err := e.Destroy(uuidA); err != nil {
			t.Fatal(err)
		}
		// The freed space is reused first.
		c, err := e.Create(NamespaceSpec{Name: "c", Size: 16 << 20, Mode: ModeRaw, DIMMSize: 512 << 20, Cookies: slot0Cookies})
		if err != nil || c.DPA() != 0 {
			t.Fatalf("c: %v %v", c, err)
		}
		// Size 0 takes the largest extent: [96M, 512M).
		big, err := e.Create(NamespaceSpec{Name: "big", Mode: ModeFSDAX, DIMMSize: 512 << 20, Cookies: slot0Cookies})
		if err != nil || big.DPA() != 96<<20 || big.Size != 416<<20 {
			t.Fatalf("big: %+v %v", big, err)
		}
		// [16M, 64M) is left: 48 MiB fit, 64 MiB do not.
		if _, err := e.Create(NamespaceSpec{Name: "x", Size: 64 << 20, Mode: ModeRaw, DIMMSize: 512 << 20, Cookies: slot0Cookies}); err == nil {
			t.Error("created beyond the free space")
		}
		if x, err := e.Create(NamespaceSpec{Name: "x", Size: 48 << 20, Mode: ModeRaw, DIMMSize: 512 << 20, Cookies: slot0Cookies}); err != nil || x.DPA() != 16<<20 {
			t.Errorf("x: %+v %v", x, err)
		}
		if _, err := e.Create(NamespaceSpec{Name: "odd", Size: 5 << 20, Mode: ModeRaw, DIMMSize: 512 << 20, Cookies: slot0Cookies}); err == nil {
			t.Error("accepted a size that is not a multiple of 16 MiB")
		}
		if err := e.Init(InitOptions{Version: v}); !errors.Is(err, ErrLabelled) {
			t.Errorf("init over labels: %v", err)
		}
		if err := e.Destroy(uuidA); !errors.Is(err, ErrNotFound) {
			t.Errorf("destroy twice: %v", err)
		}
		if !Clean(Check(e.Area(), CheckOptions{Cookies: &slot0Cookies, DIMMSize: 512 << 20})) {
			t.Errorf("v%s not clean: %v", v, Check(e.Area(), CheckOptions{}))
		}
	}
}

func TestGeometryTable(t *testing.T) {
	for _, c := range []struct {
		size  int64
		z     int
		i     int64
		nslot uint32
	}{
		{128 << 10, 128, 256, 1020}, {128 << 10, 256, 256, 510},
		{256 << 10, 128, 512, 2040}, {256 << 10, 256, 256, 1022},
		{1 << 20, 128, 1280, 8172}, {1 << 20, 256, 768, 4090},
		{1024, 256, 256, 2},
	} {
		g, err := NewGeometry(c.size, c.z)
		if err != nil || g.IndexSize != c.i || g.NSlot != c.nslot {
			t.Errorf("%d/%d: %+v %v; want I %d nslot %d", c.size, c.z, g, err, c.i, c.nslot)
		}
	}
	if _, err := NewGeometry(1000, 128); err == nil {
		t.Error("accepted a 1000-byte area")
	}
}

func TestUUIDGUID(t *testing.T) {
	if b := PFNGUID; b[0] != 0xba || b[1] != 0x00 || b[2] != 0x64 || b[3] != 0x26 || b[4] != 0x9f || b[5] != 0xfb || b.String() != "266400ba-fb9f-4677-bcb0-968f11d0d225" {
		t.Errorf("PFN GUID bytes %x", b)
	}
	for _, bad := range []string{"", "xyz", "c3274052-a122-484e-9686-25c4a2f6f58", "c3274052Xa122-484e-9686-25c4a2f6f58d", "g3274052-a122-484e-9686-25c4a2f6f58d"} {
		if _, err := ParseUUID(bad); err == nil {
			t.Errorf("parsed %q", bad)
		}
	}
}

// TestCheckCodes constructs each remaining condition Check reports and
// asserts its code, severity, place and whether Repair may touch it.
func TestCheckCodes(t *testing.T) {
	o := CheckOptions{Cookies: &slot0Cookies, DIMMSize: 512 << 20}
	var otherGUID GUID
	copy(otherGUID[:], "not-a-known-guid")
	for _, c := range []struct {
		name, code, sev string
		v               Version
		corrupt         func(d *memDev) int64 // returns the slot, -1 for none
		repairable      bool
	}{
		{"misaligned dpa", CodeLabelAlign, SevError, V12, func(d *memDev) int64 {
			return int64(setLabel(t, d, "a", func(l *Label) { l.DPA += 512 }))
		}, true},
		{"misaligned rawsize v1.1", CodeLabelAlign, SevError, V11, func(d *memDev) int64 {
			return int64(setLabel(t, d, "b", func(l *Label) { l.RawSize -= 1024 }))
		}, true},
		{"index nslot", CodeIndexNSlot, SevWarning, V11, func(d *memDev) int64 {
			a, _ := ParseBytes(d.b)
			x := a.CurrentIndex().clone()
			x.NSlot--
			x.Seal()
			b, _ := x.MarshalBinary()
			copy(d.b[a.Blocks[a.Current].Offset:], b)
			return -1
		}, false},
		{"type guid", CodeTypeGUID, SevError, V12, func(d *memDev) int64 {
			return int64(setLabel(t, d, "a", func(l *Label) { l.TypeGUID = otherGUID }))
		}, false},
		{"abstraction guid", CodeAbstractionGUID, SevWarning, V12, func(d *memDev) int64 {
			return int64(setLabel(t, d, "b", func(l *Label) { l.AbstractionGUID = otherGUID }))
		}, false},
		{"interleave nlabel", CodeInterleave, SevWarning, V11, func(d *memDev) int64 {
			return int64(setLabel(t, d, "a", func(l *Label) { l.NLabel = 2 }))
		}, false},
		{"interleave position", CodeInterleave, SevWarning, V12, func(d *memDev) int64 {
			return int64(setLabel(t, d, "b", func(l *Label) { l.Position = 1 }))
		}, false},
		{"local", CodeLocal, SevWarning, V12, func(d *memDev) int64 {
			return int64(setLabel(t, d, "a", func(l *Label) { l.Flags |= FlagLocal }))
		}, false},
		{"updating", CodeUpdating, SevInfo, V11, func(d *memDev) int64 {
			return int64(setLabel(t, d, "b", func(l *Label) { l.Flags |= FlagUpdating }))
		}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := populated(t, c.v)
			if a, _ := ParseBytes(d.b); !Clean(Check(a, o)) || len(Check(a, o)) != 0 {
				t.Fatalf("populated area not spotless: %v", Check(a, o))
			}
			slot := c.corrupt(d)
			a, _ := ParseBytes(d.b)
			var found *Problem
			for _, p := range Check(a, o) {
				if p.Code == c.code {
					found = &p
				}
			}
			if found == nil {
				t.Fatalf("check found %v, want %s", Check(a, o), c.code)
			}
			if found.Severity != c.sev || found.Slot != slot || found.Where == "" || found.Message == "" || found.Repairable != c.repairable {
				t.Fatalf("problem %+v: want severity %s, slot %d, repairable %v, a place and a message", *found, c.sev, slot, c.repairable)
			}
			if c.sev == SevInfo && !Clean(Check(a, o)) {
				t.Fatalf("an info note made the area unclean: %v", Check(a, o))
			}
			e, _ := NewEditor(d, int64(len(d.b)))
			r, err := e.Repair(o)
			if err != nil {
				t.Fatal(err)
			}
			still := strings.Contains(codes(r.Remaining), c.code)
			if c.repairable && still {
				t.Errorf("repair left %s: %v", c.code, r.Remaining)
			}
			if !c.repairable && c.sev != SevInfo && !still {
				t.Errorf("repair removed unrepairable %s: %v", c.code, r.Remaining)
			}
		})
	}
}
