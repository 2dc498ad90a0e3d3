package qemu

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/nvdimm-backend/nvdimm-backend/acpi"
)

// Fast checks of the harness's own pieces that need no guest and no build
// tag: they run in `make unit`.

// acpiTestdata holds the NFIT tables captured from real guests.
const acpiTestdata = "../../acpi/testdata"

func TestParseMarkers(t *testing.T) {
	cases := []struct {
		console string
		code    int
		output  string
	}{
		{"boot noise\r\n" + markBegin + "\r\nhello\r\n" + markExit + "3@@\r\n" + markEnd + "\r\n", 3, "hello\n"},
		{markBegin + "\n" + markExit + "0@@\n" + markEnd + "\n", 0, ""},
		{markBegin + "\nhello\n", -1, ""},                         // no exit marker: crashed
		{markBegin + "\n" + markExit + "0@@\n", -1, ""},           // no end marker: cut off
		{"hello\n" + markExit + "0@@\n" + markEnd + "\n", -1, ""}, // no begin marker
		// An exit status beyond int: no status (it used to read as the
		// clamped 9223372036854775807, a code the guest never printed).
		{markBegin + "\n" + markExit + "99999999999999999999@@\n" + markEnd + "\n", -1, ""},
	}
	for i, c := range cases {
		r := &Result{ExitCode: -1, Console: c.console}
		parseMarkers(r)
		if r.ExitCode != c.code || (c.code >= 0 && r.Output != c.output) {
			t.Errorf("case %d: exit %d output %q, want %d %q", i, r.ExitCode, r.Output, c.code, c.output)
		}
	}
}

// FuzzParseMarkers: the console is guest output. Whatever it holds, an
// exit code other than -1 is one the guest printed in an exit marker
// after the begin marker and before an end marker, and the output never
// contains an exit marker itself.
func FuzzParseMarkers(f *testing.F) {
	f.Add(markBegin + "\r\nhello\r\n" + markExit + "3@@\r\n" + markEnd + "\r\n")
	f.Add(markBegin + markExit + "0@@" + markEnd)
	f.Add(markBegin + "\n" + markExit + "99999999999999999999@@\n" + markEnd)
	f.Add(markEnd + markExit + "0@@" + markBegin + markExit + "-7@@" + markEnd)
	f.Add(markBegin + markExit + "007@@" + markEnd)
	f.Fuzz(func(t *testing.T, console string) {
		r := &Result{ExitCode: -1, Console: console}
		parseMarkers(r)
		if r.ExitCode == -1 {
			return
		}
		c := strings.ReplaceAll(console, "\r\n", "\n")
		b := strings.Index(c, markBegin)
		if b < 0 {
			t.Fatalf("exit %d without a begin marker", r.ExitCode)
		}
		rest := c[b+len(markBegin):]
		m := exitRE.FindStringSubmatchIndex(rest)
		if m == nil {
			t.Fatalf("exit %d: no exit marker after the begin marker", r.ExitCode)
		}
		digits := strings.TrimLeft(strings.TrimPrefix(rest[m[2]:m[3]], "-"), "0")
		if want := strings.TrimPrefix(strconv.Itoa(r.ExitCode), "-"); digits != want && !(digits == "" && want == "0") {
			t.Fatalf("exit %d from the marker %q", r.ExitCode, rest[m[0]:m[1]])
		}
		if !strings.Contains(rest[m[1]:], markEnd) {
			t.Fatalf("exit %d without an end marker after it", r.ExitCode)
		}
		if exitRE.MatchString(r.Output) {
			t.Fatalf("output %q holds an exit marker", r.Output)
		}
	})
}

// TestQEMUCookies checks the harness's cookie formula against the values
// real guests reported (reference digest, confirmed in guests).
func TestQEMUCookies(t *testing.T) {
	want := map[int][2]uint64{0: {0x002468ac00123456, 0x00ba90120012b4dc}, 1: {0x002468ae00123457, 0x00ba901c0012b4dd}}
	for slot, w := range want {
		c1, c2 := qemuCookies(slot)
		if c1 != w[0] || c2 != w[1] {
			t.Errorf("slot %d: cookies %#x %#x, want %#x %#x", slot, c1, c2, w[0], w[1])
		}
	}
}

func TestParseNFITSPAsCaptured(t *testing.T) {
	tbl, err := os.ReadFile(filepath.Join(acpiTestdata, "qemu-four-dimm.bin"))
	if err != nil {
		t.Fatal(err)
	}
	spas, err := parseNFITSPAs(tbl)
	if err != nil {
		t.Fatal(err)
	}
	var handles []uint32
	for _, s := range spas {
		handles = append(handles, s.handle)
		if s.index != uint16(s.handle*2) {
			t.Errorf("SPA index %d for handle %d, want %d", s.index, s.handle, s.handle*2)
		}
	}
	if len(handles) != 4 {
		t.Fatalf("handles %v", handles)
	}
	// Corruptions are errors, never panics.
	bad := append([]byte(nil), tbl...)
	bad[9]++
	if _, err := parseNFITSPAs(bad); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("bad checksum: %v", err)
	}
	if _, err := parseNFITSPAs(tbl[:100]); err == nil {
		t.Error("truncated table accepted")
	}
}

