package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nvdimm-backend/nvdimm-backend/label/backing"
	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

// TestMemfileBackingsProvision: without a Provision override the daemon
// writes the namespace through package label/backing (labels for the
// requested slot, the info block, the metadata record); a refused
// namespace is a 400-class error and leaves no backing behind; an
// override is called with the request.
func TestMemfileBackingsProvision(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	p := filepath.Join(dir, "db.img")
	info, err := MemfileBackings{}.Prepare(ctx, BackingSpec{Path: p, Size: 64 << 20, LabelSize: 128 << 10, Namespace: "db", Mode: "devdax", Slot: 2})
	if err != nil {
		t.Fatal(err)
	}
	if !info.Created || info.Slot == nil || *info.Slot != 2 {
		t.Fatalf("prepare: %+v", info)
	}
	a, err := backing.Open(p, backing.Options{Slot: memfile.NoSlot})
	if err != nil {
		t.Fatal(err)
	}
	l, err := a.List()
	a.Close()
	if err != nil || len(l.Namespaces) != 1 || l.Namespaces[0].Name != "db" || l.Namespaces[0].Mode != "devdax" ||
		l.Namespaces[0].InfoBlock == nil || !l.Namespaces[0].InfoBlock.Valid || l.Namespaces[0].Size != 64<<20 {
		t.Fatalf("labels: %+v %v", l, err)
	}
	if m, err := memfile.ReadMeta(p); err != nil || m.Namespace != "db" || m.Mode != "devdax" || m.Slot != 2 || m.UUID != l.Namespaces[0].UUID {
		t.Fatalf("metadata: %+v %v", m, err)
	}

	// A label-less backing gets only the info block; raw is refused there.
	q := filepath.Join(dir, "raw.img")
	_, err = MemfileBackings{}.Prepare(ctx, BackingSpec{Path: q, Size: 64 << 20, Namespace: "r", Mode: "raw", Slot: -1})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `provisioning namespace "r"`) || !strings.Contains(err.Error(), "needs a label area") {
		t.Fatalf("raw without a label area: %v", err)
	}
	for _, f := range []string{q, memfile.MetaPath(q)} {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("refused provisioning left %s: %v", f, err)
		}
	}
	if _, err := (MemfileBackings{}).Prepare(ctx, BackingSpec{Path: q, Size: 64 << 20, Namespace: "f", Slot: -1}); err != nil {
		t.Fatal(err)
	}
	if ibs := backing.InspectInfoBlocks(q, memfile.OpenOptions{}); len(ibs) != 1 || !ibs[0].Found || ibs[0].InfoBlock.Kind != "fsdax" {
		t.Fatalf("label-less info block: %+v", ibs)
	}

	// An override replaces the default.
	var got []any
	mb := MemfileBackings{Provision: func(b *memfile.Backing, ns, mode string, slot int) error {
		got = append(got, b.Path(), ns, mode, slot)
		return nil
	}}
	o := filepath.Join(dir, "o.img")
	if _, err := mb.Prepare(ctx, BackingSpec{Path: o, Size: 16 << 20, LabelSize: 128 << 10, Namespace: "n", Mode: "fsdax", Slot: 1}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || got[0] != o || got[1] != "n" || got[2] != "fsdax" || got[3] != 1 {
		t.Fatalf("override called with %v", got)
	}
	if m, err := memfile.ReadMeta(o); err != nil || m.Namespace != "" {
		t.Fatalf("the default ran beside the override: %+v %v", m, err)
	}
}
