package memfile

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestMetaRoundTrip(t *testing.T) {
	p := filepath.Join(t.TempDir(), "a.img")
	lay, err := ComputeLayout(GiB, 128*KiB, 2*MiB)
	if err != nil {
		t.Fatal(err)
	}
	m := &Meta{Kind: KindFile, Layout: lay, Mode: "fsdax", UUID: "0b6b6a4e-7f2c-4d47-9e0a-1c1b8f0c2d3e", Namespace: "ns0", Slot: 2}
	if err := WriteMeta(p, m); err != nil {
		t.Fatal(err)
	}
	got, err := ReadMeta(p)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != MetaVersion || got.Layout.GuestSize != GiB || got.Mode != "fsdax" || got.Slot != 2 || got.Namespace != "ns0" || got.UUID != m.UUID {
		t.Fatalf("round trip: %+v", got)
	}
	if _, err := ReadMeta(filepath.Join(t.TempDir(), "none")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing record: err = %v, want fs.ErrNotExist", err)
	}
}

func TestParseMetaRefusals(t *testing.T) {
	good := `{"version":1,"kind":"file","layout":{"guest_size":1073741824,"label_size":131072,"align":2097152,"backing_size":1073872896,"label_offset":1073741824},"read_only":false,"slot":-1}`
	if _, err := ParseMeta([]byte(good), "x"); err != nil {
		t.Fatal(err)
	}
	cases := map[string]string{
		strings.Replace(good, `"version":1`, `"version":2`, 1):                            "field version",
		strings.Replace(good, `"kind":"file"`, `"kind":"floppy"`, 1):                      "field kind",
		strings.Replace(good, `"slot":-1`, `"slot":300`, 1):                               "field slot",
		strings.Replace(good, `"read_only":false`, `"read_only":false,"mode":"weird"`, 1): "field mode",
		strings.Replace(good, `"guest_size":1073741824`, `"guest_size":1`, 1):             "do not match QEMU's",
		strings.Replace(good, `"label_size":131072`, `"label_size":65536`, 1):             "below QEMU's minimum",
		strings.Replace(good, `"slot":-1`, `"slot":-1,"bogus":1`, 1):                      "unknown field",
		good + "{}": "trailing data",
		`[]`:        "cannot unmarshal",
		``:          "EOF",
	}
	for in, want := range cases {
		if _, err := ParseMeta([]byte(in), "rec.json"); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "rec.json") {
			t.Errorf("ParseMeta(%.60q...) = %v, want %q and the name", in, err, want)
		}
	}
}

func TestMetaImageMarker(t *testing.T) {
	old := `{"version":1,"kind":"file","layout":{"guest_size":4194304,"label_size":0,"align":2097152,"backing_size":4194304,"label_offset":4194304},"read_only":true,"slot":-1}`
	m, err := ParseMeta([]byte(old), "old.json")
	if err != nil || m.Image != "" {
		t.Fatalf("record without the image field: %+v, %v", m, err)
	}
	if r := m.ReadOnlyReason(); !strings.Contains(r, "marks it read-only") {
		t.Errorf("reason for a plain read-only record: %q", r)
	}
	withImage := strings.Replace(old, `"slot":-1`, `"slot":-1,"image":"base"`, 1)
	m, err = ParseMeta([]byte(withImage), "new.json")
	if err != nil || m.Image != "base" {
		t.Fatalf("record with an image: %+v, %v", m, err)
	}
	if r := m.ReadOnlyReason(); !strings.Contains(r, `image "base"`) || !strings.Contains(r, "image clone base") {
		t.Errorf("reason for an image record: %q", r)
	}
	for in, want := range map[string]string{
		strings.Replace(withImage, `"read_only":true`, `"read_only":false`, 1): "read_only is false",
		strings.Replace(withImage, `"image":"base"`, `"image":"../x"`, 1):      "field image",
	} {
		if _, err := ParseMeta([]byte(in), "rec.json"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseMeta(%s) = %v, want %q", in, err, want)
		}
	}
	// A writable record is written without the marker; a read-only one keeps it.
	p := filepath.Join(t.TempDir(), "a.img")
	if err := WriteMeta(p, &Meta{Kind: KindFile, Layout: m.Layout, Slot: NoSlot, Image: "base"}); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadMeta(p); err != nil || got.Image != "" {
		t.Errorf("writable record kept the marker: %+v, %v", got, err)
	}
	if err := WriteMeta(p, &Meta{Kind: KindFile, Layout: m.Layout, Slot: NoSlot, ReadOnly: true, Image: "base"}); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadMeta(p); err != nil || got.Image != "base" {
		t.Errorf("read-only record lost the marker: %+v, %v", got, err)
	}
	var plain *Meta
	if plain.ReadOnlyReason() != "" || (&Meta{}).ReadOnlyReason() != "" {
		t.Error("a writable backing has a read-only reason")
	}
}

func TestReadMetaTooLarge(t *testing.T) {
	p := filepath.Join(t.TempDir(), "a.img")
	if err := os.WriteFile(MetaPath(p), make([]byte, maxMetaSize+10), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadMeta(p); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("err = %v", err)
	}
}

func FuzzParseMeta(f *testing.F) {
	f.Add([]byte(`{"version":1,"kind":"file","layout":{"guest_size":1073741824,"label_size":131072,"align":2097152,"backing_size":1073872896,"label_offset":1073741824},"read_only":false,"slot":-1}`))
	f.Add([]byte(`{"version":1,"kind":"devdax","layout":{"guest_size":0,"label_size":0,"align":0,"backing_size":0,"label_offset":0},"slot":0}`))
	f.Add([]byte(`{"version":1,"kind":"file","layout":{"guest_size":4194304,"label_size":0,"align":2097152,"backing_size":4194304,"label_offset":4194304},"read_only":true,"slot":-1,"image":"base"}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"version":1,"kind":"file","layout":{"guest_size":2097152,"label_size":0,"align":2097152,"backing_size":2097152,"label_offset":2097152},"slot":-1,"mode":"fsdax","uuid":"u","namespace":"n","prealloc":true,"created":"2026-01-02T03:04:05.5+01:00"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseMeta(data, "fuzz")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "metadata fuzz: ") {
				t.Fatalf("error %q does not name the record", err)
			}
			return
		}
		// What was accepted encodes to a record that parses to the same
		// thing (nothing accepted is lost or changed by WriteMeta's
		// encoding).
		enc, err := json.Marshal(m)
		if err != nil {
			t.Fatalf("encode an accepted record: %v", err)
		}
		back, err := ParseMeta(enc, "re-encoded")
		if err != nil {
			t.Fatalf("re-encoded record %s refused: %v", enc, err)
		}
		if !back.Created.Equal(m.Created) {
			t.Fatalf("created %v came back as %v", m.Created, back.Created)
		}
		m2, b2 := *m, *back
		m2.Created, b2.Created = time.Time{}, time.Time{}
		if len(m2.Layout.Warnings) == 0 {
			m2.Layout.Warnings = nil // [] is omitted, and comes back as nil
		}
		if !reflect.DeepEqual(m2, b2) {
			t.Fatalf("round trip: %+v came back as %+v", m2, b2)
		}
		// An accepted record is consistent with QEMU's rules.
		l := m.Layout
		if l.GuestSize == 0 || l.LabelOffset+l.LabelSize != l.BackingSize || (l.BackingSize-l.LabelSize)&^(l.Align-1) != l.GuestSize {
			t.Fatalf("accepted inconsistent layout %+v", l)
		}
		if m.Image != "" && !m.ReadOnly {
			t.Fatalf("accepted a writable record of image %q", m.Image)
		}
	})
}
