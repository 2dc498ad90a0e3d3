package label

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
)

var errCrash = errors.New("injected crash")

// faultDev persists writes until write number crashAt (0-based); that
// write persists only the 512-byte sectors in mask (bit i = i-th sector
// the write touches, aligned to absolute offsets) and fails, and so does
// every later write.
type faultDev struct {
	memDev
	n, crashAt int
	mask       uint64
	crashed    bool
	sectors    []int // sectors touched by each write, recorded
}

func sectorSpan(off int64, n int) (first int64, count int) {
	first = off / 512
	last := (off + int64(n) - 1) / 512
	return first, int(last - first + 1)
}

func (f *faultDev) WriteAt(p []byte, off int64) (int, error) {
	if f.crashed {
		return 0, errCrash
	}
	first, count := sectorSpan(off, len(p))
	f.sectors = append(f.sectors, count)
	if f.n != f.crashAt {
		f.n++
		return f.memDev.WriteAt(p, off)
	}
	f.crashed = true
	for i := 0; i < count; i++ {
		if f.mask&(1<<i) == 0 {
			continue
		}
		lo := max((first+int64(i))*512, off)
		hi := min((first+int64(i)+1)*512, off+int64(len(p)))
		if _, err := f.memDev.WriteAt(p[lo-off:hi-off], lo); err != nil {
			return 0, err
		}
	}
	return 0, errCrash
}

// stateOf summarises what Linux would see, ignoring slot numbers and
// UPDATING flags (a committed UPDATING label is the new namespace).
func stateOf(t *testing.T, b []byte) string {
	t.Helper()
	a, err := ParseBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	if !a.Labelled {
		return "unlabelled"
	}
	var ns []string
	for _, n := range a.Namespaces() {
		l := n.Labels[0].Label
		ns = append(ns, fmt.Sprintf("%s %q %s dpa=%d size=%d cookie=%#x", n.UUID, n.Name, n.Mode, l.DPA, n.Size, l.ISetCookie))
	}
	sort.Strings(ns)
	return fmt.Sprintf("v%s %v", a.Version(), ns)
}

type editOp struct {
	name string
	run  func(e *Editor) error
}

// crashAll runs op from the image start with a crash injected at every
// write and every torn-sector pattern of that write, and checks that
// the result is the old or the new state and that Check finds it clean.
func crashAll(t *testing.T, start []byte, op editOp, o CheckOptions) {
	t.Helper()
	if a, _ := ParseBytes(start); !Clean(Check(a, o)) {
		t.Fatalf("%s: start not clean: %v", op.name, Check(a, o))
	}
	crashBetween(t, start, op, o, o)
}

// summary is what Linux would see (stateOf) plus the problems Check
// reports under o, ignoring info notes (an interrupted update's staging
// block, UPDATING labels), with their slots dropped since updates move
// labels.
func summary(t *testing.T, b []byte, o CheckOptions) string {
	t.Helper()
	a, err := ParseBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	var ps []string
	for _, p := range Check(a, o) {
		if p.Severity != SevInfo {
			ps = append(ps, p.Severity+" "+p.Code)
		}
	}
	sort.Strings(ps)
	return fmt.Sprintf("%s problems %v", stateOf(t, b), ps)
}

