package memfile

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestMapAndLabelArea(t *testing.T) {
	p := filepath.Join(t.TempDir(), "m.img")
	b, err := Create(p, CreateOptions{Size: 4 * MiB, LabelSize: 128 * KiB})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	m, unmap, err := Map(b, false)
	if err != nil {
		t.Fatal(err)
	}
	if uint64(len(m)) != b.Size() {
		t.Fatalf("mapped %d of %d", len(m), b.Size())
	}
	copy(m[100:], "guest data")
	a, err := b.LabelArea()
	if err != nil {
		t.Fatal(err)
	}
	if a.Size() != 128*KiB {
		t.Fatalf("area size %d", a.Size())
	}
	if _, err := a.WriteAt([]byte("NAMESPACE_INDEX\x00"), 0); err != nil {
		t.Fatal(err)
	}
	if err := a.Sync(); err != nil {
		t.Fatal(err)
	}
	// The label area is the last 128 KiB of the backing, seen through the map.
	if !bytes.Equal(m[4*MiB:4*MiB+15], []byte("NAMESPACE_INDEX")) {
		t.Fatalf("label not at S-L: %q", m[4*MiB:4*MiB+15])
	}
	if err := unmap(); err != nil {
		t.Fatal(err)
	}
	if err := unmap(); err != nil {
		t.Fatalf("second unmap: %v", err)
	}
	got := make([]byte, 10)
	if _, err := b.File().ReadAt(got, 100); err != nil || string(got) != "guest data" {
		t.Fatalf("mapped write not in file: %q %v", got, err)
	}
	// Out-of-range label access is refused, not clipped.
	for _, c := range []struct {
		n   int
		off int64
	}{{1, -1}, {1, 128 * KiB}, {2, 128*KiB - 1}, {1, 1 << 62}} {
		buf := make([]byte, c.n)
		if n, err := a.ReadAt(buf, c.off); err == nil || n != 0 || !errors.Is(err, io.EOF) {
			t.Errorf("ReadAt(%d, %d) = %d, %v", c.n, c.off, n, err)
		}
		if n, err := a.WriteAt(buf, c.off); err == nil || n != 0 {
			t.Errorf("WriteAt(%d, %d) = %d, %v", c.n, c.off, n, err)
		}
	}
	// The last byte is in range.
	if _, err := a.WriteAt([]byte{0xee}, 128*KiB-1); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(p)
	if fi.Size() != int64(b.Size()) {
		t.Fatalf("label write grew the file to %d", fi.Size())
	}

	// Read-only mapping of a read-only open.
	ro, err := Open(p, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	rm, runmap, err := Map(ro, true)
	if err != nil {
		t.Fatal(err)
	}
	defer runmap()
	if string(rm[100:110]) != "guest data" || rm[len(rm)-1] != 0xee {
		t.Fatal("read-only map content")
	}
}

func TestNoLabelArea(t *testing.T) {
	b, err := Create(filepath.Join(t.TempDir(), "n.img"), CreateOptions{Size: 2 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.LabelArea(); err == nil {
		t.Fatal("label area without labels")
	}
}
