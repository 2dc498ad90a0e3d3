package memfile

import (
	"strings"
	"testing"
)

func TestComputeLayoutQEMURules(t *testing.T) {
	cases := []struct {
		name             string
		p, l, a          uint64
		wantS, wantLabel uint64
		wantWarn         []string // substrings that must appear in some warning
		noWarn           bool
	}{
		{name: "4G no labels 2M", p: 4 * GiB, l: 0, a: 2 * MiB, wantS: 4 * GiB, wantLabel: 4 * GiB, noWarn: true},
		{name: "1G 128K labels 2M", p: GiB, l: 128 * KiB, a: 2 * MiB, wantS: GiB + 128*KiB, wantLabel: GiB, noWarn: true},
		{name: "4K pages", p: 512 * MiB, l: 128 * KiB, a: 4 * KiB, wantS: 512*MiB + 128*KiB, wantLabel: 512 * MiB, wantWarn: []string{"below 2 MiB"}},
		{name: "2M hugepages", p: 256 * MiB, l: 128 * KiB, a: 2 * MiB, wantS: 256*MiB + 128*KiB, wantLabel: 256 * MiB, noWarn: true},
		{name: "1G hugepages", p: 2 * GiB, l: 128 * KiB, a: GiB, wantS: 2*GiB + 128*KiB, wantLabel: 2 * GiB, noWarn: true},
		{name: "devdax 2M", p: 16 * GiB, l: 2 * MiB, a: 2 * MiB, wantS: 16*GiB + 2*MiB, wantLabel: 16 * GiB, noWarn: true},
		{name: "not 16M multiple", p: 1000 * MiB, l: 0, a: 2 * MiB, wantS: 1000 * MiB, wantLabel: 1000 * MiB, wantWarn: []string{"not a multiple of 16 MiB"}},
		{name: "label not page multiple", p: 16 * MiB, l: 128*KiB + 100, a: 2 * MiB, wantS: 16*MiB + 132*KiB, wantLabel: 16*MiB + 132*KiB - 128*KiB - 100, wantWarn: []string{"unused"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l, err := ComputeLayout(c.p, c.l, c.a)
			if err != nil {
				t.Fatal(err)
			}
			if l.BackingSize != c.wantS || l.LabelOffset != c.wantLabel || l.GuestSize != c.p {
				t.Fatalf("got S=%d label@%d P=%d, want S=%d label@%d P=%d", l.BackingSize, l.LabelOffset, l.GuestSize, c.wantS, c.wantLabel, c.p)
			}
			// QEMU's rule: align_down(S - L, A) == P.
			if (l.BackingSize-c.l)&^(c.a-1) != c.p {
				t.Fatalf("align_down(S-L, A) = %d, want %d", (l.BackingSize-c.l)&^(c.a-1), c.p)
			}
			if c.noWarn && len(l.Warnings) != 0 {
				t.Fatalf("unexpected warnings %q", l.Warnings)
			}
			for _, w := range c.wantWarn {
				if !strings.Contains(strings.Join(l.Warnings, "\n"), w) {
					t.Fatalf("warnings %q lack %q", l.Warnings, w)
				}
			}
		})
	}
}

func TestComputeLayoutRefusals(t *testing.T) {
	cases := []struct {
		name    string
		p, l, a uint64
		want    string
	}{
		{"size 0", 0, 0, 2 * MiB, "size 0"},
		{"label 64K", GiB, 64 * KiB, 2 * MiB, "label-size 64 KiB is below QEMU's minimum of 128 KiB"},
		{"not multiple of align", 1001 * MiB, 0, 2 * MiB, "size 1001 MiB is not a multiple of the align 2 MiB: QEMU would give the guest only 1000 MiB; use --size 1000M or 1002M"},
		{"below align", MiB, 0, 2 * MiB, "use --size 2M"},
		{"align not power of two", GiB, 0, 3 * MiB, "not a power of two"},
		{"align below page", GiB, 0, 512, "below the page size"},
		{"align 0", GiB, 0, 0, "align 0"},
		{"overflow", ^uint64(0) &^ (4*KiB - 1), 128 * KiB, 4 * KiB, "plus label-size 128 KiB is beyond 8 EiB (2^63-1 bytes), the largest file Linux supports"},
		{"beyond a file", 1 << 63, 0, 2 * MiB, "size 8388608 TiB is beyond 8 EiB"},
		{"label beyond a file", GiB, 1 << 63, 2 * MiB, "is beyond 8 EiB"},
		// Once the size fits in a file the advice is a size that does too:
		// no "or 0" from a wrapped round-up.
		{"unaligned near the limit", MaxBackingSize - MiB, 0, 2 * MiB, "QEMU would give the guest only 8796093022206 MiB; use --size 8796093022206M"},
		{"unaligned near the limit with labels", MaxBackingSize - 128*KiB - 4*KiB, 128 * KiB, 2 * MiB, "; use --size 8796093022206M"},
		// The size rule comes before the alignment rule.
		{"below the label", 64 * KiB, 128 * KiB, 2 * MiB, "size 64 KiB is below the label-size 128 KiB: --size is what the guest sees, not counting the label area; use a size of at least 2 MiB"},
		{"below the label, 1G align", 64 * KiB, 128 * KiB, GiB, "use a size of at least 1 GiB"},
		{"round-down below the label", 3 * MiB, 2*MiB + 512*KiB, 2 * MiB, "use --size 4M"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ComputeLayout(c.p, c.l, c.a)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to contain %q", err, c.want)
			}
			// Every suggested size must itself be accepted.
			if _, fix, ok := strings.Cut(err.Error(), "use --size "); ok {
				for _, s := range strings.Split(fix, " or ") {
					v, perr := ParseSize(s)
					if perr != nil {
						t.Fatalf("suggestion %q: %v", s, perr)
					}
					if _, err := ComputeLayout(v, c.l, c.a); err != nil {
						t.Errorf("suggested --size %s is refused: %v", s, err)
					}
				}
			}
		})
	}
}

