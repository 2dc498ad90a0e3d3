package libvirthook

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/nvdimm-backend/nvdimm-backend/daemon"
)

// domainXML has the shapes libvirt documents for nvdimm and virtio-pmem
// memory devices; %s are the two source paths.
const domainXML = `<domain type='kvm'>
  <name>vm1</name>
  <uuid>c7a5fdbd-cdaf-9455-926a-d65c16db1809</uuid>
  <maxMemory slots='16' unit='KiB'>16777216</maxMemory>
  <memory unit='KiB'>1048576</memory>
  <cpu><numa><cell id='0' cpus='0-1' memory='1048576' unit='KiB'/></numa></cpu>
  <devices>
    <memory model='nvdimm' access='shared'>
      <source>
        <path>%s</path>
        <alignsize unit='KiB'>2048</alignsize>
        <pmem/>
      </source>
      <target>
        <size unit='KiB'>524416</size>
        <node>0</node>
        <label>
          <size unit='KiB'>128</size>
        </label>
      </target>
    </memory>
    <memory model='virtio-pmem' access='shared'>
      <source>
        <path>%s</path>
      </source>
      <target>
        <size unit='MiB'>64</size>
      </target>
    </memory>
  </devices>
</domain>`

func setup(t *testing.T) (Config, string) {
	t.Helper()
	root := t.TempDir()
	bd := filepath.Join(root, "backings")
	os.MkdirAll(bd, 0o700)
	c, err := daemon.NewConfiner([]string{bd})
	if err != nil {
		t.Fatal(err)
	}
	return Config{StateDir: filepath.Join(root, "state"), Confiner: c}, bd
}

func xmlFor(a, b string) string {
	return strings.Replace(strings.Replace(domainXML, "%s", a, 1), "%s", b, 1)
}

