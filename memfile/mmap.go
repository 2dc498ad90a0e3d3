package memfile

import (
	"errors"
	"fmt"
	"math"

	"golang.org/x/sys/unix"
)

// Map maps the whole backing shared. A writable mapping of a backing that
// supports it uses MAP_SYNC (through MAP_SHARED_VALIDATE), so stores are
// durable once flushed from the CPU caches; readOnly maps it PROT_READ. The
// returned function unmaps it.
func Map(b *Backing, readOnly bool) ([]byte, func() error, error) {
	if !readOnly && b.readOnly {
		return nil, nil, fmt.Errorf("map %s: writable mapping of a backing opened read-only", b.path)
	}
	if b.size == 0 || b.size > math.MaxInt {
		return nil, nil, fmt.Errorf("map %s: size %d cannot be mapped", b.path, b.size)
	}
	if b.devAlign != 0 && b.size%b.devAlign != 0 {
		return nil, nil, fmt.Errorf("map %s: size %d is not a multiple of the devdax align %d", b.path, b.size, b.devAlign)
	}
	prot := unix.PROT_READ
	if !readOnly {
		prot |= unix.PROT_WRITE
	}
	fd := int(b.f.Fd())
	var m []byte
	var err error
	if !readOnly && b.mapSync {
		m, err = unix.Mmap(fd, 0, int(b.size), prot, unix.MAP_SHARED_VALIDATE|unix.MAP_SYNC)
		if err != nil && !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EINVAL) {
			return nil, nil, fmt.Errorf("map %s with MAP_SYNC: %w", b.path, err)
		}
	}
	if m == nil {
		m, err = unix.Mmap(fd, 0, int(b.size), prot, unix.MAP_SHARED)
		if err != nil {
			return nil, nil, fmt.Errorf("map %s: %w", b.path, err)
		}
	}
	done := false
	unmap := func() error {
		if done {
			return nil
		}
		done = true
		if err := unix.Munmap(m); err != nil {
			return fmt.Errorf("unmap %s: %w", b.path, err)
		}
		return nil
	}
	return m, unmap, nil
}