// crashBetween runs op from start with a crash injected at every write
// and every torn-sector pattern of it (all patterns up to 8 sectors, each
// prefix beyond). At every crash point the WHOLE area must be in the old
// state (as start reads under oOld: same namespaces, cookies and
// problems) or in the new one (as the uncrashed run leaves it under
// oNew), and the new state must be clean under oNew. oOld and oNew differ
// when op changes what "clean" means (retarget to another DIMM slot).
func crashBetween(t *testing.T, start []byte, op editOp, oOld, oNew CheckOptions) {
	t.Helper()
	// The uncrashed run gives the new state and the write count.
	full := &faultDev{memDev: memDev{b: append([]byte(nil), start...)}, crashAt: -1}
	e, err := NewEditor(full, int64(len(start)))
	if err != nil {
		t.Fatal(err)
	}
	if err := op.run(e); err != nil {
		t.Fatalf("%s: %v", op.name, err)
	}
	oldS, newS := summary(t, start, oOld), summary(t, full.b, oNew)
	if stateOf(t, start) == stateOf(t, full.b) && oldS == newS {
		t.Fatalf("%s: did not change the state (%s)", op.name, oldS)
	}
	if a, _ := ParseBytes(full.b); !Clean(Check(a, oNew)) {
		t.Fatalf("%s: final state not clean: %v", op.name, Check(a, oNew))
	}
	points := 0
	for w := 0; w < full.n; w++ {
		count := full.sectors[w]
		masks := []uint64{0}
		if count <= 8 {
			for m := uint64(1); m < 1<<count-1; m++ {
				masks = append(masks, m)
			}
		} else {
			for i := 1; i < count; i++ {
				masks = append(masks, 1<<i-1)
			}
		}
		for _, m := range masks {
			points++
			d := &faultDev{memDev: memDev{b: append([]byte(nil), start...)}, crashAt: w, mask: m}
			e, err := NewEditor(d, int64(len(start)))
			if err != nil {
				t.Fatal(err)
			}
			if err := op.run(e); !errors.Is(err, errCrash) {
				t.Fatalf("%s crash at write %d mask %b: err %v, want the injected crash", op.name, w, m, err)
			}
			if got := summary(t, d.b, oOld); got == oldS {
				continue
			}
			if got := summary(t, d.b, oNew); got != newS {
				t.Fatalf("%s crash at write %d of %d, mask %b: neither old nor new\n got %s\n old %s\n new %s",
					op.name, w, full.n, m, got, oldS, newS)
			}
		}
	}
	t.Logf("%s: %d writes, %d crash points", op.name, full.n, points)
}

func mustUUID(s string) UUID {
	u, err := ParseUUID(s)
	if err != nil {
		panic(err)
	}
	return u
}

var (
	uuidA = mustUUID("11111111-2222-4333-8444-555555555555")
	uuidB = mustUUID("aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee")
)

// TestCrashEveryWrite enumerates every crash point of init, create,
// destroy, rename, reinit, version change (v1.1 <-> v1.2, with and
// without live labels; the 1 MiB areas make v1.2 -> v1.1 move labels
// out of the larger v1.1 index blocks) and retarget, for both versions
// and two area sizes.
func TestCrashEveryWrite(t *testing.T) {
	const dimm = 512 << 20
	o := CheckOptions{Cookies: &slot0Cookies, DIMMSize: dimm}
	for _, v := range []Version{V11, V12} {
		for _, size := range []int{128 << 10, 1 << 20} {
			t.Run(fmt.Sprintf("v%s-%dK", v, size>>10), func(t *testing.T) {
				blank := make([]byte, size)
				crashAll(t, blank, editOp{"init", func(e *Editor) error { return e.Init(InitOptions{Version: v}) }}, o)

				// A populated area: init, then namespaces A and B, so the
				// sequence numbers have wrapped.
				d := &memDev{b: make([]byte, size)}
				e, _ := NewEditor(d, int64(size))
				if err := e.Init(InitOptions{Version: v}); err != nil {
					t.Fatal(err)
				}
				if _, err := e.Create(NamespaceSpec{UUID: uuidA, Name: "a", Size: 64 << 20, Mode: ModeFSDAX, DIMMSize: dimm, Cookies: slot0Cookies}); err != nil {
					t.Fatal(err)
				}
				one := append([]byte(nil), d.b...)
				spec := NamespaceSpec{UUID: uuidB, Name: "b", Size: 128 << 20, Mode: ModeDevDAX, DIMMSize: dimm, Cookies: slot0Cookies}
				crashAll(t, one, editOp{"create", func(e *Editor) error { _, err := e.Create(spec); return err }}, o)
				if _, err := e.Create(spec); err != nil {
					t.Fatal(err)
				}
				two := append([]byte(nil), d.b...)
				crashAll(t, two, editOp{"destroy", func(e *Editor) error { return e.Destroy(uuidA) }}, o)
				crashAll(t, two, editOp{"rename", func(e *Editor) error { return e.Rename(uuidB, "renamed") }}, o)
				crashAll(t, two, editOp{"reinit", func(e *Editor) error { return e.Init(InitOptions{Version: v, Force: true}) }}, o)
				// Changing the version of a labelled area, from either
				// current index block.
				ov := otherVersion(v)
				change := editOp{"reinit-v" + string(ov), func(e *Editor) error { return e.Init(InitOptions{Version: ov, Force: true}) }}
				crashAll(t, one, change, o)
				crashAll(t, two, change, o)
				crashAll(t, blankInit(t, size, v), change, o)
				o1 := CheckOptions{Cookies: &slot1Cookies, DIMMSize: dimm}
				// Retarget to slot 1: the old state is clean for slot 0, the
				// new for slot 1; check each crash state against its own.
				crashRetarget(t, two, o, o1)
			})
		}
	}
}

