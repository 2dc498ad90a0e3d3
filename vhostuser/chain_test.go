package vhostuser

import (
	"errors"
	"strings"
	"testing"
)

// heapTable builds a memory table over Go byte slices (no mmap), for
// tests and fuzzing of code that only reads and writes through it.
func heapTable(t testing.TB, regions ...MemRegion) *memTable {
	var rs []*region
	for _, m := range regions {
		r := &region{MemRegion: m, data: make([]byte, m.Size)}
		r.refs.Store(1)
		rs = append(rs, r)
	}
	mt, err := newMemTable(rs)
	if err != nil {
		t.Fatal(err)
	}
	return mt
}

func putDesc(b []byte, i int, addr uint64, n uint32, flags, next uint16) {
	d := b[16*i:]
	le.PutUint64(d, addr)
	le.PutUint32(d[8:], n)
	le.PutUint16(d[12:], flags)
	le.PutUint16(d[14:], next)
}

const qs = 8

func TestWalkChain(t *testing.T) {
	// Two adjacent regions: [0x1000, 0x3000) and [0x3000, 0x4000).
	mem := heapTable(t, MemRegion{GPA: 0x1000, Size: 0x2000}, MemRegion{GPA: 0x3000, Size: 0x1000})
	desc, _ := mem.slice(0x1000, 16*qs)
	ind, _ := mem.slice(0x1800, 16*4)
	reset := func() { clear(desc); clear(ind) }

	type tc struct {
		name     string
		setup    func()
		head     uint16
		indirect bool
		want     string // "" = valid
		check    func(Chain) string
	}
	cases := []tc{
		{name: "two descriptors", setup: func() {
			putDesc(desc, 0, 0x2000, 4, descFlagNext, 5)
			putDesc(desc, 5, 0x2004, 4, descFlagWrite, 0)
		}, check: func(c Chain) string {
			if c.ReadLen != 4 || c.WriteLen != 4 || len(c.Readable) != 1 || c.Writable[0].GPA != 0x2004 {
				return "wrong buffers"
			}
			return ""
		}},
		{name: "buffer spans two regions", setup: func() {
			putDesc(desc, 0, 0x2ff0, 0x20, 0, 0)
		}},
		{name: "direct then indirect", indirect: true, setup: func() {
			putDesc(desc, 0, 0x2000, 4, descFlagNext, 1)
			putDesc(desc, 1, 0x1800, 32, descFlagIndirect, 0)
			putDesc(ind, 0, 0x2100, 8, descFlagNext, 1)
			putDesc(ind, 1, 0x2200, 8, descFlagWrite, 0)
		}, check: func(c Chain) string {
			if c.ReadLen != 12 || c.WriteLen != 8 {
				return "wrong lengths"
			}
			return ""
		}},
		{name: "head out of range", head: qs, want: "outside the 8-entry queue"},
		{name: "loop", setup: func() {
			putDesc(desc, 0, 0x2000, 4, descFlagNext, 1)
			putDesc(desc, 1, 0x2000, 4, descFlagNext, 0)
		}, want: "loop"},
		{name: "self loop", setup: func() { putDesc(desc, 3, 0x2000, 4, descFlagNext, 3) }, head: 3, want: "loop"},
		{name: "next out of range", setup: func() { putDesc(desc, 0, 0x2000, 4, descFlagNext, qs) }, want: "next 8"},
		{name: "indirect without feature", setup: func() { putDesc(desc, 0, 0x1800, 16, descFlagIndirect, 0) }, want: "without the INDIRECT_DESC"},
		{name: "indirect in indirect", indirect: true, setup: func() {
			putDesc(desc, 0, 0x1800, 32, descFlagIndirect, 0)
			putDesc(ind, 0, 0x1800, 32, descFlagIndirect, 0)
		}, want: "inside an indirect table"},
		{name: "indirect with next", indirect: true, setup: func() { putDesc(desc, 0, 0x1800, 32, descFlagIndirect|descFlagNext, 1) }, want: "together with NEXT"},
		{name: "indirect bad length", indirect: true, setup: func() { putDesc(desc, 0, 0x1800, 20, descFlagIndirect, 0) }, want: "multiple of 16"},
		{name: "indirect too long", indirect: true, setup: func() { putDesc(desc, 0, 0x1800, 16*(qs+1), descFlagIndirect, 0) }, want: "exceeds the queue size"},
		{name: "indirect table outside memory", indirect: true, setup: func() { putDesc(desc, 0, 0x9000, 32, descFlagIndirect, 0) }, want: "outside guest memory"},
		{name: "indirect loop", indirect: true, setup: func() {
			putDesc(desc, 0, 0x1800, 32, descFlagIndirect, 0)
			putDesc(ind, 0, 0x2000, 4, descFlagNext, 1)
			putDesc(ind, 1, 0x2000, 4, descFlagNext, 0)
		}, want: "loop"},
		{name: "indirect next out of table", indirect: true, setup: func() {
			putDesc(desc, 0, 0x1800, 32, descFlagIndirect, 0)
			putDesc(ind, 0, 0x2000, 4, descFlagNext, 2)
		}, want: "outside the 2-entry table"},
		{name: "buffer outside memory", setup: func() { putDesc(desc, 0, 0x4000, 4, 0, 0) }, want: "outside guest memory"},
		{name: "buffer runs past memory", setup: func() { putDesc(desc, 0, 0x3ff0, 0x20, 0, 0) }, want: "outside guest memory"},
		{name: "buffer wraps", setup: func() { putDesc(desc, 0, ^uint64(0)-2, 16, 0, 0) }, want: "wraps"},
		{name: "zero length", setup: func() { putDesc(desc, 0, 0x2000, 0, 0, 0) }, want: "zero-length"},
		{name: "readable after writable", setup: func() {
			putDesc(desc, 0, 0x2000, 4, descFlagWrite|descFlagNext, 1)
			putDesc(desc, 1, 0x2004, 4, 0, 0)
		}, want: "readable buffer after"},
	}
	for _, c := range cases {
		reset()
		if c.setup != nil {
			c.setup()
		}
		ch, err := walkChain(mem, desc, qs, c.head, c.indirect)
		if c.want == "" {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			} else if c.check != nil {
				if msg := c.check(ch); msg != "" {
					t.Errorf("%s: %s: %+v", c.name, msg, ch)
				}
			}
			continue
		}
		var ce *ChainError
		if err == nil || !errors.As(err, &ce) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want a ChainError mentioning %q", c.name, err, c.want)
		}
	}
}