func FuzzParseNFITSPAs(f *testing.F) {
	for _, n := range []string{"qemu-one-dimm.bin", "qemu-four-dimm.bin", "qemu-persistence-cpu.bin"} {
		b, err := os.ReadFile(filepath.Join(acpiTestdata, n))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, false)
		f.Add(b, true)
	}
	f.Add([]byte("NFIT"), false)
	// With fix set, the length field and the checksum are made right
	// first, so that the fuzzer reaches the structure walk instead of
	// spending its time on the two header checks.
	f.Fuzz(func(t *testing.T, b []byte, fix bool) {
		if fix && len(b) >= acpi.HeaderSize && len(b) <= acpi.MaxTableSize {
			binary.LittleEndian.PutUint32(b[4:], uint32(len(b)))
			b[9] = acpi.Checksum(b)
		}
		got, err := parseNFITSPAs(b)
		// The acpi package's codec is the reference: the two readers were
		// written independently, so a disagreement on a field offset, the
		// walk or the checksum shows up here.
		n, aerr := acpi.ParseNFIT(b)
		if aerr != nil {
			if err == nil && len(b) <= acpi.MaxTableSize {
				t.Fatalf("harness accepted a table acpi refuses (%v): %+v", aerr, got)
			}
			return
		}
		want, orphan, ok := harnessModel(n)
		if !ok {
			return // a type-0/1 structure acpi refuses to decode; the harness reads it more loosely
		}
		if err != nil {
			if n.ChecksumOK && !orphan {
				t.Fatalf("harness refused a table acpi walks with a good checksum: %v", err)
			}
			return
		}
		if !n.ChecksumOK || orphan {
			t.Fatalf("harness accepted a table with checksum ok %v, memdev before its SPA %v", n.ChecksumOK, orphan)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("harness read %+v, acpi %+v", got, want)
		}
	})
}

// harnessModel derives what parseNFITSPAs must return from the acpi
// package's decoding: SPA ranges in table order, each with the handle and
// flags of the last memdev naming its index (the last SPA of that index).
// orphan is set when a memdev names an index no earlier SPA has; ok is
// false when a type-0 or type-1 structure did not decode in acpi.
func harnessModel(n *acpi.NFIT) (spas []nfitSPA, orphan, ok bool) {
	byIndex := map[uint16]int{}
	for _, s := range n.Structures {
		switch v := s.(type) {
		case *acpi.SPARange:
			byIndex[v.Index] = len(spas)
			spas = append(spas, nfitSPA{index: v.Index, proximity: v.ProximityDomain, base: v.Base, size: v.Length})
		case *acpi.MemDevMap:
			i, seen := byIndex[v.SPAIndex]
			if !seen {
				orphan = true
				continue
			}
			spas[i].handle, spas[i].flags = v.Handle, v.Flags
		case *acpi.RawStructure:
			if v.StructType == acpi.TypeSPA || v.StructType == acpi.TypeMemDev {
				return nil, false, false
			}
		}
	}
	return spas, orphan, true
}

// TestBackportsSourceDerived: install.sh derives the bookworm-backports
// source from the machine's own apt sources, never from a built-in host.
func TestBackportsSourceDerived(t *testing.T) {
	script, err := filepath.Abs("install.sh")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, file, body string
		want             []string // lines the stanza must have; nil = must fail
	}{
		{"deb822", "sources.list.d/debian.sources",
			"Types: deb\n# a comment\nURIs: file:///srv/mirror/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/example.gpg\n\n" +
				"Types: deb\nURIs: file:///srv/mirror/debian-security\nSuites: bookworm-security\nComponents: main\n",
			[]string{"URIs: file:///srv/mirror/debian", "Suites: bookworm-backports", "Signed-By: /usr/share/keyrings/example.gpg"}},
		{"security-first", "sources.list.d/a.sources",
			"Types: deb\nURIs: file:///srv/mirror/sec\nSuites: bookworm-security\n\nTypes: deb\nURIs: file:///srv/mirror/main\nSuites: bookworm\n",
			[]string{"URIs: file:///srv/mirror/main"}},
		{"one-line", "sources.list", "deb file:///srv/mirror/debian bookworm main\n",
			[]string{"URIs: file:///srv/mirror/debian"}},
		{"none", "sources.list", "deb file:///srv/mirror/debian trixie main\n", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			os.MkdirAll(filepath.Join(dir, "sources.list.d"), 0o755) //nolint:errcheck
			if err := os.WriteFile(filepath.Join(dir, c.file), []byte(c.body), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(script, "--print-backports-source")
			cmd.Env = append(os.Environ(), "NVDIMM_APT_DIR="+dir)
			out, err := cmd.Output()
			if c.want == nil {
				if err == nil {
					t.Fatalf("derived a source from no bookworm entry: %s", out)
				}
				return
			}
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			for _, w := range c.want {
				if !strings.Contains(string(out), w+"\n") {
					t.Errorf("stanza lacks %q:\n%s", w, out)
				}
			}
		})
	}
}