func TestParseDomainDocumentedShapes(t *testing.T) {
	d, err := ParseDomain(strings.NewReader(xmlFor("/b/nv.img", "/b/vp.img")))
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != "vm1" || d.Slots != 16 || len(d.Memories) != 2 || len(d.Cells) != 1 {
		t.Fatalf("domain %+v", d)
	}
	nv, vp := d.Memories[0], d.Memories[1]
	if nv.Model != "nvdimm" || nv.Path != "/b/nv.img" || nv.AlignSize != 2<<20 || !nv.PMem || nv.Size != 524416<<10 || nv.LabelSize != 128<<10 || nv.Node == nil || *nv.Node != 0 || nv.ReadOnly {
		t.Fatalf("nvdimm %+v", nv)
	}
	if vp.Model != "virtio-pmem" || vp.Size != 64<<20 || vp.LabelSize != 0 {
		t.Fatalf("virtio-pmem %+v", vp)
	}
	if err := d.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestCheckImpossibleSizes(t *testing.T) {
	base := xmlFor("/b/nv.img", "/b/vp.img")
	cases := []struct{ from, to, want string }{
		{"<size unit='KiB'>128</size>", "<size unit='KiB'>64</size>", "below QEMU's minimum of 128 KiB"},
		{"<size unit='KiB'>524416</size>", "<size unit='KiB'>128</size>", "needs size > label size"},
		{"<size unit='KiB'>524416</size>", "<size unit='KiB'>1152</size>", "below the alignment"},
		{"<alignsize unit='KiB'>2048</alignsize>", "<alignsize unit='KiB'>4</alignsize>", "PLUS:<size unit='KiB'>524416</size>|<size unit='KiB'>525312</size>|not a multiple of 2 MiB"},
		{"<size unit='MiB'>64</size>", "<size unit='MiB'>63</size>", "target size 63 MiB is not a multiple of 2 MiB"},
		{"<size unit='MiB'>64</size>", "<size unit='MiB'>0</size>", "target size 0"},
		{"<alignsize unit='KiB'>2048</alignsize>", "<alignsize unit='KiB'>3000</alignsize>", "power of two"},
		{"<node>0</node>", "<node>3</node>", "no such NUMA cell"},
		{"<maxMemory slots='16' unit='KiB'>16777216</maxMemory>", "", "<maxMemory slots='N'>"},
		{"<path>/b/vp.img</path>", "<path>/b/nv.img</path>", "the same backing"},
		{"<memory model='virtio-pmem' access='shared'>", "<memory model='virtio-pmem' access='private'>", "use access='shared'"},
	}
	for _, c := range cases {
		x := strings.Replace(base, c.from, c.to, 1)
		if rest, ok := strings.CutPrefix(c.want, "PLUS:"); ok {
			parts := strings.Split(rest, "|")
			x = strings.Replace(x, parts[0], parts[1], 1)
			c.want = parts[2]
		}
		d, err := ParseDomain(strings.NewReader(x))
		if err == nil {
			err = d.Check()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s -> %s: %v, want %q", c.from, c.to, err, c.want)
		}
	}
}

func TestParseDomainHostile(t *testing.T) {
	cases := map[string]string{
		"":                       "domain XML",
		"<domain><name>x</name>": "domain XML",
		"<notadomain/>":          "domain",
		`<!DOCTYPE d [<!ENTITY a "aaaa">]><domain><name>&a;</name></domain>`:                                                                                "entity",
		`<domain><devices><memory model='nvdimm'><target><size>1</size></target></memory></devices></domain>`:                                               "no <source><path>",
		`<domain><devices><memory model='nvdimm'><source><path>/x</path></source></memory></devices></domain>`:                                              "no <target><size>",
		`<domain><devices><memory model='nvdimm'><source><path>/x</path></source><target><size unit='parsec'>1</size></target></memory></devices></domain>`: "unknown unit",
		`<domain><devices><memory model='nvdimm'><source><path>/x</path></source><target><size unit='EiB'>99</size></target></memory></devices></domain>`:   "overflows",
		`<domain><devices><memory model='nvdimm'><source><path>/x</path></source><target><size>-5</size></target></memory></devices></domain>`:              "non-negative",
		`<domain><devices><memory model='nvdimm'><source><path>/x</path></source><target><size>5</size><label/></target></memory></devices></domain>`:       "without <size>",
		`<domain><maxMemory slots='many'/></domain>`: "slot count",
	}
	for in, want := range cases {
		_, err := ParseDomain(strings.NewReader(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", in, err, want)
		}
	}
	big := "<domain>" + strings.Repeat("<a>", 20000) + strings.Repeat("</a>", 20000) + "</domain>"
	if _, err := ParseDomain(strings.NewReader(big)); err == nil {
		t.Log("deep nesting accepted (ignored elements)")
	}
	huge := bytes.Repeat([]byte(" "), MaxXML+10)
	if _, err := ParseDomain(bytes.NewReader(huge)); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized: %v", err)
	}
}

func TestPrepareCreatesClaimsAndReleases(t *testing.T) {
	cfg, bd := setup(t)
	nv := filepath.Join(bd, "vm1-nv.img")
	vp := filepath.Join(bd, EphemeralDir, "vm1-vp.img")
	if err := Run(cfg, []string{"vm1", "prepare", "begin", "-"}, strings.NewReader(xmlFor(nv, vp))); err != nil {
		t.Fatal(err)
	}
	for p, size := range map[string]int64{nv: 524416 << 10, vp: 64 << 20} {
		fi, err := os.Stat(p)
		if err != nil || fi.Size() != size {
			t.Fatalf("%s: %v %v", p, fi, err)
		}
	}
	b, err := os.ReadFile(filepath.Join(cfg.StateDir, "libvirt", "vm1.json"))
	if err != nil {
		t.Fatal(err)
	}
	var c Claim
	if err := json.Unmarshal(b, &c); err != nil || len(c.Backings) != 2 || !c.Backings[1].Ephemeral || c.Backings[0].Ephemeral {
		t.Fatalf("claim %s %v", b, err)
	}
	// A second domain using the same backing is refused, with no residue.
	other := filepath.Join(bd, "vm2-vp.img")
	x2 := strings.Replace(xmlFor(nv, other), "<name>vm1</name>", "<name>vm2</name>", 1)
	err = Run(cfg, []string{"vm2", "prepare", "begin", "-"}, strings.NewReader(x2))
	if err == nil || !strings.Contains(err.Error(), `in use by running domain "vm1"`) {
		t.Fatalf("vm2: %v", err)
	}
	if _, err := os.Stat(other); !os.IsNotExist(err) {
		t.Fatalf("vm2's backing created despite refusal: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.StateDir, "libvirt", "vm2.json")); !os.IsNotExist(err) {
		t.Fatal("claim written for refused domain")
	}
	// Other ops are ignored.
	if err := Run(cfg, []string{"vm1", "started", "begin", "-"}, strings.NewReader("garbage")); err != nil {
		t.Fatal(err)
	}
	if err := Run(cfg, []string{"vm1", "release", "end", "-"}, strings.NewReader(xmlFor(nv, vp))); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(vp); !os.IsNotExist(err) {
		t.Fatal("ephemeral backing kept")
	}
	if _, err := os.Stat(nv); err != nil {
		t.Fatal("persistent backing removed")
	}
	// Now vm2 may use it; and the existing backing must match the size.
	var log bytes.Buffer
	cfg.Log = &log
	if err := Run(cfg, []string{"vm2", "prepare", "begin", "-"}, strings.NewReader(x2)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "is not on persistent memory") {
		t.Fatalf("no note about <pmem/> on a plain file: %s", log.String())
	}
}

func TestPrepareValidatesExisting(t *testing.T) {
	cfg, bd := setup(t)
	nv := filepath.Join(bd, "nv.img")
	os.WriteFile(nv, make([]byte, 4096), 0o600)
	vp := filepath.Join(bd, "vp.img")
	err := Run(cfg, []string{"vm1", "prepare", "begin", "-"}, strings.NewReader(xmlFor(nv, vp)))
	if err == nil || !strings.Contains(err.Error(), "is 4096 bytes but the target size is") {
		t.Fatalf("err %v", err)
	}
	if _, err := os.Stat(vp); !os.IsNotExist(err) {
		t.Fatal("created backing left behind after failure")
	}
	ro := strings.Replace(xmlFor(filepath.Join(bd, "missing.img"), vp), "</label>", "</label><readonly/>", 1)
	if err := Run(cfg, []string{"vm1", "prepare", "begin", "-"}, strings.NewReader(ro)); err == nil || !strings.Contains(err.Error(), "read-only backing") {
		t.Fatalf("readonly missing: %v", err)
	}
	// A backing locked by another user (the daemon attached it to a VM).
	os.Truncate(nv, 524416<<10)
	l, err := (daemon.MemfileBackings{}).Lock(nv, false)
	if err != nil {
		t.Fatal(err)
	}
	err = Run(cfg, []string{"vm1", "prepare", "begin", "-"}, strings.NewReader(xmlFor(nv, vp)))
	l.Close()
	if err == nil || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("locked backing: %v", err)
	}
	// Sources outside the managed directories are left alone.
	out := filepath.Join(t.TempDir(), "elsewhere.img")
	if err := Run(cfg, []string{"vm1", "prepare", "begin", "-"}, strings.NewReader(xmlFor(out, vp))); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatal("unmanaged backing created")
	}
	if err := Run(cfg, []string{"../etc", "prepare", "begin"}, strings.NewReader("")); err == nil {
		t.Fatal("bad domain name accepted")
	}
	if err := Run(cfg, []string{"vm1"}, nil); err == nil {
		t.Fatal("short args accepted")
	}
}

