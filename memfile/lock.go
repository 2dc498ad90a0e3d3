package memfile

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// LockKind is the kind of OFD lock held on a backing.
type LockKind int

// Lock kinds.
const (
	LockNone      LockKind = iota
	LockShared             // read-only use: many readers
	LockExclusive          // writable use: one writer, no readers
)

func (k LockKind) String() string {
	switch k {
	case LockShared:
		return "shared"
	case LockExclusive:
		return "exclusive"
	}
	return "none"
}

// ErrLocked is wrapped by Lock when another open file description holds a
// conflicting lock: usually a running VM that nvdimm-backend attached.
var ErrLocked = errors.New("backing is locked by another user")

// Lock takes an OFD lock over the whole backing: LockExclusive for
// writable use, LockShared for read-only use. With wait it blocks until
// the lock is free; without it a conflict returns an error wrapping
// ErrLocked. Locks are tied to this open file and released by Unlock or
// Close, or when the process exits. Taking another kind converts the lock.
func (b *Backing) Lock(kind LockKind, wait bool) error {
	var typ int16
	switch kind {
	case LockShared:
		typ = unix.F_RDLCK
	case LockExclusive:
		if b.readOnly {
			return fmt.Errorf("lock %s: an exclusive lock is for writable use and the backing is open read-only", b.path)
		}
		typ = unix.F_WRLCK
	default:
		return fmt.Errorf("lock %s: unknown lock kind %d", b.path, kind)
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return fmt.Errorf("lock %s: backing is closed", b.path)
	}
	cmd := unix.F_OFD_SETLK
	if wait {
		cmd = unix.F_OFD_SETLKW
	}
	fl := unix.Flock_t{Type: typ, Whence: 0, Start: 0, Len: 0}
	for {
		// The mutex is not held here: a waiting Lock must not block Close.
		err := unix.FcntlFlock(b.f.Fd(), cmd, &fl)
		if err == nil {
			b.mu.Lock()
			b.held = kind
			b.mu.Unlock()
			return nil
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			return fmt.Errorf("lock %s (%s): %w: %s; stop it first", b.path, kind, ErrLocked, b.holder(typ))
		}
		return fmt.Errorf("lock %s (%s): %w", b.path, kind, err)
	}
}

// holder describes the conflicting lock for an error message; Lock adds
// the advice once ("; stop it first"), callers may extend it.
func (b *Backing) holder(typ int16) string {
	fl := unix.Flock_t{Type: typ, Whence: 0, Start: 0, Len: 0}
	if err := unix.FcntlFlock(b.f.Fd(), unix.F_OFD_GETLK, &fl); err != nil || fl.Type == unix.F_UNLCK {
		return "another process holds it"
	}
	what := "a reader (shared lock)"
	if fl.Type == unix.F_WRLCK {
		what = "a writer (exclusive lock)"
	}
	return what + " holds it, probably a running VM"
}

// Unlock releases the lock taken by Lock.
func (b *Backing) Unlock() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed || b.held == LockNone {
		return nil
	}
	fl := unix.Flock_t{Type: unix.F_UNLCK, Whence: 0, Start: 0, Len: 0}
	if err := unix.FcntlFlock(b.f.Fd(), unix.F_OFD_SETLK, &fl); err != nil {
		return fmt.Errorf("unlock %s: %w", b.path, err)
	}
	b.held = LockNone
	return nil
}

// Held is the lock this Backing holds.
func (b *Backing) Held() LockKind {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.held
}
