package memfile

import (
	"path/filepath"
	"strings"
	"testing"
)

func mustLayout(t *testing.T, p, l, a uint64) Layout {
	t.Helper()
	lay, err := ComputeLayout(p, l, a)
	if err != nil {
		t.Fatal(err)
	}
	return lay
}

func TestBuildQEMUArgsNVDIMM(t *testing.T) {
	tg := QEMUTarget{Path: "/var/lib/pm/a,b.img", Kind: KindFile, Layout: mustLayout(t, GiB, 128*KiB, 2*MiB), Slot: NoSlot}
	a, err := BuildQEMUArgs(tg, QEMUArgOptions{ID: "nv1", Slot: -1})
	if err != nil {
		t.Fatal(err)
	}
	wantObj := "memory-backend-file,id=mem-nv1,mem-path=/var/lib/pm/a,,b.img,size=1048704K,share=on,align=2M"
	wantDev := "nvdimm,id=nv1,memdev=mem-nv1,label-size=128K"
	if a.Object != wantObj || a.Device != wantDev {
		t.Fatalf("object %q\ndevice %q", a.Object, a.Device)
	}
	if strings.Join(a.Machine, ",") != "nvdimm=on" || a.Memory != "1G,slots=4,maxmem=3G" {
		t.Fatalf("machine %q memory %q", a.Machine, a.Memory)
	}
	if strings.Join(a.Argv, " ") != "-machine nvdimm=on -m 1G,slots=4,maxmem=3G -object "+wantObj+" -device "+wantDev {
		t.Fatalf("argv %q", a.Argv)
	}

	// Real DAX: pmem=on. Read-only: readonly=on and unarmed=on. Slot from metadata.
	dl, err := LayoutFromBacking(64*MiB, 128*KiB, 2*MiB)
	if err != nil {
		t.Fatal(err)
	}
	tg = QEMUTarget{Path: "/dev/dax0.0", Kind: KindDevDAX, DAX: true, Layout: dl, Slot: 3}
	a, err = BuildQEMUArgs(tg, QEMUArgOptions{ID: "pm0", ReadOnly: true, Slot: -1, RAM: 2 * GiB})
	if err != nil {
		t.Fatal(err)
	}
	if a.Object != "memory-backend-file,id=mem-pm0,mem-path=/dev/dax0.0,size=64M,share=on,align=2M,pmem=on,readonly=on" {
		t.Fatalf("object %q", a.Object)
	}
	if a.Device != "nvdimm,id=pm0,memdev=mem-pm0,label-size=128K,unarmed=on,slot=3" || a.Memory != "2G,slots=4,maxmem=3G" {
		t.Fatalf("device %q memory %q", a.Device, a.Memory)
	}
	// pmem=on only on real DAX: a plain file never gets it.
	if a, _ := BuildQEMUArgs(QEMUTarget{Path: "/x", Kind: KindFile, Layout: mustLayout(t, 16*MiB, 0, 2*MiB)}, QEMUArgOptions{Slot: 7}); strings.Contains(a.Object, "pmem=on") || !strings.HasSuffix(a.Device, "slot=7") || a.Memory != "1G,slots=8,maxmem=2G" {
		t.Fatalf("plain file: %q %q %q", a.Object, a.Device, a.Memory)
	}
}

func TestBuildQEMUArgsVirtioPMEM(t *testing.T) {
	tg := QEMUTarget{Path: "/srv/v.img", Kind: KindFile, Layout: mustLayout(t, 256*MiB, 0, 2*MiB), Slot: NoSlot}
	a, err := BuildQEMUArgs(tg, QEMUArgOptions{ID: "vp0", VirtioPMEM: true, Slot: -1})
	if err != nil {
		t.Fatal(err)
	}
	if a.Object != "memory-backend-file,id=mem-vp0,mem-path=/srv/v.img,size=256M,share=on,align=2M" ||
		a.Device != "virtio-pmem-pci,id=vp0,memdev=mem-vp0" || len(a.Machine) != 0 || a.Argv[0] != "-m" {
		t.Fatalf("%+v", a)
	}
}

func TestBuildQEMUArgsRefusals(t *testing.T) {
	ok := mustLayout(t, 256*MiB, 128*KiB, 2*MiB)
	cases := []struct {
		name string
		t    QEMUTarget
		o    QEMUArgOptions
		want string
	}{
		{"writable attach of read-only backing", QEMUTarget{Path: "/g.img", Layout: ok, ReadOnly: true, Slot: NoSlot}, QEMUArgOptions{Slot: -1}, "is read-only"},
		{"virtio-pmem with labels", QEMUTarget{Path: "/g.img", Layout: ok, Slot: NoSlot}, QEMUArgOptions{VirtioPMEM: true, Slot: -1}, "label area"},
		{"virtio-pmem read-only", QEMUTarget{Path: "/g.img", Layout: mustLayout(t, 256*MiB, 0, 2*MiB), Slot: NoSlot}, QEMUArgOptions{VirtioPMEM: true, ReadOnly: true, Slot: -1}, "no read-only mode"},
		{"virtio-pmem misaligned size", QEMUTarget{Path: "/g.img", Layout: mustLayout(t, 256*MiB+4*KiB, 0, 4*KiB), Slot: NoSlot}, QEMUArgOptions{VirtioPMEM: true, Slot: -1}, "misaligned, unable to map"},
		{"virtio-pmem small align", QEMUTarget{Path: "/g.img", Layout: mustLayout(t, 256*MiB, 0, 4*KiB), Slot: NoSlot}, QEMUArgOptions{VirtioPMEM: true, Slot: -1}, "--align 2M"},
		{"bad id", QEMUTarget{Path: "/g.img", Layout: ok, Slot: NoSlot}, QEMUArgOptions{ID: "1x,y", Slot: -1}, "device id"},
		{"slot mismatch", QEMUTarget{Path: "/g.img", Layout: ok, Slot: 2}, QEMUArgOptions{Slot: 1}, "written for slot 2"},
		{"slot range", QEMUTarget{Path: "/g.img", Layout: ok, Slot: NoSlot}, QEMUArgOptions{Slot: 300}, "out of range"},
		{"newline in path", QEMUTarget{Path: "/g\n.img", Layout: ok, Slot: NoSlot}, QEMUArgOptions{Slot: -1}, "cannot be passed"},
	}
	for _, c := range cases {
		if _, err := BuildQEMUArgs(c.t, c.o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", c.name, err, c.want)
		}
	}
}

func TestQEMUArgsForBacking(t *testing.T) {
	p := filepath.Join(t.TempDir(), "q.img")
	b, err := Create(p, CreateOptions{Size: 64 * MiB, LabelSize: 128 * KiB, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := QEMUArgsFor(b, QEMUArgOptions{Slot: -1}); err == nil {
		t.Fatal("writable attach of a read-only backing")
	}
	a, err := QEMUArgsFor(b, QEMUArgOptions{ReadOnly: true, Slot: -1})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(a.Object, "readonly=on") || !strings.Contains(a.Device, "unarmed=on") || !strings.Contains(a.Object, "size=65664K") {
		t.Fatalf("%+v", a)
	}
	m, err := ReadMeta(p)
	if err != nil {
		t.Fatal(err)
	}
	a2, err := QEMUArgsForMeta(p, m, QEMUArgOptions{ReadOnly: true, Slot: -1})
	if err != nil || a2.Object != a.Object || a2.Device != a.Device {
		t.Fatalf("from meta %+v, %v", a2, err)
	}
}