func TestMemTableCopyAcrossRegions(t *testing.T) {
	mem := heapTable(t, MemRegion{GPA: 0, Size: 16}, MemRegion{GPA: 16, Size: 16})
	if err := mem.copyIn(12, []byte("abcdefgh")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 8)
	if err := mem.copyOut(got, 12); err != nil || string(got) != "abcdefgh" {
		t.Fatalf("copyOut = %q, %v", got, err)
	}
	if err := mem.copyOut(got, 28); err == nil {
		t.Fatal("copy past the end accepted")
	}
	if _, err := newMemTable([]*region{{MemRegion: MemRegion{GPA: 0, Size: 16}}, {MemRegion: MemRegion{GPA: 8, Size: 16}}}); err == nil {
		t.Fatal("overlapping regions accepted")
	}
}

// FuzzWalkChain walks chains from a fuzzed descriptor table, indirect
// table and head: it must never panic, and every chain it accepts must
// satisfy the rules.
func FuzzWalkChain(f *testing.F) {
	seed := make([]byte, 16*qs)
	putDesc(seed, 0, 0x2000, 4, descFlagNext, 1)
	putDesc(seed, 1, 0x2004, 4, descFlagWrite, 0)
	f.Add(seed, []byte{}, uint16(0), true)
	loop := make([]byte, 16*qs)
	putDesc(loop, 0, 0x2000, 4, descFlagNext, 0)
	f.Add(loop, []byte{}, uint16(0), false)
	ind := make([]byte, 16*qs)
	putDesc(ind, 2, 0x1800, 32, descFlagIndirect, 0)
	it := make([]byte, 32)
	putDesc(it, 0, 0x2100, 8, descFlagNext, 1)
	putDesc(it, 1, 0x2200, 8, descFlagWrite|descFlagIndirect, 0)
	f.Add(ind, it, uint16(2), true)
	f.Fuzz(func(t *testing.T, table, indirect []byte, head uint16, indirectOK bool) {
		mem := heapTable(t, MemRegion{GPA: 0x1000, Size: 0x2000}, MemRegion{GPA: 0x3000, Size: 0x1000})
		desc, _ := mem.slice(0x1000, 16*qs)
		copy(desc, table)
		it, _ := mem.slice(0x1800, 0x100)
		copy(it, indirect)
		c, err := walkChain(mem, desc, qs, head%(2*qs), indirectOK)
		if err != nil {
			return
		}
		if len(c.Readable)+len(c.Writable) > 2*qs {
			t.Fatalf("chain of %d buffers", len(c.Readable)+len(c.Writable))
		}
		for _, s := range append(c.Readable, c.Writable...) {
			if s.Len == 0 || mem.check(s.GPA, uint64(s.Len)) != nil {
				t.Fatalf("accepted bad buffer %+v", s)
			}
		}
	})
}
