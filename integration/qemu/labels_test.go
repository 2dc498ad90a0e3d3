//go:build integration

package qemu

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// guestLabelCase is a label area written entirely by the guest.
type guestLabelCase struct {
	name    string
	version string // index version we expect: "1.1" or "1.2"
	script  string
	// live namespaces (name -> mode) after the script; destroyed ones are absent
	live map[string]string
	dead []string // destroyed namespaces: the host must not list them
}

const labelSize = 128 << 10

var guestLabelCases = []guestLabelCase{
	{
		// ndctl autolabels a blank area with a v1.2 index when the seed
		// namespace is reconfigured; the kernel writes the labels. That first
		// whole-region namespace is destroyed to make room for two.
		name:    "v1.2-fsdax-devdax",
		version: "1.2",
		script: `
ndctl create-namespace -f -e namespace0.0 -m fsdax -n seed
ndctl destroy-namespace -f namespace0.0
ndctl create-namespace -r region0 -m fsdax -s 256M -n fsns
ndctl create-namespace -r region0 -m devdax -s 128M -n daxns
`,
		live: map[string]string{"fsns": "fsdax", "daxns": "devdax"},
	},
	{
		// ndctl init-labels writes a v1.1 index; one namespace is destroyed.
		name:    "v1.1-destroyed",
		version: "1.1",
		script: `
ndctl disable-region region0
ndctl init-labels -f nmem0
ndctl enable-region region0
ndctl create-namespace -r region0 -m fsdax -s 128M -n keep
dev=$(ndctl create-namespace -r region0 -m devdax -s 128M -n gone | sed -n 's/.*"dev":"\([^"]*\)".*/\1/p')
test -n "$dev"
ndctl destroy-namespace -f "$dev"
`,
		live: map[string]string{"keep": "fsdax"},
		dead: []string{"gone"},
	},
}

const labelReportScript = `
ndctl list -NRDi > /host/ndctl-list.json
ndctl list -NRDiv > /host/ndctl-list-v.json
ndctl read-labels -j nmem0 > /host/read-labels-nmem0.json
cat /sys/bus/nd/devices/region0/set_cookie > /host/set_cookie.txt
`

// ndctlNamespace is the part of `ndctl list -N` output the scenarios use.
type ndctlNamespace struct {
	Dev     string `json:"dev"`
	Mode    string `json:"mode"`
	Size    uint64 `json:"size"`
	UUID    string `json:"uuid"`     // the info block's uuid for fsdax/devdax
	RawUUID string `json:"raw_uuid"` // the label's uuid (ndctl list -v)
	Name    string `json:"name"`
	Chardev string `json:"chardev"`
}

// LabelUUID is the namespace uuid the labels carry: ndctl's "uuid" is the
// PFN/DAX info block's for fsdax and devdax; "raw_uuid" (verbose) is the label's.
func (ns ndctlNamespace) LabelUUID() string {
	if ns.RawUUID != "" {
		return ns.RawUUID
	}
	return ns.UUID
}

// ndctlNamespaces extracts the namespaces from `ndctl list -NRDi` output,
// whatever its nesting (regions with namespaces, or a bare list).
func ndctlNamespaces(t *testing.T, data []byte) []ndctlNamespace {
	t.Helper()
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatalf("ndctl list output %q: %v", data, err)
	}
	var out []ndctlNamespace
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case []any:
			for _, e := range x {
				walk(e)
			}
		case map[string]any:
			if d, ok := x["dev"].(string); ok && strings.HasPrefix(d, "namespace") {
				b, _ := json.Marshal(x)
				var ns ndctlNamespace
				json.Unmarshal(b, &ns) //nolint:errcheck
				out = append(out, ns)
				return
			}
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(v)
	return out
}

