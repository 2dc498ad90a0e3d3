package vhostuser

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Descriptor flags and ring limits (split virtqueue).
const (
	descFlagNext     = 1
	descFlagWrite    = 2
	descFlagIndirect = 4
	descSize         = 16

	availFlagNoInterrupt = 1

	// MaxQueueSize is the largest split queue the spec allows.
	MaxQueueSize = 32768
)

var le = binary.LittleEndian

// Segment is one guest buffer of a descriptor chain.
type Segment struct {
	GPA uint64
	Len uint32
}

// Chain is a validated descriptor chain: device-readable buffers first,
// then device-writable ones.
type Chain struct {
	Head     uint16
	Readable []Segment
	Writable []Segment
	ReadLen  uint64
	WriteLen uint64
}

// ChainError describes why a descriptor chain was refused.
type ChainError struct {
	Head   uint16
	Desc   uint32 // index of the offending descriptor in its table
	Table  string // "ring" or "indirect"
	Reason string
}

func (e *ChainError) Error() string {
	return fmt.Sprintf("descriptor chain head %d: %s descriptor %d: %s", e.Head, e.Table, e.Desc, e.Reason)
}

// walkChain validates the chain starting at head in the descriptor table
// desc (qsize entries of guest memory) and collects its buffers. It reads
// each descriptor once into locals (the guest may change memory under
// us), follows at most qsize descriptors per table (the loop guard), and
// checks every rule of the split ring: head and next in range, INDIRECT
// only with the feature, never nested, never with NEXT, a table length
// that is a non-zero multiple of 16 and at most qsize entries, no
// readable buffer after a writable one, no zero-length buffer, every
// buffer inside guest memory (it may span regions) and a total below
// 2^32 bytes.
func walkChain(mem *memTable, desc []byte, qsize uint16, head uint16, indirectOK bool) (Chain, error) {
	c := Chain{Head: head}
	if head >= qsize {
		return c, &ChainError{Head: head, Desc: uint32(head), Table: "ring", Reason: fmt.Sprintf("head %d is outside the %d-entry queue", head, qsize)}
	}
	if len(desc) < int(qsize)*descSize {
		return c, &ChainError{Head: head, Table: "ring", Reason: "descriptor table shorter than the queue"}
	}
	table, n, where := desc, uint32(qsize), "ring"
	idx, count := uint32(head), uint32(0)
	indirect := false
	var total uint64
	for {
		if count >= n {
			return c, &ChainError{Head: head, Desc: idx, Table: where, Reason: fmt.Sprintf("chain longer than %d descriptors (a loop)", n)}
		}
		count++
		d := table[idx*descSize : idx*descSize+descSize]
		addr, length := le.Uint64(d), le.Uint32(d[8:])
		flags, next := le.Uint16(d[12:]), le.Uint16(d[14:])
		bad := func(format string, a ...any) error {
			return &ChainError{Head: head, Desc: idx, Table: where, Reason: fmt.Sprintf(format, a...)}
		}
		if flags&descFlagIndirect != 0 {
			switch {
			case !indirectOK:
				return c, bad("INDIRECT without the INDIRECT_DESC feature")
			case indirect:
				return c, bad("INDIRECT inside an indirect table")
			case flags&descFlagNext != 0:
				return c, bad("INDIRECT together with NEXT")
			case length == 0 || length%descSize != 0:
				return c, bad("indirect table length %d is not a non-zero multiple of 16", length)
			case length/descSize > uint32(qsize):
				return c, bad("indirect table of %d entries exceeds the queue size %d", length/descSize, qsize)
			}
			buf := make([]byte, length)
			if err := mem.copyOut(buf, addr); err != nil {
				return c, bad("indirect table at gpa %#x len %d: %v", addr, length, err)
			}
			table, n, where = buf, length/descSize, "indirect"
			idx, count, indirect = 0, 0, true
			continue
		}
		if length == 0 {
			return c, bad("zero-length buffer")
		}
		if err := mem.check(addr, uint64(length)); err != nil {
			return c, bad("buffer gpa %#x len %d: %v", addr, length, err)
		}
		total += uint64(length)
		if total > math.MaxUint32 {
			return c, bad("chain carries %d bytes, more than 2^32-1", total)
		}
		seg := Segment{GPA: addr, Len: length}
		if flags&descFlagWrite != 0 {
			c.Writable = append(c.Writable, seg)
			c.WriteLen += uint64(length)
		} else {
			if len(c.Writable) > 0 {
				return c, bad("device-readable buffer after a device-writable one")
			}
			c.Readable = append(c.Readable, seg)
			c.ReadLen += uint64(length)
		}
		if flags&descFlagNext == 0 {
			return c, nil
		}
		if uint32(next) >= n {
			return c, bad("next %d is outside the %d-entry table", next, n)
		}
		idx = uint32(next)
	}
}
