package label

import (
	"errors"
	"strings"
	"testing"
)

// TestPlanChecksWithoutWriting: Plan refuses what Create would refuse,
// writes nothing, and Create with the planned UUID and size lands at the
// planned DPA.
func TestPlanChecksWithoutWriting(t *testing.T) {
	d := populated(t, V12)
	before := string(d.b)
	e, err := NewEditor(d, int64(len(d.b)))
	if err != nil {
		t.Fatal(err)
	}
	base := NamespaceSpec{Name: "n", Size: 16 << 20, Mode: ModeFSDAX, DIMMSize: 512 << 20, Cookies: slot0Cookies}
	for _, c := range []struct {
		want string
		edit func(s *NamespaceSpec)
	}{
		{"at most 63", func(s *NamespaceSpec) { s.Name = strings.Repeat("x", 64) }},
		{"already exists", func(s *NamespaceSpec) { s.UUID = uuidA }},
		{"no free extent", func(s *NamespaceSpec) { s.Size = 1 << 30 }},
		{"region alignment", func(s *NamespaceSpec) { s.Size = 5 << 20 }},
		{"cookie is 0", func(s *NamespaceSpec) { s.Cookies = Cookies{} }},
		{"sector", func(s *NamespaceSpec) { s.Mode = ModeSector }},
		{"DIMM size unknown", func(s *NamespaceSpec) { s.DIMMSize = 0 }},
	} {
		s := base
		c.edit(&s)
		if _, err := e.Plan(s); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("plan: %v, want %q", err, c.want)
		}
		if _, err := e.Create(s); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("create: %v, want %q", err, c.want)
		}
		if string(d.b) != before {
			t.Fatalf("refused %q wrote to the area", c.want)
		}
	}
	l, err := e.Plan(base)
	if err != nil || l.UUID.IsZero() || l.RawSize != 16<<20 || l.Flags != FlagUpdating || l.ISetCookie != slot0Cookies.V12 {
		t.Fatalf("plan: %+v %v", l, err)
	}
	if string(d.b) != before {
		t.Fatal("plan wrote to the area")
	}
	s := base
	s.UUID = l.UUID
	ns, err := e.Create(s)
	if err != nil || ns.DPA() != l.DPA || ns.Size != l.RawSize {
		t.Fatalf("create after plan: %+v %v, planned dpa %#x", ns, err, l.DPA)
	}
}

// TestPlanNeedsTwoFreeSlots: with one free slot left, Create would write
// the UPDATING label and then fail; Plan refuses up front.
func TestPlanNeedsTwoFreeSlots(t *testing.T) {
	d := &memDev{b: make([]byte, MinAreaSize)}
	e, _ := NewEditor(d, MinAreaSize)
	if err := e.Init(InitOptions{Version: V12}); err != nil {
		t.Fatal(err)
	}
	if e.Area().Geometry.NSlot != 2 {
		t.Fatalf("%d slots", e.Area().Geometry.NSlot)
	}
	spec := NamespaceSpec{UUID: uuidA, Name: "a", Size: 16 << 20, Mode: ModeFSDAX, DIMMSize: 512 << 20, Cookies: slot0Cookies}
	if _, err := e.Create(spec); err != nil {
		t.Fatal(err)
	}
	before := string(d.b)
	spec.UUID, spec.Name = uuidB, "b"
	if _, err := e.Create(spec); !errors.Is(err, ErrFull) || !strings.Contains(err.Error(), "1 left") {
		t.Fatalf("create with one free slot: %v", err)
	}
	if string(d.b) != before {
		t.Fatal("refused create wrote to the area")
	}
}
