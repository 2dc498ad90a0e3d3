// Package libvirthook owns the libvirt QEMU hook: it parses the domain
// XML libvirt passes on stdin, checks every <memory model='nvdimm'> and
// <memory model='virtio-pmem'> device against the rules QEMU and the Linux
// guest enforce, creates or validates their backings under the managed
// directories on "prepare begin", claims them for the domain, and on
// "release end" drops the claim and removes ephemeral backings. It never
// calls libvirt.
package libvirthook

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"strconv"
	"strings"

	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

// MaxXML bounds the domain XML read from stdin.
const MaxXML = 16 << 20

// Memory is one <memory> device of model nvdimm or virtio-pmem.
type Memory struct {
	// Index is the device's position among the domain's <memory> elements.
	Index     int    `json:"index"`
	Model     string `json:"model"`
	Access    string `json:"access,omitempty"`
	Path      string `json:"path"`
	AlignSize uint64 `json:"align_size,omitempty"`
	PMem      bool   `json:"pmem"`
	// Size is the target size: the whole memory backend, label included.
	Size      uint64 `json:"size"`
	Node      *int   `json:"node,omitempty"`
	LabelSize uint64 `json:"label_size,omitempty"`
	ReadOnly  bool   `json:"readonly"`
}

// Domain is what the hook needs from a domain definition.
type Domain struct {
	Name     string
	UUID     string
	Slots    int      // <maxMemory slots=...>, 0 when absent
	Cells    []int    // NUMA cell ids
	Memories []Memory // nvdimm and virtio-pmem devices only
	// OtherMemories counts <memory> devices of other models (dimm, ...),
	// which use hotplug slots too.
	OtherMemories int
}

type xmlSize struct {
	Unit  string `xml:"unit,attr"`
	Value string `xml:",chardata"`
}

type xmlDomain struct {
	XMLName   xml.Name `xml:"domain"`
	Name      string   `xml:"name"`
	UUID      string   `xml:"uuid"`
	MaxMemory *struct {
		Slots string `xml:"slots,attr"`
	} `xml:"maxMemory"`
	CPU struct {
		Cells []struct {
			ID string `xml:"id,attr"`
		} `xml:"numa>cell"`
	} `xml:"cpu"`
	Memories []struct {
		Model  string `xml:"model,attr"`
		Access string `xml:"access,attr"`
		Source *struct {
			Path      *string   `xml:"path"`
			AlignSize *xmlSize  `xml:"alignsize"`
			PMem      *struct{} `xml:"pmem"`
		} `xml:"source"`
		Target *struct {
			Size  *xmlSize `xml:"size"`
			Node  *string  `xml:"node"`
			Label *struct {
				Size *xmlSize `xml:"size"`
			} `xml:"label"`
			ReadOnly *struct{} `xml:"readonly"`
		} `xml:"target"`
	} `xml:"devices>memory"`
}