func FuzzParseDomain(f *testing.F) {
	f.Add([]byte(xmlFor("/b/nv.img", "/b/vp.img")))
	f.Add([]byte(`<domain><devices><memory model='nvdimm'><source><path>/x</path></source><target><size unit='b'>4096</size><label><size>128</size></label></target></memory></devices></domain>`))
	f.Add([]byte(`<domain/>`))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseDomain(bytes.NewReader(b))
		if err != nil {
			return
		}
		cerr := d.Check()
		prev := -1
		for _, m := range d.Memories {
			if m.Path == "" || m.Path != strings.TrimSpace(m.Path) {
				t.Fatalf("accepted memory device path %q", m.Path)
			}
			if m.Model != "nvdimm" && m.Model != "virtio-pmem" {
				t.Fatalf("kept a memory device of model %q", m.Model)
			}
			if m.Index <= prev {
				t.Fatalf("memory indexes out of order: %d after %d", m.Index, prev)
			}
			prev = m.Index
		}
		if prev >= len(d.Memories)+d.OtherMemories {
			t.Fatalf("index %d among %d+%d memory devices", prev, len(d.Memories), d.OtherMemories)
		}
		// Every violation Check reports names its device.
		if cerr != nil {
			j, ok := cerr.(interface{ Unwrap() []error })
			if !ok {
				t.Fatalf("Check error %T is not a list of violations", cerr)
			}
			for _, e := range j.Unwrap() {
				if msg := e.Error(); !strings.HasPrefix(msg, "<memory model='") && !strings.Contains(msg, "slots") {
					t.Fatalf("violation %q names no device", msg)
				}
			}
		}
	})
}

