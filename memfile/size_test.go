package memfile

import "testing"

func TestParseSize(t *testing.T) {
	good := map[string]uint64{
		"4G": 4 * GiB, "512M": 512 * MiB, "128K": 128 * KiB, "131072": 131072,
		"2MiB": 2 * MiB, "1t": TiB, "0x1000": 4096, " 16m ": 16 * MiB, "3GB": 3 * GiB,
	}
	for in, want := range good {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "G", "-1", "1.5G", "12X", "99999999999999999999", "20000000T"} {
		if v, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) = %d, want error", bad, v)
		}
	}
}

func TestFormatSize(t *testing.T) {
	cases := map[uint64]string{128 * KiB: "128 KiB", GiB: "1 GiB", 1000: "1000 B", 0: "0 B", 3 * MiB: "3 MiB", GiB + 4*KiB: "1048580 KiB"}
	for in, want := range cases {
		if got := FormatSize(in); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", in, got, want)
		}
	}
}
