package backing

import (
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nvdimm-backend/nvdimm-backend/acpi"
	"github.com/nvdimm-backend/nvdimm-backend/label"
	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

// newBacking creates a backing of size guest bytes and a labelSize label
// area (0: none) with its metadata record, closed, and returns its path.
func newBacking(t *testing.T, size, labelSize uint64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "vm.img")
	b, err := memfile.Create(p, memfile.CreateOptions{Size: size, LabelSize: labelSize})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

func open(t *testing.T, path string, o Options) *Area {
	t.Helper()
	a, err := Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func meta(t *testing.T, path string) *memfile.Meta {
	t.Helper()
	m, err := memfile.ReadMeta(path)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// fingerprint hashes a file and its metadata record.
func fingerprint(t *testing.T, path string) [32]byte {
	t.Helper()
	h := sha256.New()
	for _, p := range []string{path, memfile.MetaPath(path)} {
		f, err := os.Open(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

func cookies(slot int) label.Cookies {
	v11, v12 := acpi.QEMUSlotCookies(slot)
	return label.Cookies{V11: v11, V12: v12}
}

// indexState is the current index block and its sequence number.
type indexState struct {
	current int
	seq     uint32
}

func state(t *testing.T, a *Area) indexState {
	t.Helper()
	l, err := a.List()
	if err != nil {
		t.Fatal(err)
	}
	return indexState{l.CurrentIndex, l.Seq}
}

// after returns the state n kernel-style index updates after s.
func (s indexState) after(n int) indexState {
	for range n {
		s.current = 1 - s.current
		s.seq = s.seq%3 + 1
	}
	return s
}

// TestAreaLifecycle drives every editing operation on one opened Area:
// the info blocks land in the data, the metadata record follows the
// namespace the last create recorded, and each operation makes the
// kernel's number of index updates (create and rename two, destroy and
// retarget one).
func TestAreaLifecycle(t *testing.T) {
	p := newBacking(t, 64<<20, 128<<10)
	a := open(t, p, Options{Slot: memfile.NoSlot, Write: true})
	if a.Slot() != -1 || a.DIMMSize() != 64<<20 || a.Size() != 128<<10 || a.Backing() == nil || a.Path() != p {
		t.Fatalf("opened %+v", a)
	}
	g, err := a.Init(label.InitOptions{Version: label.V12})
	if err != nil || g.NSlot != 510 {
		t.Fatalf("init: %+v %v", g, err)
	}
	if _, err := a.Init(label.InitOptions{}); !errors.Is(err, label.ErrLabelled) || !strings.HasPrefix(err.Error(), p+": ") {
		t.Fatalf("second init: %v", err)
	}

	s0 := state(t, a)
	x, err := a.Create(label.NamespaceSpec{Name: "x", Mode: label.ModeFSDAX, Size: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if got := state(t, a); got != s0.after(2) {
		t.Fatalf("create: index %+v, want %+v (two updates)", got, s0.after(2))
	}
	if x.Slot != 0 || len(x.Warnings) != 1 || !strings.Contains(x.Warnings[0], "slot 0") || x.DPA != 0 || x.Size != 16<<20 ||
		x.InfoBlock == nil || x.InfoBlock.Kind != "fsdax" || !x.InfoBlock.Valid || x.InfoBlock.ParentUUID != x.UUID || x.Version != "1.2" {
		t.Fatalf("create x: %+v", x)
	}
	if m := meta(t, p); m.Namespace != "x" || m.Mode != "fsdax" || m.UUID != x.UUID || m.Slot != 0 {
		t.Fatalf("metadata after create: %+v", m)
	}
	if a.Slot() != 0 || a.Meta().UUID != x.UUID {
		t.Fatalf("area after create: slot %d meta %+v", a.Slot(), a.Meta())
	}
	// The info block is in the data at the namespace start.
	ib, err := a.ReadInfoBlock(0)
	if err != nil || ib.UUID != x.InfoBlock.UUID {
		t.Fatalf("info block of x: %+v %v", ib, err)
	}

	yu := label.UUID{0xaa, 0xbb, 0xcc, 0xdd, 1, 2, 0x43, 4, 0x85, 6, 7, 8, 9, 10, 11, 12}
	y, err := a.Create(label.NamespaceSpec{UUID: yu, Name: "y", Mode: label.ModeDevDAX, Size: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if y.UUID != yu.String() || y.DPA != 16<<20 || y.InfoBlock == nil || y.InfoBlock.Kind != "devdax" || len(y.Warnings) != 0 {
		t.Fatalf("create y: %+v", y)
	}
	l, err := a.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Namespaces) != 2 || l.Namespaces[0].Name != "x" || l.Namespaces[1].Mode != "devdax" ||
		l.Namespaces[1].InfoBlock == nil || !l.Namespaces[1].InfoBlock.Valid || l.Version != "1.2" {
		t.Fatalf("list: %+v", l)
	}

	// Renaming the namespace the record names updates the record, another
	// one does not.
	s1 := state(t, a)
	if old, err := a.Rename(Selector{Name: "y"}, "why"); err != nil || old.Name != "y" {
		t.Fatalf("rename y: %+v %v", old, err)
	}
	if got := state(t, a); got != s1.after(2) {
		t.Fatalf("rename: index %+v, want %+v", got, s1.after(2))
	}
	if m := meta(t, p); m.Namespace != "why" || m.UUID != y.UUID || m.Mode != "devdax" {
		t.Fatalf("metadata after renaming its namespace: %+v", m)
	}
	if _, err := a.Rename(Selector{Name: "x"}, "ex"); err != nil {
		t.Fatal(err)
	}
	if m := meta(t, p); m.Namespace != "why" {
		t.Fatalf("metadata after renaming another namespace: %+v", m)
	}

	// Destroying the recorded namespace (found by its UUID) forgets it.
	s2 := state(t, a)
	if ns, err := a.Destroy(Selector{UUID: yu}); err != nil || ns.Name != "why" {
		t.Fatalf("destroy: %+v %v", ns, err)
	}
	if got := state(t, a); got != s2.after(1) {
		t.Fatalf("destroy: index %+v, want %+v (one update)", got, s2.after(1))
	}
	if m := meta(t, p); m.Namespace != "" || m.UUID != "" || m.Mode != "" || m.Slot != 0 {
		t.Fatalf("metadata after destroy: %+v", m)
	}
	if _, err := a.Destroy(Selector{Name: "why"}); !errors.Is(err, label.ErrNotFound) || !strings.HasPrefix(err.Error(), p+": ") {
		t.Fatalf("destroy again: %v", err)
	}

	// Retarget: one update, new cookies, the slot recorded.
	s3 := state(t, a)
	if n, err := a.Retarget(3); err != nil || n != 1 {
		t.Fatalf("retarget: %d %v", n, err)
	}
	if got := state(t, a); got != s3.after(1) {
		t.Fatalf("retarget: index %+v, want %+v (one update)", got, s3.after(1))
	}
	l, _ = a.List()
	if want := cookies(3).V12; l.Namespaces[0].Labels[0].ISetCookie != "0x"+hex16(want) {
		t.Fatalf("cookie after retarget %s, want %x", l.Namespaces[0].Labels[0].ISetCookie, want)
	}
	if m := meta(t, p); m.Slot != 3 || a.Slot() != 3 {
		t.Fatalf("slot after retarget: record %d, area %d", m.Slot, a.Slot())
	}
	if c, err := a.Check(false); err != nil || !c.Clean || c.Slot != 3 || c.Problems == nil {
		t.Fatalf("check: %+v %v", c, err)
	}

	// Dump shows both index blocks and the one live label.
	d, err := a.Dump(false)
	if err != nil {
		t.Fatal(err)
	}
	live := 0
	for _, s := range d.Slots {
		if s.Live {
			live++
		}
	}
	if len(d.Index) != 2 || !d.Index[0].Valid || !d.Index[1].Valid || live != 1 || d.Index[d.Current].Free != 509 {
		t.Fatalf("dump: %d live, %+v", live, d.Index)
	}
	if all, _ := a.Dump(true); len(all.Slots) != 510 {
		t.Fatalf("dump all: %d slots", len(all.Slots))
	}

	// Re-initialising drops the namespaces and the recorded one; the slot
	// stays.
	if _, err := a.Create(label.NamespaceSpec{Name: "z", Mode: label.ModeRaw}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Init(label.InitOptions{Version: label.V11, Force: true}); err != nil {
		t.Fatal(err)
	}
	if m := meta(t, p); m.Namespace != "" || m.UUID != "" || m.Slot != 3 {
		t.Fatalf("metadata after reinit: %+v", m)
	}
	if l, _ := a.List(); l.Version != "1.1" || len(l.Namespaces) != 0 {
		t.Fatalf("list after reinit: %+v", l)
	}
}

func hex16(v uint64) string {
	const digits = "0123456789abcdef"
	b := make([]byte, 16)
	for i := 15; i >= 0; i-- {
		b[i] = digits[v&15]
		v >>= 4
	}
	return string(b)
}

// TestRepairRecordsSlot: labels of another slot are not clean for this
// one; repair retargets them and records the slot.
func TestRepairRecordsSlot(t *testing.T) {
	p := newBacking(t, 64<<20, 128<<10)
	a := open(t, p, Options{Slot: 1, Write: true})
	if _, err := a.Init(label.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Create(label.NamespaceSpec{Name: "a", Mode: label.ModeFSDAX}); err != nil {
		t.Fatal(err)
	}
	a.Close()
	if m := meta(t, p); m.Slot != 1 {
		t.Fatalf("slot %d", m.Slot)
	}
	ro := open(t, p, Options{Slot: 0})
	c, err := ro.Check(false)
	if err != nil || c.Clean || len(c.Problems) == 0 || c.Problems[0].Code != label.CodeCookie || c.Repair != nil {
		t.Fatalf("check for slot 0: %+v %v", c, err)
	}
	ro.Close()
	rw := open(t, p, Options{Slot: 0, Write: true})
	c, err = rw.Check(true)
	if err != nil || !c.Clean || c.Repair == nil || c.Repair.Retarget != 1 {
		t.Fatalf("repair: %+v %v", c, err)
	}
	if m := meta(t, p); m.Slot != 0 {
		t.Fatalf("slot after repair: %d", m.Slot)
	}
	rw.Close()
	// Without --slot the recorded slot is checked.
	c, err = open(t, p, Options{Slot: -1}).Check(false)
	if err != nil || !c.Clean || c.Slot != 0 {
		t.Fatalf("check for the recorded slot: %+v %v", c, err)
	}
}

// TestOpenLocked: a backing another open file description holds is
// refused for editing with memfile's ErrLocked, unless Force; reading
// works.
func TestOpenLocked(t *testing.T) {
	p := newBacking(t, 64<<20, 128<<10)
	holder, err := memfile.Open(p, memfile.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if err := holder.Lock(memfile.LockExclusive, false); err != nil {
		t.Fatal(err)
	}
	before := fingerprint(t, p)
	if _, err := Open(p, Options{Slot: -1, Write: true}); !errors.Is(err, memfile.ErrLocked) {
		t.Fatalf("open for editing while locked: %v", err)
	}
	if _, err := OpenData(p, Options{Slot: -1, Write: true}); !errors.Is(err, memfile.ErrLocked) {
		t.Fatalf("open data for writing while locked: %v", err)
	}
	if fingerprint(t, p) != before {
		t.Fatal("refused opens changed the backing")
	}
	r := open(t, p, Options{Slot: -1})
	if l, err := r.List(); err != nil || l.Version != "" || l.CurrentIndex != -1 {
		t.Fatalf("list while locked: %+v %v", l, err)
	}
	f := open(t, p, Options{Slot: 0, Write: true, Force: true})
	if _, err := f.Init(label.InitOptions{}); err != nil {
		t.Fatalf("forced init: %v", err)
	}
}

// TestRefusalsChangeNothing: a create the editor or the info block
// refuses writes nothing, neither data nor labels nor the record.
func TestRefusalsChangeNothing(t *testing.T) {
	p := newBacking(t, 64<<20, 128<<10)
	a := open(t, p, Options{Slot: 0, Write: true})
	before := fingerprint(t, p)
	if _, err := a.Create(label.NamespaceSpec{Name: "a", Mode: label.ModeFSDAX}); !errors.Is(err, label.ErrUnlabelled) {
		t.Fatalf("create on an unlabelled area: %v", err)
	}
	if _, err := a.Retarget(1); !errors.Is(err, label.ErrUnlabelled) {
		t.Fatalf("retarget on an unlabelled area: %v", err)
	}
	if fingerprint(t, p) != before {
		t.Fatal("refusals on an unlabelled area changed it")
	}
	if _, err := a.Init(label.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	before = fingerprint(t, p)
	for _, c := range []struct {
		spec label.NamespaceSpec
		want string
	}{
		{label.NamespaceSpec{Name: "big", Mode: label.ModeFSDAX, Size: 1 << 30}, "no free extent"},
		{label.NamespaceSpec{Name: "odd", Mode: label.ModeFSDAX, Size: 5 << 20}, "region alignment"},
		{label.NamespaceSpec{Name: "s", Mode: label.ModeSector}, `mode "sector"`},
		{label.NamespaceSpec{Name: strings.Repeat("n", 64), Mode: label.ModeRaw}, "at most 63"},
		// Placed at 4 KiB granularity, 16 KiB cannot hold a 2 MiB-aligned memmap.
		{label.NamespaceSpec{Name: "tiny", Mode: label.ModeDevDAX, Size: 16 << 10, Align: 4096}, "info block"},
	} {
		if _, err := a.Create(c.spec); err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), p+": ") {
			t.Errorf("create %q: %v, want %q", c.spec.Name, err, c.want)
		}
		if fingerprint(t, p) != before {
			t.Fatalf("refused create %q changed the backing", c.spec.Name)
		}
	}
}

// TestProvision: a new backing gets v1.2 labels, a namespace over the
// whole DIMM for the requested slot and its info block; without a label
// area only the info block; raw needs a label area.
func TestProvision(t *testing.T) {
	p := newBacking(t, 64<<20, 128<<10)
	b, err := memfile.Open(p, memfile.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	u := label.UUID{0x11, 0x11, 0x11, 0x11, 0x22, 0x22, 0x43, 0x33, 0x84, 0x44, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55}
	r, err := Provision(b, ProvisionSpec{Name: "db", UUID: u, Slot: 2})
	b.Close()
	if err != nil {
		t.Fatal(err)
	}
	if r.Name != "db" || r.Mode != "fsdax" || r.UUID != u.String() || r.Size != 64<<20 || r.Slot != 2 || r.Version != "1.2" ||
		r.InfoBlock == nil || !r.InfoBlock.Valid || len(r.Warnings) != 0 {
		t.Fatalf("provision: %+v", r)
	}
	if m := meta(t, p); m.Namespace != "db" || m.Mode != "fsdax" || m.UUID != u.String() || m.Slot != 2 {
		t.Fatalf("metadata: %+v", m)
	}
	a := open(t, p, Options{Slot: -1})
	if a.Slot() != 2 {
		t.Fatalf("recorded slot %d", a.Slot())
	}
	l, err := a.List()
	if err != nil || len(l.Namespaces) != 1 || l.Namespaces[0].Labels[0].ISetCookie != "0x"+hex16(cookies(2).V12) || l.Namespaces[0].InfoBlock == nil {
		t.Fatalf("list: %+v %v", l, err)
	}
	if c, err := a.Check(false); err != nil || !c.Clean {
		t.Fatalf("check: %+v %v", c, err)
	}
	if ibs := InspectInfoBlocks(p, memfile.OpenOptions{}); len(ibs) != 1 || !ibs[0].Found || ibs[0].Namespace != "db" || ibs[0].InfoBlock.Kind != "fsdax" {
		t.Fatalf("inspect: %+v", ibs)
	}

	// Label-less: the info block at the start of the data.
	q := newBacking(t, 64<<20, 0)
	b, err = memfile.Open(q, memfile.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := Provision(b, ProvisionSpec{Name: "r", Mode: label.ModeRaw, Slot: -1}); err == nil || !strings.Contains(err.Error(), "needs a label area") {
		t.Fatalf("raw without a label area: %v", err)
	}
	if _, err := Provision(b, ProvisionSpec{Name: "s", Mode: "bogus", Slot: -1}); err == nil || !strings.Contains(err.Error(), `mode "bogus"`) {
		t.Fatalf("bogus mode: %v", err)
	}
	r, err = Provision(b, ProvisionSpec{Name: "dx", Mode: label.ModeDevDAX, Slot: -1})
	if err != nil || r.InfoBlock == nil || r.InfoBlock.Kind != "devdax" || r.UUID != r.InfoBlock.UUID || len(r.Warnings) != 1 || r.Slot != -1 {
		t.Fatalf("label-less provision: %+v %v", r, err)
	}
	if m := meta(t, q); m.Namespace != "dx" || m.Mode != "devdax" || m.Slot != memfile.NoSlot {
		t.Fatalf("label-less metadata: %+v", m)
	}
	if ibs := InspectInfoBlocks(q, memfile.OpenOptions{}); len(ibs) != 1 || !ibs[0].Found || ibs[0].Offset != 4096 || !ibs[0].InfoBlock.Valid {
		t.Fatalf("label-less inspect: %+v", ibs)
	}
}

// TestBareArea: a bare area file places namespaces only with a DIMM size,
// writes no info block (warned) and has no data.
func TestBareArea(t *testing.T) {
	p := filepath.Join(t.TempDir(), "area.bin")
	if err := os.WriteFile(p, make([]byte, 128<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	a := open(t, p, Options{AreaOnly: true, Slot: -1, Write: true})
	if a.Backing() != nil || a.Meta() != nil || a.DIMMSize() != 0 {
		t.Fatalf("bare area %+v", a)
	}
	if _, err := a.Init(label.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Create(label.NamespaceSpec{Name: "x", Mode: label.ModeFSDAX}); !errors.Is(err, ErrNoDIMMSize) {
		t.Fatalf("create without a DIMM size: %v", err)
	}
	a.Close()
	a = open(t, p, Options{AreaOnly: true, DIMMSize: 512 << 20, Slot: 0, Write: true})
	r, err := a.Create(label.NamespaceSpec{Name: "x", Mode: label.ModeFSDAX, Size: 64 << 20})
	if err != nil || r.InfoBlock != nil || len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0], "no info block") {
		t.Fatalf("create in a bare area: %+v %v", r, err)
	}
	if _, err := a.ReadInfoBlock(0); !errors.Is(err, ErrNoData) {
		t.Fatalf("info block of a bare area: %v", err)
	}
	if _, err := OpenData(p, Options{AreaOnly: true}); !errors.Is(err, ErrNoData) {
		t.Fatalf("OpenData of a bare area: %v", err)
	}
}

// TestInfoBlockReadWrite: a written block reads back valid, and offsets
// outside the guest region are refused.
func TestInfoBlockReadWrite(t *testing.T) {
	p := newBacking(t, 64<<20, 0)
	a, err := OpenData(p, Options{Slot: -1, Write: true})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := a.ReadInfoBlock(0); !errors.Is(err, label.ErrNoInfoBlock) {
		t.Fatalf("read before write: %v", err)
	}
	w, err := a.WriteInfoBlock(0, label.ModeDevDAX, 0)
	if err != nil || w.Kind != "devdax" || !w.Valid || w.Align != 2<<20 {
		t.Fatalf("write: %+v %v", w, err)
	}
	r, err := a.ReadInfoBlock(0)
	if err != nil || *r != *w {
		t.Fatalf("read back %+v %v, wrote %+v", r, err, w)
	}
	if _, err := a.WriteInfoBlock(0, label.ModeRaw, 0); err == nil || !strings.Contains(err.Error(), "want fsdax or devdax") {
		t.Fatalf("write raw: %v", err)
	}
	if _, err := a.ReadInfoBlock(64 << 20); err == nil || !strings.Contains(err.Error(), "beyond the") {
		t.Fatalf("read beyond: %v", err)
	}
	if _, err := a.Check(false); err == nil {
		t.Fatal("label check of an Area opened for its data succeeded")
	}
}