// TestGuestLabels lets the guest write the label area (ndctl autolabel =
// v1.2, ndctl init-labels = v1.1 with a destroyed namespace) and checks the
// host's view of the bytes against what the guest's ndctl reported.
func TestGuestLabels(t *testing.T) {
	t.Parallel()
	for _, tc := range guestLabelCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			back := sparseFile(t, filepath.Join(dir, "pmem0.img"), 512<<20+labelSize)
			res := mustBoot(t, &VM{
				NVDIMMs: []NVDIMM{{Path: back, LabelSize: labelSize, Slot: 0}},
				Script:  tc.script + labelReportScript,
			})
			list, err := res.Read("ndctl-list-v.json")
			if err != nil {
				t.Fatal(err)
			}
			nss := ndctlNamespaces(t, list)
			got := map[string]string{}
			for _, ns := range nss {
				if ns.Name != "" {
					got[ns.Name] = ns.Mode
				}
			}
			if !reflect.DeepEqual(got, tc.live) {
				t.Fatalf("guest namespaces %v, want %v\n%s", got, tc.live, list)
			}
			area := readLabelArea(t, back)
			if v := indexVersion(area); v != tc.version {
				t.Errorf("label index version %s, want %s", v, tc.version)
			}
			for _, name := range tc.dead {
				nss = append(nss, ndctlNamespace{Name: name, Mode: "destroyed"})
			}
			checkHostLabelView(t, back, nss, "--label-size", "128K", "--slot", "0")
			if *capture {
				writeLabelCapture(t, "guest-"+tc.name, area, res)
			}
		})
	}
}

// readLabelArea returns the last labelSize bytes of the backing, where QEMU
// keeps the label area.
func readLabelArea(t *testing.T, back string) []byte {
	t.Helper()
	f, err := os.Open(back)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	area := make([]byte, labelSize)
	if _, err := f.ReadAt(area, fi.Size()-labelSize); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return area
}

// indexVersion reads the major.minor of the first valid-looking index block
// (signature "NAMESPACE_INDEX\0"; major at offset 0x3c, minor at 0x3e).
func indexVersion(area []byte) string {
	if len(area) < 0x40 || string(area[:16]) != "NAMESPACE_INDEX\x00" {
		return "none"
	}
	return fmt.Sprintf("%d.%d", binary.LittleEndian.Uint16(area[0x3c:]), binary.LittleEndian.Uint16(area[0x3e:]))
}

// checkHostLabelView runs `label list --json` and `label check` on the
// powered-off backing once the label verbs exist: every namespace the guest
// listed must appear there with its name, uuid and mode, and check is clean.
func checkHostLabelView(t *testing.T, back string, nss []ndctlNamespace, flags ...string) {
	t.Helper()
	out := host(t, append([]string{"--json", "label", "list", back}, flags...)...)
	var v any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("label list --json: %v\n%s", err, out)
	}
	for _, ns := range nss {
		if ns.Name == "" {
			continue
		}
		obj := findObject(v, "name", ns.Name)
		if ns.Mode == "destroyed" {
			if obj != nil {
				t.Errorf("label list shows namespace %q, which the guest destroyed: %v", ns.Name, obj)
			}
			continue
		}
		if obj == nil {
			t.Errorf("label list: no namespace named %q (guest: uuid %s, mode %s)\n%s", ns.Name, ns.UUID, ns.Mode, out)
			continue
		}
		if !strings.Contains(strings.ToLower(fmt.Sprint(obj)), strings.ToLower(ns.LabelUUID())) {
			t.Errorf("label list: namespace %q lacks the guest's uuid %s: %v", ns.Name, ns.LabelUUID(), obj)
		}
		if m, ok := obj["mode"].(string); ok && m != ns.Mode {
			t.Errorf("label list: namespace %q mode %q, guest says %q", ns.Name, m, ns.Mode)
		}
	}
	if o, e, err := hostTry(t, append([]string{"label", "check", back}, flags...)...); err != nil {
		t.Errorf("label check on a guest-written area: %v\n%s%s", err, o, e)
	}
}

// findObject finds, anywhere in v, a JSON object whose key equals val.
func findObject(v any, key, val string) map[string]any {
	switch x := v.(type) {
	case []any:
		for _, e := range x {
			if o := findObject(e, key, val); o != nil {
				return o
			}
		}
	case map[string]any:
		if s, ok := x[key].(string); ok && s == val {
			return x
		}
		for _, e := range x {
			if o := findObject(e, key, val); o != nil {
				return o
			}
		}
	}
	return nil
}

func writeLabelCapture(t *testing.T, name string, area []byte, res *Result) {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(root, "label", "testdata", name)
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, "label.bin"), area, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ndctl-list.json", "ndctl-list-v.json", "read-labels-nmem0.json", "set_cookie.txt"} {
		b, err := res.Read(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("captured label/testdata/%s", name)
}
