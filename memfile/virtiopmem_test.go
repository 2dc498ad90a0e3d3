package memfile

import (
	"strings"
	"testing"
)

func TestCheckVirtioPMEM(t *testing.T) {
	plain := mustLayout(t, 256*MiB, 0, 2*MiB)
	cases := []struct {
		name     string
		l        Layout
		readOnly bool
		want     []string // substrings; none means accepted
	}{
		{"plain", plain, false, nil},
		{"read-only", plain, true, []string{"/b.img", "no read-only mode"}},
		{"label area", mustLayout(t, 256*MiB, 128*KiB, 2*MiB), false, []string{"/b.img", "128 KiB label area", "attach it as an nvdimm"}},
		// Read-only is named first: it is refused whatever the layout.
		{"read-only with labels", mustLayout(t, 256*MiB, 128*KiB, 2*MiB), true, []string{"no read-only mode"}},
		{"misaligned size", mustLayout(t, 256*MiB+4*KiB, 0, 4*KiB), false, []string{"/b.img", "misaligned, unable to map"}},
		{"small align", mustLayout(t, 256*MiB, 0, 4*KiB), false, []string{"/b.img", "--align 2M"}},
		// The whole backend is mapped: an unaligned tail the nvdimm
		// layout leaves unused is still exposed.
		{"unaligned tail", Layout{GuestSize: 256 * MiB, BackingSize: 256*MiB + 4*KiB, Align: 2 * MiB}, false, []string{"misaligned"}},
	}
	for _, c := range cases {
		err := CheckVirtioPMEM("/b.img", c.l, c.readOnly)
		if c.want == nil {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q lacks %q", c.name, err, w)
			}
		}
		// BuildQEMUArgs refuses --virtio-pmem with the same error.
		_, qerr := BuildQEMUArgs(QEMUTarget{Path: "/b.img", Layout: c.l, Slot: NoSlot}, QEMUArgOptions{VirtioPMEM: true, ReadOnly: c.readOnly, Slot: -1})
		if qerr == nil || qerr.Error() != err.Error() {
			t.Errorf("%s: BuildQEMUArgs: %v, want %v", c.name, qerr, err)
		}
	}
}