// ParseDomain reads a domain XML document (at most MaxXML bytes) and
// returns its persistent-memory devices. Malformed or hostile input is an
// error naming the element, never a panic.
func ParseDomain(r io.Reader) (*Domain, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxXML+1))
	if err != nil {
		return nil, fmt.Errorf("domain XML: %w", err)
	}
	if len(data) > MaxXML {
		return nil, fmt.Errorf("domain XML: larger than %d bytes", MaxXML)
	}
	var x xmlDomain
	dec := xml.NewDecoder(strings.NewReader(string(data)))
	dec.Strict = true
	if err := dec.Decode(&x); err != nil {
		return nil, fmt.Errorf("domain XML: %w", err)
	}
	d := &Domain{Name: strings.TrimSpace(x.Name), UUID: strings.TrimSpace(x.UUID)}
	if x.MaxMemory != nil && x.MaxMemory.Slots != "" {
		n, err := strconv.ParseUint(strings.TrimSpace(x.MaxMemory.Slots), 10, 16)
		if err != nil {
			return nil, fmt.Errorf("domain XML: <maxMemory slots=%q>: not a slot count", x.MaxMemory.Slots)
		}
		d.Slots = int(n)
	}
	for i, c := range x.CPU.Cells {
		n, err := strconv.ParseUint(strings.TrimSpace(c.ID), 10, 16)
		if err != nil {
			return nil, fmt.Errorf("domain XML: <numa> cell %d: id %q is not a number", i, c.ID)
		}
		d.Cells = append(d.Cells, int(n))
	}
	for i, xm := range x.Memories {
		if xm.Model != "nvdimm" && xm.Model != "virtio-pmem" {
			d.OtherMemories++
			continue
		}
		where := fmt.Sprintf("<memory model='%s'> #%d", xm.Model, i)
		m := Memory{Index: i, Model: xm.Model, Access: xm.Access}
		if xm.Source == nil || xm.Source.Path == nil || strings.TrimSpace(*xm.Source.Path) == "" {
			return nil, fmt.Errorf("domain XML: %s: no <source><path>", where)
		}
		m.Path = strings.TrimSpace(*xm.Source.Path)
		if xm.Source.AlignSize != nil {
			if m.AlignSize, err = parseSize(xm.Source.AlignSize, where+" <alignsize>"); err != nil {
				return nil, err
			}
		}
		m.PMem = xm.Source.PMem != nil
		if xm.Target == nil || xm.Target.Size == nil {
			return nil, fmt.Errorf("domain XML: %s: no <target><size>", where)
		}
		if m.Size, err = parseSize(xm.Target.Size, where+" <target><size>"); err != nil {
			return nil, err
		}
		if xm.Target.Node != nil {
			n, err := strconv.ParseUint(strings.TrimSpace(*xm.Target.Node), 10, 16)
			if err != nil {
				return nil, fmt.Errorf("domain XML: %s: <node> %q is not a NUMA node number", where, *xm.Target.Node)
			}
			v := int(n)
			m.Node = &v
		}
		if xm.Target.Label != nil {
			if xm.Target.Label.Size == nil {
				return nil, fmt.Errorf("domain XML: %s: <label> without <size>", where)
			}
			if m.LabelSize, err = parseSize(xm.Target.Label.Size, where+" <label><size>"); err != nil {
				return nil, err
			}
		}
		m.ReadOnly = xm.Target.ReadOnly != nil
		d.Memories = append(d.Memories, m)
	}
	return d, nil
}

// parseSize reads a libvirt scaled integer; the default unit is KiB.
func parseSize(s *xmlSize, where string) (uint64, error) {
	v, err := strconv.ParseUint(strings.TrimSpace(s.Value), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("domain XML: %s: %q is not a non-negative integer", where, s.Value)
	}
	var mult uint64
	switch strings.ToLower(strings.TrimSpace(s.Unit)) {
	case "b", "bytes":
		mult = 1
	case "", "k", "kib":
		mult = memfile.KiB
	case "kb":
		mult = 1000
	case "m", "mib":
		mult = memfile.MiB
	case "mb":
		mult = 1000 * 1000
	case "g", "gib":
		mult = memfile.GiB
	case "gb":
		mult = 1000 * 1000 * 1000
	case "t", "tib":
		mult = memfile.TiB
	case "tb":
		mult = 1000 * 1000 * 1000 * 1000
	case "p", "pib":
		mult = 1 << 50
	case "pb":
		mult = 1000 * 1000 * 1000 * 1000 * 1000
	case "e", "eib":
		mult = 1 << 60
	case "eb":
		mult = 1000 * 1000 * 1000 * 1000 * 1000 * 1000
	default:
		return 0, fmt.Errorf("domain XML: %s: unknown unit %q", where, s.Unit)
	}
	hi, lo := bits.Mul64(v, mult)
	if hi != 0 {
		return 0, fmt.Errorf("domain XML: %s: %s %s overflows 64 bits", where, s.Value, s.Unit)
	}
	return lo, nil
}

// Rules QEMU and the Linux guest enforce.
const (
	minLabelSize  = 128 * memfile.KiB // QEMU's smallest non-zero label-size
	pageSize      = 4 * memfile.KiB
	guestMapAlign = 2 * memfile.MiB // the guest maps pmem in 2 MiB units
)

