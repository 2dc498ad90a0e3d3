package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nvdimm-backend/nvdimm-backend/acpi"
	"github.com/nvdimm-backend/nvdimm-backend/label"
	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

// cli runs the CLI and fails the test on error; it returns stdout.
func cli(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runMemfileCLI(t, args...)
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return out
}

// cliJSON runs the CLI with --json and decodes stdout into v.
func cliJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out := cli(t, append(args, "--json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
}

// newBacking creates a 64 MiB backing with a 128 KiB label area (and its
// metadata record) and returns its path.
func newBacking(t *testing.T, extra ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "vm.img")
	cli(t, append([]string{"create", p, "--size", "64M", "--label-size", "128K"}, extra...)...)
	return p
}

func keys(m map[string]any) []string {
	var k []string
	for s := range m {
		k = append(k, s)
	}
	sort.Strings(k)
	return k
}

func wantKeys(t *testing.T, what string, m map[string]any, want ...string) {
	t.Helper()
	sort.Strings(want)
	if got := keys(m); !reflect.DeepEqual(got, want) {
		t.Errorf("%s keys %v, want %v", what, got, want)
	}
}

// fingerprint hashes a backing file (its data extents: the files are
// sparse) and its metadata record, to prove a refused command changed
// nothing.
func fingerprint(t *testing.T, path string) string {
	t.Helper()
	h := sha256.New()
	if m, err := os.ReadFile(memfile.MetaPath(path)); err == nil {
		h.Write(m)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	fmt.Fprintf(h, "size %d;", fi.Size())
	fd := int(f.Fd())
	for off := int64(0); off < fi.Size(); {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err != nil {
			break // ENXIO: no data after off
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, end-start)
		if _, err := f.ReadAt(buf, start); err != nil {
			t.Fatal(err)
		}
		// Holes and zeroed extents hash alike: hash non-zero 4 KiB pages
		// with their offsets.
		for p := int64(0); p < int64(len(buf)); p += 4096 {
			pg := buf[p:min(p+4096, int64(len(buf)))]
			if !isZero(pg) {
				fmt.Fprintf(h, "@%d:", start+p)
				h.Write(pg)
			}
		}
		off = end
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func slotCookies(slot int) label.Cookies {
	v11, v12 := acpi.QEMUSlotCookies(slot)
	return label.Cookies{V11: v11, V12: v12}
}

// TestLabelListJSONShape pins `label list --json` to the shape:
// {"version","nslot","current_index","seq","namespaces":[{"uuid","name",
// "mode","size","labels":[{"slot","flags","nlabel","position",
// "isetcookie":"0x%016x","lbasize","dpa","rawsize","abstraction_guid"}]}]}
// plus the documented optional "info_block" of a namespace.
func TestLabelListJSONShape(t *testing.T) {
	p := newBacking(t)
	cli(t, "label", "init", p)
	cli(t, "label", "create", p, "--name", "db", "--size", "16M", "--mode", "fsdax", "--slot", "0",
		"--uuid", "11111111-2222-4333-8444-555555555555")
	out := cli(t, "label", "list", p, "--json")
	var top map[string]any
	if err := json.Unmarshal([]byte(out), &top); err != nil {
		t.Fatal(err)
	}
	wantKeys(t, "list", top, "version", "nslot", "current_index", "seq", "namespaces")
	if top["version"] != "1.2" || top["nslot"] != float64(510) || top["current_index"] != float64(0) || top["seq"] != float64(2) {
		t.Errorf("list header %v", top)
	}
	nss := top["namespaces"].([]any)
	if len(nss) != 1 {
		t.Fatalf("namespaces %v", nss)
	}
	ns := nss[0].(map[string]any)
	wantKeys(t, "namespace", ns, "uuid", "name", "mode", "size", "labels", "info_block")
	if ns["uuid"] != "11111111-2222-4333-8444-555555555555" || ns["name"] != "db" || ns["mode"] != "fsdax" || ns["size"] != float64(16<<20) {
		t.Errorf("namespace %v", ns)
	}
	lbs := ns["labels"].([]any)
	if len(lbs) != 1 {
		t.Fatalf("labels %v", lbs)
	}
	lb := lbs[0].(map[string]any)
	wantKeys(t, "label", lb, "slot", "flags", "nlabel", "position", "isetcookie", "lbasize", "dpa", "rawsize", "abstraction_guid")
	c := slotCookies(0)
	fsdaxGUID, _ := label.ModeGUID(label.ModeFSDAX)
	if lb["isetcookie"] != fmt.Sprintf("0x%016x", c.V12) || lb["flags"] != float64(0) || lb["nlabel"] != float64(1) ||
		lb["position"] != float64(0) || lb["lbasize"] != float64(512) || lb["dpa"] != float64(0) || lb["rawsize"] != float64(16<<20) ||
		lb["abstraction_guid"] != fsdaxGUID.String() {
		t.Errorf("label %v", lb)
	}
	ib := ns["info_block"].(map[string]any)
	if ib["kind"] != "fsdax" || ib["parent_uuid"] != ns["uuid"] || ib["valid"] != true {
		t.Errorf("info block %v", ib)
	}
	// An unlabelled area: version "" and no namespaces.
	q := newBacking(t)
	out = cli(t, "label", "list", q, "--json")
	top = nil
	if err := json.Unmarshal([]byte(out), &top); err != nil {
		t.Fatal(err)
	}
	wantKeys(t, "unlabelled list", top, "version", "nslot", "current_index", "seq", "namespaces")
	if top["version"] != "" || top["current_index"] != float64(-1) || len(top["namespaces"].([]any)) != 0 {
		t.Errorf("unlabelled list %v", top)
	}
	if out := cli(t, "label", "list", q); !strings.Contains(out, "unlabelled") {
		t.Errorf("human list of an unlabelled area: %s", out)
	}
}

// TestLabelEveryVerb drives every label verb through the cobra root with
// --json on one backing and checks each result against the area.
func TestLabelEveryVerb(t *testing.T) {
	p := newBacking(t)

	var ini map[string]any
	cliJSON(t, &ini, "label", "init", p, "--version", "1.2")
	if ini["version"] != "1.2" || ini["nslot"] != float64(510) || ini["index_size"] != float64(256) || ini["area_size"] != float64(128<<10) {
		t.Fatalf("init %v", ini)
	}
	if _, err := runMemfileCLI(t, "label", "init", p); err == nil || !strings.Contains(err.Error(), "--reinit") {
		t.Fatalf("second init: %v", err)
	}

	var a, b nsResult
	cliJSON(t, &a, "label", "create", p, "--name", "a", "--size", "16M", "--mode", "fsdax", "--slot", "0")
	cliJSON(t, &b, "label", "create", p, "--name", "b", "--size", "32M", "--mode", "devdax", "--uuid", "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee")
	if a.Name != "a" || a.Mode != "fsdax" || a.Size != 16<<20 || a.DPA != 0 || a.Slot != 0 || a.Version != "1.2" ||
		a.InfoBlock == nil || a.InfoBlock.Kind != "fsdax" || !a.InfoBlock.Valid || a.InfoBlock.ParentUUID != a.UUID {
		t.Errorf("create a: %+v", a)
	}
	if b.UUID != "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee" || b.DPA != 16<<20 || b.Size != 32<<20 || b.InfoBlock == nil || b.InfoBlock.Kind != "devdax" {
		t.Errorf("create b: %+v", b)
	}
	// The first create recorded slot 0 in the metadata, so b needs no --slot.
	if m, _ := memfile.ReadMeta(p); m.Slot != 0 || m.Namespace != "b" || m.UUID != b.UUID {
		t.Errorf("metadata after create: %+v", m)
	}
	// The default size is the largest free extent (16 MiB left).
	var raw nsResult
	cliJSON(t, &raw, "label", "create", p, "--name", "r", "--mode", "raw")
	if raw.Size != 16<<20 || raw.DPA != 48<<20 || raw.InfoBlock != nil {
		t.Errorf("create r: %+v", raw)
	}

	var l listJSON
	cliJSON(t, &l, "label", "list", p)
	var names []string
	for _, ns := range l.Namespaces {
		names = append(names, ns.Name+"/"+ns.Mode)
	}
	if l.Version != "1.2" || strings.Join(names, ",") != "a/fsdax,b/devdax,r/raw" {
		t.Fatalf("list: %+v", l)
	}
	if out := cli(t, "label", "list", p); !strings.Contains(out, `"a"`) || !strings.Contains(out, "info block: fsdax") {
		t.Errorf("human list:\n%s", out)
	}

	var rn map[string]any
	cliJSON(t, &rn, "label", "rename", p, "--name", "b", "--to", "bee")
	if rn["old_name"] != "b" || rn["name"] != "bee" || rn["uuid"] != b.UUID {
		t.Errorf("rename: %v", rn)
	}
	// The metadata records the last namespace created ("r"): untouched.
	if m, _ := memfile.ReadMeta(p); m.Namespace != "r" || m.UUID != raw.UUID {
		t.Errorf("metadata after rename: %+v", m)
	}
	cli(t, "label", "rename", p, "--uuid", raw.UUID, "--to", "r2")
	if m, _ := memfile.ReadMeta(p); m.Namespace != "r2" || m.Mode != "raw" {
		t.Errorf("metadata after renaming its namespace: %+v", m)
	}
	cli(t, "label", "rename", p, "--name", "r2", "--to", "r")

	var ds map[string]any
	cliJSON(t, &ds, "label", "destroy", p, "--uuid", a.UUID)
	if ds["destroyed"] != a.UUID || ds["name"] != "a" {
		t.Errorf("destroy: %v", ds)
	}
	cliJSON(t, &l, "label", "list", p)
	if len(l.Namespaces) != 2 || l.Namespaces[0].Name != "bee" || l.Namespaces[1].Name != "r" {
		t.Fatalf("list after rename/destroy: %+v", l)
	}

	var ck checkJSON
	cliJSON(t, &ck, "label", "check", p)
	if !ck.Clean || ck.Slot != 0 || len(ck.Problems) != 0 || ck.Repair != nil {
		t.Errorf("check: %+v", ck)
	}
	if out := cli(t, "label", "check", p); !strings.HasSuffix(out, "clean\n") {
		t.Errorf("human check: %s", out)
	}

	var d dumpJSON
	cliJSON(t, &d, "label", "dump", p)
	if len(d.Index) != 2 || !d.Index[0].Valid || !d.Index[1].Valid || d.Geometry.NSlot != 510 || d.Geometry.LabelSize != 256 {
		t.Errorf("dump index: %+v", d)
	}
	live := 0
	for _, s := range d.Slots {
		if s.Live {
			live++
			if !s.Valid || s.SlotField != s.Slot || s.TypeGUID == "" {
				t.Errorf("dump slot %+v", s)
			}
		}
	}
	if live != 2 || d.Index[d.Current].Free != 508 {
		t.Errorf("dump: %d live slots, %d free", live, d.Index[d.Current].Free)
	}
	var dAll dumpJSON
	cliJSON(t, &dAll, "label", "dump", p, "--all")
	if len(dAll.Slots) != 510 {
		t.Errorf("dump --all: %d slots", len(dAll.Slots))
	}
	if out := cli(t, "label", "dump", p); !strings.Contains(out, "index 0 @0: valid=true") {
		t.Errorf("human dump:\n%s", out)
	}

	// Retarget to slot 1: cookies follow, the metadata records the slot,
	// check is clean for slot 1 and not for slot 0, and repair brings it
	// back.
	var rt map[string]any
	cliJSON(t, &rt, "label", "retarget", p, "--slot", "1")
	if rt["slot"] != float64(1) || rt["namespaces_rewritten"] != float64(2) {
		t.Errorf("retarget: %v", rt)
	}
	cliJSON(t, &l, "label", "list", p)
	for _, ns := range l.Namespaces {
		if ns.Labels[0].ISetCookie != fmt.Sprintf("0x%016x", slotCookies(1).V12) {
			t.Errorf("after retarget %s cookie %s", ns.Name, ns.Labels[0].ISetCookie)
		}
	}
	if m, _ := memfile.ReadMeta(p); m.Slot != 1 {
		t.Errorf("metadata slot after retarget: %d", m.Slot)
	}
	cliJSON(t, &ck, "label", "check", p)
	if !ck.Clean || ck.Slot != 1 {
		t.Errorf("check after retarget: %+v", ck)
	}
	out, err := runMemfileCLI(t, "label", "check", p, "--slot", "0", "--json")
	if !errors.Is(err, errNotClean) {
		t.Fatalf("check --slot 0 after retarget: %v", err)
	}
	ck = checkJSON{}
	if err := json.Unmarshal([]byte(out), &ck); err != nil || ck.Clean || len(ck.Problems) != 2 || ck.Problems[0].Code != label.CodeCookie || !ck.Problems[0].Repairable {
		t.Fatalf("check --slot 0: %v %s", err, out)
	}
	ck = checkJSON{}
	cliJSON(t, &ck, "label", "check", p, "--slot", "0", "--repair")
	if !ck.Clean || ck.Repair == nil || ck.Repair.Retarget != 2 {
		t.Errorf("check --repair: %+v", ck)
	}
	// The repair retargeted to slot 0, so the metadata now says slot 0.
	if m, _ := memfile.ReadMeta(p); m.Slot != 0 {
		t.Errorf("metadata slot after check --slot 0 --repair: %d", m.Slot)
	}
	cli(t, "label", "check", p)

	// infoblock decodes the devdax block of "bee" at its dpa.
	var ij infoJSON
	cliJSON(t, &ij, "label", "infoblock", p, "--offset", "16M")
	if ij.Kind != "devdax" || ij.ParentUUID != b.UUID {
		t.Errorf("infoblock: %+v", ij)
	}
	if _, err := runMemfileCLI(t, "label", "infoblock", p, "--offset", "48M"); !errors.Is(err, label.ErrNoInfoBlock) {
		t.Errorf("infoblock of the raw namespace: %v", err)
	}

	// Changing the version of the labelled area drops its namespaces.
	cliJSON(t, &ini, "label", "init", p, "--version", "1.1", "--reinit")
	cliJSON(t, &l, "label", "list", p)
	if l.Version != "1.1" || l.NSlot != 1020 || len(l.Namespaces) != 0 {
		t.Errorf("after init --version 1.1 --reinit: %+v", l)
	}
	if m, _ := memfile.ReadMeta(p); m.Namespace != "" || m.UUID != "" || m.Mode != "" || m.Slot != 0 {
		t.Errorf("metadata after --reinit: %+v", m)
	}
}

// TestLabelV11ModeFromInfoBlock: v1.1 labels do not record fsdax/devdax;
// list reports the mode the info block gives.
func TestLabelV11ModeFromInfoBlock(t *testing.T) {
	p := newBacking(t)
	cli(t, "label", "init", p, "--version", "1.1")
	cli(t, "label", "create", p, "--name", "x", "--size", "16M", "--mode", "devdax", "--slot", "2")
	var l listJSON
	cliJSON(t, &l, "label", "list", p)
	if l.Version != "1.1" || len(l.Namespaces) != 1 || l.Namespaces[0].Mode != "devdax" ||
		l.Namespaces[0].Labels[0].ISetCookie != fmt.Sprintf("0x%016x", slotCookies(2).V11) ||
		l.Namespaces[0].Labels[0].AbstractionGUID != "00000000-0000-0000-0000-000000000000" {
		t.Fatalf("v1.1 list: %+v", l)
	}
}

// TestCreateNamespaceOneStep: `create PATH --size S --label-size L
// --namespace NAME --mode fsdax|devdax` makes the backing, v1.2 labels,
// the namespace and its info block in one step.
func TestCreateNamespaceOneStep(t *testing.T) {
	for _, mode := range []string{"fsdax", "devdax"} {
		t.Run(mode, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "vm.img")
			var cr struct {
				Layout    memfile.Layout `json:"layout"`
				Namespace nsResult       `json:"namespace"`
			}
			cliJSON(t, &cr, "create", p, "--size", "64M", "--label-size", "128K", "--namespace", "db", "--mode", mode, "--slot", "1",
				"--uuid", "11111111-2222-4333-8444-555555555555")
			ns := cr.Namespace
			if ns.Name != "db" || ns.Mode != mode || ns.UUID != "11111111-2222-4333-8444-555555555555" || ns.Size != 64<<20 ||
				ns.Slot != 1 || ns.Version != "1.2" || ns.InfoBlock == nil || ns.InfoBlock.Kind != mode || len(ns.Warnings) != 0 {
				t.Fatalf("create --namespace: %+v", cr)
			}
			var l listJSON
			cliJSON(t, &l, "label", "list", p)
			if len(l.Namespaces) != 1 || l.Namespaces[0].UUID != ns.UUID || l.Namespaces[0].Mode != mode ||
				l.Namespaces[0].InfoBlock == nil || !l.Namespaces[0].InfoBlock.Valid ||
				l.Namespaces[0].Labels[0].ISetCookie != fmt.Sprintf("0x%016x", slotCookies(1).V12) {
				t.Fatalf("list: %+v", l)
			}
			m, err := memfile.ReadMeta(p)
			if err != nil || m.Namespace != "db" || m.Mode != mode || m.UUID != ns.UUID || m.Slot != 1 {
				t.Fatalf("metadata %+v %v", m, err)
			}
			var ck checkJSON
			cliJSON(t, &ck, "label", "check", p)
			if !ck.Clean {
				t.Fatalf("check: %+v", ck)
			}
			// inspect decodes the same info block.
			var in inspectResult
			cliJSON(t, &in, "inspect", p)
			if len(in.InfoBlocks) != 1 || !in.InfoBlocks[0].Found || in.InfoBlocks[0].Namespace != "db" || in.InfoBlocks[0].Offset != 4096 ||
				in.InfoBlocks[0].InfoBlock.UUID != ns.InfoBlock.UUID || !in.InfoBlocks[0].InfoBlock.Valid || in.Layout.LabelSize != 128<<10 {
				t.Fatalf("inspect: %+v", in)
			}
			if out := cli(t, "inspect", p); !strings.Contains(out, `info block    of "db" at offset 4096 `+mode) {
				t.Errorf("human inspect:\n%s", out)
			}
		})
	}
}

// TestInspectInfoBlocks: label-less backings (the info block at 4 KiB of
// the data), several labelled namespaces at their dpa, and no block.
func TestInspectInfoBlocks(t *testing.T) {
	dir := t.TempDir()
	ll := filepath.Join(dir, "pmem.img")
	var cr struct {
		Namespace nsResult `json:"namespace"`
	}
	cliJSON(t, &cr, "create", ll, "--size", "64M", "--namespace", "x", "--mode", "devdax")
	if cr.Namespace.InfoBlock == nil || cr.Namespace.InfoBlock.Kind != "devdax" || len(cr.Namespace.Warnings) == 0 {
		t.Fatalf("label-less create: %+v", cr)
	}
	var in inspectResult
	cliJSON(t, &in, "inspect", ll)
	if len(in.InfoBlocks) != 1 || !in.InfoBlocks[0].Found || in.InfoBlocks[0].DPA != 0 || in.InfoBlocks[0].Offset != 4096 ||
		in.InfoBlocks[0].InfoBlock.Kind != "devdax" || !in.InfoBlocks[0].InfoBlock.Valid || in.InfoBlocks[0].Size != 64<<20 {
		t.Fatalf("inspect label-less: %+v", in.InfoBlocks)
	}
	// The raw JSON keeps inspect's fields at the top level beside info_blocks.
	var top map[string]any
	cliJSON(t, &top, "inspect", ll)
	for _, k := range []string{"path", "kind", "size", "layout", "locked_by", "meta", "info_blocks"} {
		if _, ok := top[k]; !ok {
			t.Errorf("inspect --json lacks %q: %v", k, keys(top))
		}
	}

	plain := filepath.Join(dir, "plain.img")
	cli(t, "create", plain, "--size", "64M")
	cliJSON(t, &in, "inspect", plain)
	if len(in.InfoBlocks) != 1 || in.InfoBlocks[0].Found || in.InfoBlocks[0].Error != "" {
		t.Fatalf("inspect without a block: %+v", in.InfoBlocks)
	}
	if out := cli(t, "inspect", plain); !strings.Contains(out, "info block    none at offset 4096") {
		t.Errorf("human inspect:\n%s", out)
	}

	p := newBacking(t)
	cli(t, "label", "init", p)
	cli(t, "label", "create", p, "--name", "f", "--size", "16M", "--mode", "fsdax", "--slot", "0")
	cli(t, "label", "create", p, "--name", "d", "--size", "32M", "--mode", "devdax")
	cli(t, "label", "create", p, "--name", "r", "--size", "16M", "--mode", "raw")
	in = inspectResult{}
	cliJSON(t, &in, "inspect", p)
	got := ""
	for _, e := range in.InfoBlocks {
		kind := "-"
		if e.Found {
			kind = e.InfoBlock.Kind
		}
		got += fmt.Sprintf("%s@%d:%s ", e.Namespace, e.Offset, kind)
	}
	if got != "f@4096:fsdax d@16781312:devdax r@50335744:- " {
		t.Fatalf("inspect labelled: %s", got)
	}
	// An unlabelled label area has no namespaces to look at.
	q := newBacking(t)
	cliJSON(t, &in, "inspect", q)
	if len(in.InfoBlocks) != 0 {
		t.Fatalf("inspect unlabelled: %+v", in.InfoBlocks)
	}
}

// TestLabelArea: --area works on a bare label-area image and needs
// --dimm-size to place namespaces.
func TestLabelArea(t *testing.T) {
	p := filepath.Join(t.TempDir(), "area.bin")
	if err := os.WriteFile(p, make([]byte, 128<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	cli(t, "label", "init", p, "--area")
	before := fingerprint(t, p)
	_, err := runMemfileCLI(t, "label", "create", p, "--area", "--name", "x")
	if err == nil || !strings.Contains(err.Error(), "--area needs --dimm-size") {
		t.Fatalf("create --area without --dimm-size: %v", err)
	}
	if fingerprint(t, p) != before {
		t.Fatal("refused create changed the area")
	}
	var r nsResult
	cliJSON(t, &r, "label", "create", p, "--area", "--dimm-size", "512M", "--name", "x", "--size", "64M", "--slot", "0")
	if r.Size != 64<<20 || r.InfoBlock != nil || len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0], "no info block") {
		t.Fatalf("create --area: %+v", r)
	}
	var l listJSON
	cliJSON(t, &l, "label", "list", p, "--area")
	if len(l.Namespaces) != 1 || l.Namespaces[0].Name != "x" || l.Namespaces[0].InfoBlock != nil {
		t.Fatalf("list --area: %+v", l)
	}
	var ck checkJSON
	cliJSON(t, &ck, "label", "check", p, "--area", "--slot", "0", "--dimm-size", "512M")
	if !ck.Clean {
		t.Fatalf("check --area: %+v", ck)
	}
	if _, err := runMemfileCLI(t, "label", "infoblock", p, "--area"); err == nil || !strings.Contains(err.Error(), "not on --area") {
		t.Fatalf("infoblock --area: %v", err)
	}
}

// TestLabelRefusals: each refusal names the problem and changes nothing.
func TestLabelRefusals(t *testing.T) {
	p := newBacking(t)
	cli(t, "label", "init", p)
	cli(t, "label", "create", p, "--name", "a", "--size", "16M", "--slot", "0")
	cases := []struct {
		want string
		args []string
	}{
		{`no namespace named "nope"`, []string{"label", "destroy", p, "--name", "nope"}},
		{`no namespace named "nope"`, []string{"label", "rename", p, "--name", "nope", "--to", "x"}},
		{"no namespace with uuid", []string{"label", "destroy", p, "--uuid", "99999999-2222-4333-8444-555555555555"}},
		{"--uuid", []string{"label", "destroy", p, "--uuid", "not-a-uuid"}},
		{"--uuid", []string{"label", "create", p, "--name", "b", "--uuid", "1234"}},
		{"exactly one of --name or --uuid", []string{"label", "destroy", p}},
		{"no free extent of 1073741824 bytes", []string{"label", "create", p, "--name", "big", "--size", "1G"}},
		{"not a multiple of the region alignment", []string{"label", "create", p, "--name", "odd", "--size", "5M"}},
		{`--mode "sector"`, []string{"label", "create", p, "--name", "s", "--mode", "sector"}},
		{`--mode "bogus"`, []string{"label", "create", p, "--name", "s", "--mode", "bogus"}},
		{"at most 63", []string{"label", "create", p, "--name", strings.Repeat("n", 64)}},
		{"at most 63", []string{"label", "rename", p, "--name", "a", "--to", strings.Repeat("n", 64)}},
		{"already exists", []string{"label", "create", p, "--name", "dup", "--uuid", "", "--size", "16M"}},
		{"already has a valid v1.2 index", []string{"label", "init", p}},
		{"label version", []string{"label", "init", p, "--version", "2.0", "--reinit"}},
		{"--slot is required", []string{"label", "retarget", p}},
		{`required flag(s) "name"`, []string{"label", "create", p}},
		{"beyond the", []string{"label", "infoblock", p, "--offset", "1G"}},
		{"want fsdax or devdax", []string{"label", "infoblock", p, "--offset", "16M", "--write", "raw"}},
	}
	// "already exists" needs a namespace with a known uuid.
	var a listJSON
	cliJSON(t, &a, "label", "list", p)
	for i := range cases {
		for j, s := range cases[i].args {
			if s == "" && cases[i].args[j-1] == "--uuid" {
				cases[i].args[j] = a.Namespaces[0].UUID
			}
		}
	}
	before := fingerprint(t, p)
	for _, c := range cases {
		_, err := runMemfileCLI(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err = %v, want %q", c.args[:min(len(c.args), 5)], err, c.want)
		}
		if fingerprint(t, p) != before {
			t.Fatalf("%v changed the backing", c.args)
		}
	}
	// An unlabelled area refuses namespace verbs.
	q := newBacking(t)
	before = fingerprint(t, q)
	for _, args := range [][]string{
		{"label", "create", q, "--name", "x"},
		{"label", "destroy", q, "--name", "x"},
		{"label", "retarget", q, "--slot", "1"},
	} {
		if _, err := runMemfileCLI(t, args...); err == nil {
			t.Errorf("%v on an unlabelled area succeeded", args)
		}
	}
	if fingerprint(t, q) != before {
		t.Fatal("refusals changed the unlabelled backing")
	}
	// A backing without a label area.
	r := filepath.Join(t.TempDir(), "r.img")
	cli(t, "create", r, "--size", "16M")
	if _, err := runMemfileCLI(t, "label", "list", r); err == nil || !strings.Contains(err.Error(), "no label area") {
		t.Errorf("list of a label-less backing: %v", err)
	}
	// A missing file.
	if _, err := runMemfileCLI(t, "label", "list", filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("list of a missing file succeeded")
	}
}

// TestLabelLockedBacking: a backing whose lock another open file
// description holds (as a running VM's would be) is refused by every
// editing verb unless --force; reading verbs still work.
func TestLabelLockedBacking(t *testing.T) {
	p := newBacking(t)
	cli(t, "label", "init", p)
	cli(t, "label", "create", p, "--name", "a", "--size", "16M", "--slot", "0")
	holder, err := memfile.Open(p, memfile.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if err := holder.Lock(memfile.LockExclusive, false); err != nil {
		t.Fatal(err)
	}
	before := fingerprint(t, p)
	edits := [][]string{
		{"label", "init", p, "--reinit"},
		{"label", "create", p, "--name", "b", "--size", "16M"},
		{"label", "destroy", p, "--name", "a"},
		{"label", "rename", p, "--name", "a", "--to", "c"},
		{"label", "retarget", p, "--slot", "1"},
		{"label", "check", p, "--repair"},
		{"label", "infoblock", p, "--offset", "32M", "--write", "fsdax"},
	}
	for _, args := range edits {
		_, err := runMemfileCLI(t, args...)
		if !errors.Is(err, memfile.ErrLocked) || !strings.Contains(err.Error(), "probably a running VM; stop it first, or pass --force to edit anyway") {
			t.Errorf("%v on a locked backing: %v", args[:2], err)
		}
		// The advice is given once, not by both memfile and the verb.
		if err != nil && (strings.Count(err.Error(), "stop it") != 1 || strings.Count(err.Error(), "running VM") != 1) {
			t.Errorf("%v on a locked backing repeats its advice: %v", args[:2], err)
		}
	}
	if fingerprint(t, p) != before {
		t.Fatal("refused edits changed the backing")
	}
	for _, args := range [][]string{{"label", "list", p}, {"label", "check", p}, {"label", "dump", p}, {"label", "infoblock", p}, {"inspect", p}} {
		if _, err := runMemfileCLI(t, args...); err != nil {
			t.Errorf("%v on a locked backing: %v", args[:2], err)
		}
	}
	var in inspectResult
	cliJSON(t, &in, "inspect", p)
	if in.LockedBy != "exclusive" {
		t.Errorf("inspect locked_by %q", in.LockedBy)
	}
	// --force edits anyway.
	cli(t, "label", "rename", p, "--name", "a", "--to", "c", "--force")
	var l listJSON
	cliJSON(t, &l, "label", "list", p)
	if len(l.Namespaces) != 1 || l.Namespaces[0].Name != "c" {
		t.Fatalf("after forced rename: %+v", l)
	}
}

// TestCreateNamespaceNoResidue: a `create --namespace` that fails after
// the backing was made removes the backing and its metadata record.
func TestCreateNamespaceNoResidue(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "vm.img")
	for _, c := range []struct {
		want string
		args []string
	}{
		{"--uuid", []string{"--label-size", "128K", "--namespace", "x", "--uuid", "zzz"}},
		{"mode", []string{"--label-size", "128K", "--namespace", "x", "--mode", "bogus"}},
		{"at most 63", []string{"--label-size", "128K", "--namespace", strings.Repeat("n", 70)}},
		{"needs a label area", []string{"--namespace", "x", "--mode", "raw"}},
		{"mode", []string{"--namespace", "x", "--mode", "sector"}},
	} {
		_, err := runMemfileCLI(t, append([]string{"create", p, "--size", "64M"}, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err = %v, want %q", c.args, err, c.want)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Fatalf("%v left %v behind", c.args, ents)
		}
	}
}

// TestLabelDumpCorrupt: dump and check show a corrupted label precisely,
// and repair frees it.
func TestLabelDumpCorrupt(t *testing.T) {
	p := newBacking(t)
	cli(t, "label", "init", p)
	cli(t, "label", "create", p, "--name", "a", "--size", "16M", "--slot", "0")
	var d dumpJSON
	cliJSON(t, &d, "label", "dump", p)
	var slot dumpSlot
	for _, s := range d.Slots {
		if s.Live {
			slot = s
		}
	}
	m, _ := memfile.ReadMeta(p)
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("X"), int64(m.Layout.LabelOffset)+slot.Offset+20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	cliJSON(t, &d, "label", "dump", p)
	found := false
	for _, s := range d.Slots {
		if s.Slot == slot.Slot {
			found = true
			if s.Valid || !strings.Contains(s.Error, "checksum") {
				t.Errorf("dump of the corrupted slot: %+v", s)
			}
		}
	}
	if !found {
		t.Fatal("corrupted slot not dumped")
	}
	out, err := runMemfileCLI(t, "label", "check", p)
	if !errors.Is(err, errNotClean) || !strings.Contains(out, fmt.Sprintf("slot %d (offset %d)", slot.Slot, slot.Offset)) || !strings.Contains(out, "[label-checksum]") {
		t.Fatalf("check: %v\n%s", err, out)
	}
	var ck checkJSON
	cliJSON(t, &ck, "label", "check", p, "--repair")
	if !ck.Clean || ck.Repair == nil || !reflect.DeepEqual(ck.Repair.Freed, []uint32{slot.Slot}) {
		t.Fatalf("repair: %+v", ck)
	}
	if out := cli(t, "label", "list", p); !bytes.Contains([]byte(out), []byte("0 namespace(s)")) {
		t.Errorf("list after repair:\n%s", out)
	}
}

// TestLabelLockedByOtherProcess: the lock of another process (this test
// binary re-run as a holder, standing in for a VM) refuses edits; once it
// exits the edit goes through.
func TestLabelLockedByOtherProcess(t *testing.T) {
	if p := os.Getenv("NVDIMM_TEST_HOLD_LOCK"); p != "" {
		b, err := memfile.Open(p, memfile.OpenOptions{})
		if err == nil {
			err = b.Lock(memfile.LockExclusive, false)
		}
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("locked")
		_, _ = io.Copy(io.Discard, os.Stdin) // hold until the parent closes stdin
		os.Exit(0)
	}
	p := newBacking(t)
	cli(t, "label", "init", p)
	cmd := exec.Command(os.Args[0], "-test.run=^TestLabelLockedByOtherProcess$")
	cmd.Env = append(os.Environ(), "NVDIMM_TEST_HOLD_LOCK="+p)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "locked\n" {
		t.Fatalf("holder: %q %v", line, err)
	}
	before := fingerprint(t, p)
	_, err = runMemfileCLI(t, "label", "create", p, "--name", "a", "--size", "16M", "--slot", "0")
	if !errors.Is(err, memfile.ErrLocked) || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("create while another process holds the lock: %v", err)
	}
	if fingerprint(t, p) != before {
		t.Fatal("refused create changed the backing")
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("holder: %v", err)
	}
	cli(t, "label", "create", p, "--name", "a", "--size", "16M", "--slot", "0")
}

// TestLabelSizeFlagConflictsWithRecord: a --label-size (or --align) the
// backing's metadata record contradicts, or one below QEMU's minimum, is
// refused by reading and editing verbs instead of silently replaced by
// the recorded one; the recorded size itself is accepted.
func TestLabelSizeFlagConflictsWithRecord(t *testing.T) {
	p := newBacking(t)
	cli(t, "label", "init", p)
	before := fingerprint(t, p)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"label", "list", p, "--label-size", "64K"}, "--label-size 64 KiB is below QEMU's minimum of 128 KiB; the label-size recorded in " + p + ".nvdimm.json is 128 KiB: omit --label-size"},
		{[]string{"label", "list", p, "--label-size", "256K"}, "--label-size 256 KiB conflicts with the label-size 128 KiB recorded in " + p + ".nvdimm.json"},
		{[]string{"label", "check", p, "--label-size", "256K"}, "conflicts with the label-size 128 KiB"},
		{[]string{"label", "create", p, "--name", "x", "--size", "16M", "--slot", "0", "--label-size", "1M"}, "--label-size 1 MiB conflicts"},
		{[]string{"label", "infoblock", p, "--label-size", "256K"}, "conflicts with the label-size 128 KiB"},
		{[]string{"inspect", p, "--label-size", "64K"}, "below QEMU's minimum"},
		{[]string{"inspect", p, "--align", "4K"}, "--align 4 KiB conflicts with the align 2 MiB recorded"},
		{[]string{"qemu-args", p, "--label-size", "256K"}, "conflicts with the label-size 128 KiB"},
	} {
		_, err := runMemfileCLI(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err = %v, want %q", c.args, err, c.want)
		}
	}
	if fingerprint(t, p) != before {
		t.Fatal("refused verbs changed the backing")
	}
	cli(t, "label", "list", p, "--label-size", "128K")
	cli(t, "inspect", p, "--label-size", "128K", "--align", "2M")
}