func TestLayoutFromBacking(t *testing.T) {
	// A file made elsewhere: QEMU rounds the guest range down.
	l, err := LayoutFromBacking(GiB+3*MiB, 128*KiB, 2*MiB)
	if err != nil {
		t.Fatal(err)
	}
	if l.GuestSize != GiB+2*MiB || l.LabelOffset != GiB+3*MiB-128*KiB {
		t.Fatalf("got %+v", l)
	}
	if !strings.Contains(strings.Join(l.Warnings, "\n"), "unused") {
		t.Fatalf("warnings %q lack the unused tail", l.Warnings)
	}
	for _, c := range []struct {
		s, l, a uint64
		want    string
	}{
		{0, 0, 2 * MiB, "backing size 0"},
		{128 * KiB, 128 * KiB, 2 * MiB, "not larger than the label-size"},
		{MiB, 128 * KiB, 2 * MiB, "the guest would see 0 bytes"},
		{GiB, 4 * KiB, 2 * MiB, "below QEMU's minimum"},
	} {
		if _, err := LayoutFromBacking(c.s, c.l, c.a); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("LayoutFromBacking(%d, %d, %d) = %v, want %q", c.s, c.l, c.a, err, c.want)
		}
	}
}

func TestCheckGuestMappable(t *testing.T) {
	if err := CheckGuestMappable(Layout{GuestSize: 64 * MiB, Align: 2 * MiB}); err != nil {
		t.Fatal(err)
	}
	if err := CheckGuestMappable(Layout{GuestSize: 64*MiB + 4*KiB, Align: 4 * KiB}); err == nil || !strings.Contains(err.Error(), "misaligned, unable to map") {
		t.Fatalf("err = %v", err)
	}
	if err := CheckGuestMappable(Layout{GuestSize: 64 * MiB, Align: 4 * KiB}); err == nil || !strings.Contains(err.Error(), "--align 2M") {
		t.Fatalf("err = %v", err)
	}
}

func TestCheckSHMEMRegionSize(t *testing.T) {
	for _, ok := range []uint64{4 * KiB, 2 * MiB, 256 * MiB, 4 * GiB} {
		if err := CheckSHMEMRegionSize(ok); err != nil {
			t.Errorf("%d: %v", ok, err)
		}
	}
	for size, want := range map[uint64]string{
		0:                      "size 0",
		3 * MiB:                "3 MiB is not a power of two: QEMU aborts on it because the regions share one PCI BAR; use 2 MiB or 4 MiB",
		256*MiB + 64*MiB:       "not a power of two",
		1000:                   "not a multiple of the page size",
		2*MiB + 128*KiB + 4096: "not a power of two",
	} {
		if err := CheckSHMEMRegionSize(size); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%d: err = %v, want %q", size, err, want)
		}
	}
}

// FuzzLayoutFromBacking checks QEMU's invariants for any input: no panic,
// and an accepted layout always satisfies align_down(S-L, A) == P.
func FuzzLayoutFromBacking(f *testing.F) {
	f.Add(uint64(GiB+128*KiB), uint64(128*KiB), uint64(2*MiB))
	f.Add(uint64(0), uint64(0), uint64(0))
	f.Add(^uint64(0), uint64(128*KiB), uint64(1)<<63)
	f.Add(uint64(3*MiB), uint64(64*KiB), uint64(4*KiB))
	f.Fuzz(func(t *testing.T, s, l, a uint64) {
		lay, err := LayoutFromBacking(s, l, a)
		if err != nil {
			return
		}
		if lay.GuestSize == 0 || lay.GuestSize%a != 0 || lay.GuestSize > s-l || s-l-lay.GuestSize >= a {
			t.Fatalf("bad layout %+v for S=%d L=%d A=%d", lay, s, l, a)
		}
		if lay.LabelOffset+lay.LabelSize != s {
			t.Fatalf("label area %d+%d does not end at %d", lay.LabelOffset, lay.LabelSize, s)
		}
		// Going back from P must give a backing QEMU maps to the same P.
		back, err := ComputeLayout(lay.GuestSize, l, a)
		if err == nil && back.GuestSize != lay.GuestSize {
			t.Fatalf("round trip %d -> %d", lay.GuestSize, back.GuestSize)
		}
	})
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"4G", "512M", "128K", "131072", "0x1000", "1.5G", "", "99999999999999999999T"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseSize(s)
		if err != nil {
			return
		}
		// Whatever parses must parse again from its formatted form.
		txt := FormatSize(v)
		txt = strings.ReplaceAll(strings.TrimSuffix(txt, " B"), " ", "")
		if w, err := ParseSize(txt); err != nil || w != v {
			t.Fatalf("ParseSize(%q) = %d; FormatSize round trip %q = %d, %v", s, v, txt, w, err)
		}
	})
}