// blankInit is a freshly initialised area of version v.
func blankInit(t *testing.T, size int, v Version) []byte {
	t.Helper()
	d := &memDev{b: make([]byte, size)}
	e, _ := NewEditor(d, int64(size))
	if err := e.Init(InitOptions{Version: v}); err != nil {
		t.Fatal(err)
	}
	return d.b
}

// crashRetarget: retargeting both namespaces from slot 0 to slot 1 is
// one update, so every crash point leaves both on slot 0's cookie (clean
// for slot 0) or both on slot 1's (clean for slot 1).
func crashRetarget(t *testing.T, start []byte, o0, o1 CheckOptions) {
	t.Helper()
	d := &memDev{b: append([]byte(nil), start...)}
	e, _ := NewEditor(d, int64(len(start)))
	if n, err := e.Retarget(slot1Cookies); err != nil || n != 2 {
		t.Fatalf("retarget: %d, %v", n, err)
	}
	if a, _ := ParseBytes(d.b); !Clean(Check(a, o1)) || Clean(Check(a, o0)) {
		t.Fatalf("after retarget: slot1 %v / slot0 %v", Check(a, o1), Check(a, o0))
	}
	if a, _ := ParseBytes(start); !Clean(Check(a, o0)) {
		t.Fatalf("before retarget: %v", Check(a, o0))
	}
	crashBetween(t, start, editOp{"retarget", func(e *Editor) error { _, err := e.Retarget(slot1Cookies); return err }}, o0, o1)
}

func TestStateOfStable(t *testing.T) {
	a := stateOf(t, make([]byte, 4096))
	if !reflect.DeepEqual(a, "unlabelled") {
		t.Fatal(a)
	}
}

// TestChangeVersionEndsAsFreshInit: after a version change the index
// blocks are byte for byte those of a fresh init of the new version, and
// no live label is left.
func TestChangeVersionEndsAsFreshInit(t *testing.T) {
	for _, v := range []Version{V11, V12} {
		for _, size := range []int{128 << 10, 1 << 20} {
			ov := otherVersion(v)
			d := &memDev{b: blankInit(t, size, v)}
			e, _ := NewEditor(d, int64(size))
			for i, name := range []string{"a", "b", "c"} {
				u := uuidA
				u[0] = byte(i)
				if _, err := e.Create(NamespaceSpec{UUID: u, Name: name, Size: 16 << 20, Mode: ModeFSDAX, DIMMSize: 512 << 20, Cookies: slot0Cookies}); err != nil {
					t.Fatal(err)
				}
			}
			if err := e.Init(InitOptions{Version: ov}); !errors.Is(err, ErrLabelled) {
				t.Fatalf("v%s->v%s without Force: %v", v, ov, err)
			}
			if err := e.Init(InitOptions{Version: ov, Force: true}); err != nil {
				t.Fatal(err)
			}
			fresh := blankInit(t, size, ov)
			a, _ := ParseBytes(d.b)
			n := 2 * a.Geometry.IndexSize
			if a.Version() != ov || len(a.LiveSlots()) != 0 || string(d.b[:n]) != string(fresh[:n]) {
				t.Fatalf("v%s->v%s %dK: version %s, %d live slots, index blocks equal to a fresh init: %v",
					v, ov, size>>10, a.Version(), len(a.LiveSlots()), string(d.b[:n]) == string(fresh[:n]))
			}
		}
	}
}

