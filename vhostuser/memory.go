package vhostuser

import (
	"fmt"
	"math"
	"sort"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// MaxMemSlots is our GET_MAX_MEM_SLOTS answer.
const MaxMemSlots = 32

// region is one mapped guest memory region. Tables that share a region
// each hold one reference; the last release unmaps it.
type region struct {
	MemRegion
	whole []byte // the mmap, from file offset 0
	data  []byte // whole[MmapOffset : MmapOffset+Size]
	// fd is a duplicate of the front-end's descriptor, kept so that a
	// compacted keeper journal can describe the table (see snapshot).
	fd   int
	refs atomic.Int64
}

func (r *region) release() {
	if r.refs.Add(-1) == 0 && r.whole != nil {
		unix.Munmap(r.whole)
		unix.Close(r.fd)
		r.whole, r.data, r.fd = nil, nil, -1
	}
}

// mapRegion maps a region from fd (which the caller closes; the region
// keeps a duplicate).
func mapRegion(m MemRegion, fd int) (*region, error) {
	if err := checkRegion(m); err != nil {
		return nil, err
	}
	total := m.MmapOffset + m.Size
	if total > math.MaxInt {
		return nil, fmt.Errorf("region gpa %#x: mmap offset %#x + size %#x too large to map", m.GPA, m.MmapOffset, m.Size)
	}
	if err := checkFdCovers(fd, total); err != nil {
		return nil, fmt.Errorf("region gpa %#x size %#x mmap offset %#x: %w", m.GPA, m.Size, m.MmapOffset, err)
	}
	whole, err := unix.Mmap(fd, 0, int(total), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("region gpa %#x size %#x: mmap: %w", m.GPA, m.Size, err)
	}
	dfd, err := dupCloexec(fd)
	if err != nil {
		unix.Munmap(whole)
		return nil, fmt.Errorf("region gpa %#x: duplicating its fd: %w", m.GPA, err)
	}
	r := &region{MemRegion: m, whole: whole, data: whole[m.MmapOffset:total:total], fd: dfd}
	r.refs.Store(1)
	return r, nil
}

// checkFdCovers refuses a regular file (a memfd, a tmpfs or hugetlbfs
// file) that ends before end, the end of the range about to be mapped
// from it: a shared mapping maps past the end of a file without error,
// and the first access to a page there raises SIGBUS, which would kill
// the back-end on the front-end's word. Device files (device DAX) report
// no size and are left to mmap.
func checkFdCovers(fd int, end uint64) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("fstat of the descriptor: %w", err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFREG && (st.Size < 0 || uint64(st.Size) < end) {
		return fmt.Errorf("the descriptor's file has %d bytes, the mapping needs %d", st.Size, end)
	}
	return nil
}

func checkRegion(m MemRegion) error {
	if m.Size == 0 {
		return fmt.Errorf("region gpa %#x: size 0", m.GPA)
	}
	if m.GPA+m.Size < m.GPA || m.UserAddr+m.Size < m.UserAddr || m.MmapOffset+m.Size < m.MmapOffset {
		return fmt.Errorf("region gpa %#x size %#x user %#x offset %#x: range overflows", m.GPA, m.Size, m.UserAddr, m.MmapOffset)
	}
	return nil
}

// memTable is an immutable set of regions, sorted by GPA. It is reference
// counted: the session holds one reference while it is current, every
// queue holds one for the rings it resolved through it, and every request
// in flight holds one for its buffers.
type memTable struct {
	regions []*region
	refs    atomic.Int64
}

func newMemTable(regions []*region) (*memTable, error) {
	sort.Slice(regions, func(i, j int) bool { return regions[i].GPA < regions[j].GPA })
	for i := 1; i < len(regions); i++ {
		a, b := regions[i-1], regions[i]
		if a.GPA+a.Size > b.GPA {
			return nil, fmt.Errorf("region gpa %#x size %#x overlaps region gpa %#x", a.GPA, a.Size, b.GPA)
		}
	}
	t := &memTable{regions: regions}
	t.refs.Store(1)
	return t, nil
}

// tryRef takes a reference unless the table is already dead.
func (t *memTable) tryRef() bool {
	for {
		n := t.refs.Load()
		if n <= 0 {
			return false
		}
		if t.refs.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (t *memTable) release() {
	if t == nil {
		return
	}
	if t.refs.Add(-1) == 0 {
		for _, r := range t.regions {
			r.release()
		}
	}
}

// find returns the region holding gpa.
func (t *memTable) find(gpa uint64) *region {
	rs := t.regions
	i := sort.Search(len(rs), func(i int) bool { return rs[i].GPA+rs[i].Size > gpa })
	if i < len(rs) && rs[i].GPA <= gpa {
		return rs[i]
	}
	return nil
}

// slice returns guest memory [gpa, gpa+n) when it lies in one region.
func (t *memTable) slice(gpa, n uint64) ([]byte, bool) {
	r := t.find(gpa)
	if r == nil {
		return nil, false
	}
	off := gpa - r.GPA
	if n > r.Size-off {
		return nil, false
	}
	return r.data[off : off+n : off+n], true
}

// check reports whether [gpa, gpa+n) is covered, possibly by several
// adjacent regions.
func (t *memTable) check(gpa, n uint64) error {
	if gpa+n < gpa {
		return fmt.Errorf("buffer gpa %#x len %#x wraps", gpa, n)
	}
	for n > 0 {
		r := t.find(gpa)
		if r == nil {
			return fmt.Errorf("gpa %#x is outside guest memory", gpa)
		}
		k := min(n, r.Size-(gpa-r.GPA))
		gpa += k
		n -= k
	}
	return nil
}

// copyOut copies guest memory at gpa into p, across regions.
func (t *memTable) copyOut(p []byte, gpa uint64) error {
	for len(p) > 0 {
		r := t.find(gpa)
		if r == nil {
			return fmt.Errorf("gpa %#x is outside guest memory", gpa)
		}
		k := copy(p, r.data[gpa-r.GPA:])
		p, gpa = p[k:], gpa+uint64(k)
	}
	return nil
}

// copyIn copies p into guest memory at gpa, across regions.
func (t *memTable) copyIn(gpa uint64, p []byte) error {
	for len(p) > 0 {
		r := t.find(gpa)
		if r == nil {
			return fmt.Errorf("gpa %#x is outside guest memory", gpa)
		}
		k := copy(r.data[gpa-r.GPA:], p)
		p, gpa = p[k:], gpa+uint64(k)
	}
	return nil
}

// userSlice translates a front-end user address range (as used by
// SET_VRING_ADDR) that must lie in one region.
func (t *memTable) userSlice(ua, n uint64) ([]byte, error) {
	for _, r := range t.regions {
		if ua >= r.UserAddr && ua-r.UserAddr < r.Size {
			off := ua - r.UserAddr
			if n > r.Size-off {
				return nil, fmt.Errorf("user address %#x len %#x crosses the end of its region", ua, n)
			}
			return r.data[off : off+n : off+n], nil
		}
	}
	return nil, fmt.Errorf("user address %#x is in no memory region", ua)
}

// with returns a new table with regions added (their references move to
// the new table) and the regions of t kept (each gains a reference).
func (t *memTable) with(add []*region, remove func(*region) bool) (*memTable, error) {
	var rs []*region
	if t != nil {
		for _, r := range t.regions {
			if remove == nil || !remove(r) {
				rs = append(rs, r)
			}
		}
	}
	rs = append(rs, add...)
	nt, err := newMemTable(rs)
	if err != nil {
		return nil, err
	}
	addSet := make(map[*region]bool, len(add))
	for _, r := range add {
		addSet[r] = true
	}
	for _, r := range nt.regions {
		if !addSet[r] {
			r.refs.Add(1)
		}
	}
	return nt, nil
}