// Check applies the static rules to the domain's devices and returns
// every violation, each naming the device and the fix.
func (d *Domain) Check() error {
	var errs []error
	paths := map[string]int{}
	used := d.OtherMemories
	for _, m := range d.Memories {
		where := fmt.Sprintf("<memory model='%s'> #%d (%s)", m.Model, m.Index, m.Path)
		fail := func(format string, a ...any) { errs = append(errs, fmt.Errorf(where+": "+format, a...)) }
		if m.Model == "nvdimm" { // NVDIMMs take a DIMM slot; virtio-pmem does not
			used++
		}
		if !strings.HasPrefix(m.Path, "/") {
			fail("source path is not absolute")
		}
		if prev, ok := paths[m.Path]; ok {
			fail("the same backing as <memory> #%d: two devices of one VM would overwrite each other", prev)
		}
		paths[m.Path] = m.Index
		if m.Access != "" && m.Access != "shared" {
			fail("access='%s': guest writes would not reach the backing (a private mapping); use access='shared'", m.Access)
		}
		align := m.AlignSize
		if align == 0 {
			align = pageSize
		}
		if bits.OnesCount64(align) != 1 || align < pageSize {
			fail("alignsize %s: QEMU needs a power of two of at least %s", memfile.FormatSize(m.AlignSize), memfile.FormatSize(pageSize))
			continue
		}
		if m.Size == 0 {
			fail("target size 0: QEMU cannot map an empty backend")
			continue
		}
		if m.Size%pageSize != 0 {
			fail("target size %s is not a multiple of %s: QEMU refuses it", memfile.FormatSize(m.Size), memfile.FormatSize(pageSize))
		}
		if m.Node != nil {
			ok := false
			for _, c := range d.Cells {
				ok = ok || c == *m.Node
			}
			if !ok && !(len(d.Cells) == 0 && *m.Node == 0) {
				fail("<node>%d</node>: the domain has no such NUMA cell", *m.Node)
			}
		}
		switch m.Model {
		case "nvdimm":
			if m.LabelSize != 0 && m.LabelSize < minLabelSize {
				fail("label size %s is below QEMU's minimum of 128 KiB (use 128 KiB or no <label>)", memfile.FormatSize(m.LabelSize))
				continue
			}
			if m.LabelSize >= m.Size {
				fail("label size %s leaves nothing of the %s target: QEMU needs size > label size", memfile.FormatSize(m.LabelSize), memfile.FormatSize(m.Size))
				continue
			}
			guest := (m.Size - m.LabelSize) &^ (align - 1)
			if guest == 0 {
				fail("target size %s minus label %s is below the alignment %s: the guest would see 0 bytes", memfile.FormatSize(m.Size), memfile.FormatSize(m.LabelSize), memfile.FormatSize(align))
			} else if guest%guestMapAlign != 0 {
				fail("the guest would see %s, not a multiple of 2 MiB: it would refuse to map it (\"misaligned, unable to map\"); use a target size of %s",
					memfile.FormatSize(guest), memfile.FormatSize(((guest+guestMapAlign-1)&^(guestMapAlign-1))+m.LabelSize))
			}
		case "virtio-pmem":
			if m.LabelSize != 0 {
				fail("virtio-pmem has no label area; remove <label>")
			}
			if m.Size%guestMapAlign != 0 {
				fail("target size %s is not a multiple of 2 MiB: the guest would refuse to map it", memfile.FormatSize(m.Size))
			}
		}
	}
	if len(d.Memories) > 0 && d.Slots == 0 {
		errs = append(errs, errors.New("memory devices need <maxMemory slots='N'>: QEMU has no hotplug slots without it"))
	} else if used > d.Slots && d.Slots > 0 {
		errs = append(errs, fmt.Errorf("%d memory devices but <maxMemory slots='%d'>: QEMU would run out of slots", used, d.Slots))
	}
	return errors.Join(errs...)
}