// TestCrashRepair enumerates every crash point of a repair that frees an
// invalid label and a label beyond the DIMM, retargets the remaining
// namespace to slot 1 and finds the staging index damaged: each crash
// leaves the area exactly as it was (same namespaces, cookies and
// problems) or fully repaired and clean, never part-way.
func TestCrashRepair(t *testing.T) {
	const dimm = 160 << 20 // b [64M, 192M) lies beyond it
	o := CheckOptions{Cookies: &slot1Cookies, DIMMSize: dimm}
	uuidC := mustUUID("cccccccc-dddd-4eee-8fff-000000000000")
	for _, v := range []Version{V11, V12} {
		for _, size := range []int{128 << 10, 1 << 20} {
			t.Run(fmt.Sprintf("v%s-%dK", v, size>>10), func(t *testing.T) {
				d := &memDev{b: blankInit(t, size, v)}
				e, _ := NewEditor(d, int64(size))
				for _, s := range []NamespaceSpec{
					{UUID: uuidA, Name: "a", Size: 64 << 20, Mode: ModeFSDAX},
					{UUID: uuidB, Name: "b", Size: 128 << 20, Mode: ModeDevDAX},
					{UUID: uuidC, Name: "c", Size: 16 << 20, Mode: ModeRaw},
				} {
					s.DIMMSize, s.Cookies = 512<<20, slot0Cookies
					if _, err := e.Create(s); err != nil {
						t.Fatal(err)
					}
				}
				setLabel(t, d, "c", func(l *Label) { l.Slot++ })
				a, _ := ParseBytes(d.b)
				d.b[a.Blocks[1-a.Current].Offset+30] ^= 0xff
				a, _ = ParseBytes(d.b)
				got := codes(Check(a, o))
				for _, want := range []string{CodeCookie, CodeBeyondDIMM, CodeSlotField} {
					if !strings.Contains(got, want) {
						t.Fatalf("constructed area lacks %s: %v", want, Check(a, o))
					}
				}
				crashBetween(t, d.b, editOp{"repair", func(e *Editor) error {
					r, err := e.Repair(o)
					if err == nil && (len(r.Freed) != 2 || r.Retarget != 1 || !Clean(r.Remaining)) {
						return fmt.Errorf("repair report %+v", r)
					}
					return err
				}}, o, o)
			})
		}
	}
}

// TestRetargetNeedsFreeSlots: retarget rewrites every stale label in one
// update, so it needs that many free slots; with fewer it refuses, names
// the numbers and writes nothing (no piecewise retarget).
func TestRetargetNeedsFreeSlots(t *testing.T) {
	const size = 128 << 10 // v1.2: 510 slots
	d := &memDev{b: blankInit(t, size, V12)}
	e, _ := NewEditor(d, int64(size))
	const n = 300
	for i := 0; i < n; i++ {
		u := uuidA
		u[0], u[1] = byte(i), byte(i>>8)
		if _, err := e.Create(NamespaceSpec{UUID: u, Size: 16 << 20, Mode: ModeRaw, DIMMSize: 8 << 30, Cookies: slot0Cookies}); err != nil {
			t.Fatalf("namespace %d: %v", i, err)
		}
	}
	before := append([]byte(nil), d.b...)
	_, err := e.Retarget(slot1Cookies)
	if !errors.Is(err, ErrFull) || !strings.Contains(err.Error(), "retargeting 300 namespace(s) rewrites 300 label(s) at once") ||
		!strings.Contains(err.Error(), "needs 300 free label slots, and 210 are free") {
		t.Fatalf("retarget with too few free slots: %v", err)
	}
	if string(before) != string(d.b) {
		t.Fatal("refused retarget wrote to the area")
	}
	// Repair asks for the same single update and is refused the same way.
	o := CheckOptions{Cookies: &slot1Cookies, DIMMSize: 8 << 30}
	if _, err := e.Repair(o); !errors.Is(err, ErrFull) {
		t.Fatalf("repair with too few free slots: %v", err)
	}
	if string(before) != string(d.b) {
		t.Fatal("refused repair wrote to the area")
	}
	// With room (one namespace fewer than the free slots) it succeeds.
	for i := 0; i < 91; i++ {
		u := uuidA
		u[0], u[1] = byte(i), byte(i>>8)
		if err := e.Destroy(u); err != nil {
			t.Fatal(err)
		}
	}
	if k, err := e.Retarget(slot1Cookies); err != nil || k != 209 {
		t.Fatalf("retarget of 209 with 301 free: %d, %v", k, err)
	}
	if a, _ := ParseBytes(d.b); !Clean(Check(a, o)) {
		t.Fatalf("after retarget: %v", Check(a, o))
	}
}

// setLabel decodes the live label of namespace name in d, changes it with
// fn, reseals it (v1.2) and writes it back in place.
func setLabel(t *testing.T, d *memDev, name string, fn func(*Label)) uint32 {
	t.Helper()
	a, _ := ParseBytes(d.b)
	ns, err := a.FindNamespace(UUID{}, name)
	if err != nil {
		t.Fatal(err)
	}
	s := ns.Labels[0]
	l := s.Label
	fn(&l)
	l.Seal()
	b, err := l.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	copy(d.b[s.Offset:], b)
	return s.Slot
}
