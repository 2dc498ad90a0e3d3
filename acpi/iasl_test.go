package acpi

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// iaslFields disassembles table with iasl and returns its
// "FieldName : Value" lines in order, plus the tool's full output.
func iaslFields(t *testing.T, table []byte) ([][2]string, string) {
	t.Helper()
	iasl, err := exec.LookPath("iasl")
	if err != nil {
		t.Skip("iasl (Debian acpica-tools) not installed: cannot cross-check built tables")
	}
	dir := t.TempDir()
	in := filepath.Join(dir, "nfit.dat")
	if err := os.WriteFile(in, table, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(iasl, "-d", in)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("iasl -d: %v\n%s", err, out)
	}
	dsl, err := os.ReadFile(filepath.Join(dir, "nfit.dsl"))
	if err != nil {
		t.Fatalf("iasl wrote no nfit.dsl: %v\n%s", err, out)
	}
	var fields [][2]string
	sc := bufio.NewScanner(bytes.NewReader(dsl))
	for sc.Scan() {
		line := sc.Text()
		// "[02Ch 0044   2]                  Range Index : 0002", or a
		// decoded flag bit: "                 Device not armed : 1".
		rest := line
		if strings.HasPrefix(line, "[") {
			_, rest, _ = strings.Cut(line, "]")
		}
		name, val, ok := strings.Cut(rest, " : ")
		if !ok {
			continue
		}
		fields = append(fields, [2]string{strings.TrimSpace(name), strings.TrimSpace(val)})
	}
	return fields, string(out) + string(dsl)
}

// TestIASLDisassemblesBuiltTables: every table the builder makes for the
// golden topologies, and one with flush hints and capabilities,
// disassembles without complaint and with the expected field values.
func TestIASLDisassemblesBuiltTables(t *testing.T) {
	tops := map[string]QEMUTopology{
		"extras": {Persistence: "mem-ctrl", DIMMs: []QEMUDIMM{
			{Slot: 5, Addr: 1 << 33, Size: 1 << 30, Node: 2, Unarmed: true, FlushHints: []uint64{0xfed00000, 0xfed01000}},
		}},
	}
	for _, bin := range goldenTables(t) {
		_, g := loadGolden(t, bin)
		tops[filepath.Base(bin)] = g.topology()
	}
	for name, top := range tops {
		t.Run(name, func(t *testing.T) {
			b, err := BuildQEMU(top)
			if err != nil {
				t.Fatal(err)
			}
			fields, all := iaslFields(t, b)
			for _, bad := range []string{"Error", "Warning", "Invalid", "****", "Unknown"} {
				if strings.Contains(all, bad) {
					t.Errorf("iasl output contains %q:\n%s", bad, all)
				}
			}
			get := func(name string) []string {
				var vs []string
				for _, f := range fields {
					if f[0] == name {
						vs = append(vs, f[1])
					}
				}
				return vs
			}
			hex := func(v uint64, width int) string { return fmt.Sprintf("%0*X", width, v) }
			expect := func(name string, want []string) {
				t.Helper()
				got := get(name)
				if strings.Join(got, ",") != strings.Join(want, ",") {
					t.Errorf("iasl %q = %v, want %v", name, got, want)
				}
			}
			var handles, serials, bases, lengths, prox, regIdx []string
			for _, d := range top.DIMMs {
				handles = append(handles, hex(uint64(qemuHandle(d.Slot)), 8))
				serials = append(serials, hex(uint64(qemuSerial(d.Slot)), 8))
				bases = append(bases, hex(d.Addr, 16))
				lengths = append(lengths, hex(d.Size, 16))
				prox = append(prox, hex(uint64(d.Node), 8))
				regIdx = append(regIdx, hex(uint64(qemuDCRIndex(d.Slot)), 4))
			}
			expect("Signature", []string{`"NFIT"    [NVDIMM Firmware Interface Table]`})
			expect("Table Length", []string{hex(uint64(len(b)), 8)})
			expect("Checksum", []string{hex(uint64(b[9]), 2)})
			expect("Oem ID", []string{`"BOCHS "`})
			expect("Address Range Base", bases)
			expect("Address Range Length", lengths)
			expect("Proximity Domain", prox)
			expect("Device Handle", append(handles, flushHandles(top)...))
			expect("Serial Number", serials)
			expect("Region Index", regIdx)
			expect("Vendor Id", repeat("8086", len(top.DIMMs)))
			expect("Code", repeat("0301", len(top.DIMMs)))
			expect("Region Type GUID", repeat("66F0D379-B4F3-4074-AC43-0D3318B78CDB", len(top.DIMMs)))
			expect("Memory Map Attribute", repeat("0000000000008008", len(top.DIMMs)))
			expect("Device not armed", notArmed(top))
			rangeIdx := get("Range Index")
			if len(rangeIdx) != 2*len(top.DIMMs) {
				t.Errorf("Range Index values %v", rangeIdx)
			}
			if top.Persistence != "" {
				want := map[string]string{"cpu": "00000003", "mem-ctrl": "00000002"}[top.Persistence]
				expect("Capabilities (decoded below)", []string{want})
				expect("Highest Capability", []string{"01"})
			}
			for _, d := range top.DIMMs {
				for i, a := range d.FlushHints {
					if !strings.Contains(all, hex(a, 16)) {
						t.Errorf("flush hint %d address %#x not in iasl output", i, a)
					}
				}
				if len(d.FlushHints) > 0 {
					expect("Hint Count", []string{hex(uint64(len(d.FlushHints)), 4)})
				}
			}
			if got, err := strconv.ParseUint(get("Table Length")[0], 16, 32); err != nil || int(got) != len(b) {
				t.Errorf("Table Length %v", get("Table Length"))
			}
		})
	}
}

func repeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

func notArmed(top QEMUTopology) []string {
	var out []string
	for _, d := range top.DIMMs {
		out = append(out, map[bool]string{true: "1", false: "0"}[d.Unarmed])
	}
	return out
}

func flushHandles(top QEMUTopology) []string {
	var out []string
	for _, d := range top.DIMMs {
		if len(d.FlushHints) > 0 {
			out = append(out, fmt.Sprintf("%08X", qemuHandle(d.Slot)))
		}
	}
	return out
}