// TestReleaseRemovesOnlyEphemeralManaged: release removes what a claim
// record lists as created and ephemeral only when the configuration
// still calls it an ephemeral managed backing; a damaged or planted
// record naming another file (outside the backing directories, or a
// managed but persistent one) leaves it in place and says so. Before,
// release removed whatever path the record gave.
func TestReleaseRemovesOnlyEphemeralManaged(t *testing.T) {
	cfg, bd := setup(t)
	var log bytes.Buffer
	cfg.Log = &log
	outside := filepath.Join(t.TempDir(), "precious")
	persistent := filepath.Join(bd, "persistent.img")
	eph := filepath.Join(bd, EphemeralDir, "e.img")
	os.MkdirAll(filepath.Dir(eph), 0o700)
	for _, p := range []string{outside, persistent, eph} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(cfg.StateDir, "libvirt")
	os.MkdirAll(dir, 0o700)
	claim := Claim{Version: ClaimVersion, Domain: "vm1", Backings: []ClaimBacking{
		{Path: outside, Created: true, Ephemeral: true},
		{Path: persistent, Created: true, Ephemeral: true},
		{Path: eph, Created: true, Ephemeral: true},
	}}
	b, _ := json.Marshal(claim)
	if err := os.WriteFile(filepath.Join(dir, "vm1.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	err := Run(cfg, []string{"vm1", "release", "end", "-"}, strings.NewReader(""))
	if err == nil || !strings.Contains(err.Error(), outside+" is not an ephemeral managed backing") || !strings.Contains(err.Error(), persistent+" is not") {
		t.Fatalf("release: %v", err)
	}
	for _, p := range []string{outside, persistent} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s removed: %v", p, err)
		}
	}
	if _, err := os.Stat(eph); !os.IsNotExist(err) {
		t.Errorf("ephemeral backing kept: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "vm1.json")); !os.IsNotExist(err) {
		t.Error("claim record kept")
	}
}

func TestParseClaimRefusals(t *testing.T) {
	for in, want := range map[string]string{
		`{"version":2,"domain":"a","backings":[]}`:                   "version 2",
		`{"version":1,"domain":"../x","backings":[]}`:                "field domain",
		`{"version":1,"domain":"a","backings":[{"path":"rel"}]}`:     `backings[0]: path "rel"`,
		`{"version":1,"domain":"a","backings":[{"path":"/a/../b"}]}`: "not a clean absolute path",
		`{"version":1,"domain":"a","backings":[]} {}`:                "trailing data",
		`[]`: "claim record c.json",
	} {
		if _, err := ParseClaim([]byte(in), "c.json"); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "c.json") {
			t.Errorf("%s: %v, want an error with %q", in, err, want)
		}
	}
}

// FuzzParseClaim: a claim record either is refused with an error naming
// it or has a usable domain name and clean absolute paths, and encodes
// back to a record that parses to the same claim.
func FuzzParseClaim(f *testing.F) {
	f.Add([]byte(`{"version":1,"domain":"vm1","uuid":"c7a5fdbd-cdaf-9455-926a-d65c16db1809","backings":[{"path":"/b/nv.img","readonly":false,"created":true,"ephemeral":false},{"path":"/b/ephemeral/vp.img","readonly":false,"created":true,"ephemeral":true}]}`))
	f.Add([]byte(`{"version":1,"domain":"vm2","backings":[]}`))
	f.Add([]byte(`{"version":1,"domain":"..","backings":null}`))
	f.Add([]byte(`{"version":1,"domain":"a","backings":[{"path":"/a/./b"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseClaim(b, "fuzz.json")
		if err != nil {
			if !strings.Contains(err.Error(), "claim record fuzz.json") {
				t.Fatalf("error %q does not name the record", err)
			}
			return
		}
		if validDomainName(c.Domain) != nil {
			t.Fatalf("accepted domain %q", c.Domain)
		}
		for _, cb := range c.Backings {
			if !filepath.IsAbs(cb.Path) || filepath.Clean(cb.Path) != cb.Path {
				t.Fatalf("accepted path %q", cb.Path)
			}
		}
		enc, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseClaim(enc, "re-encoded")
		if err != nil {
			t.Fatalf("re-encoded %s refused: %v", enc, err)
		}
		if len(c.Backings) == 0 {
			c.Backings = nil // [] and null both come back as what Marshal made of them
			back.Backings = nil
		}
		if !reflect.DeepEqual(c, back) {
			t.Fatalf("round trip: %+v came back as %+v", c, back)
		}
	})
}
