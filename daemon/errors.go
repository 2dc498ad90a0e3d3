package daemon

// Error categories beyond the registry's own (ErrNotFound, ErrExists,
// ErrInvalid, ErrConflict in daemon.go, ErrBadLayout, ErrBackingLocked):
// failures of memfile, the image catalog and QMP are sorted into them here,
// by sentinel or errno, so that the control API answers a user's mistake
// with a 4xx and keeps 5xx for faults of the daemon's host.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"syscall"

	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

var (
	// ErrUnusableBacking marks an existing backing or image file that
	// cannot be used as it is: gone, not a backing (a directory, a FIFO, a
	// size no layout fits), a metadata record that is unreadable or
	// disagrees with the file, or a file the daemon may not open. The
	// control API answers 422 "unusable_backing".
	ErrUnusableBacking = errors.New("unusable backing")
	// ErrNoSpace marks a backing that could not be created for lack of
	// space or quota; 507 "no_space".
	ErrNoSpace = errors.New("no space for the backing")
	// ErrUnavailable marks a request refused because the daemon is
	// shutting down; 503 "unavailable".
	ErrUnavailable = errors.New("daemon is shutting down")
)

// tagged is an error put in a category: its text unchanged, matching both
// the error and the category.
type tagged struct{ err, cat error }

func (e tagged) Error() string   { return e.err.Error() }
func (e tagged) Unwrap() []error { return []error{e.err, e.cat} }

// tag puts err in category cat.
func tag(cat, err error) error { return tagged{err: err, cat: cat} }

// categorized reports whether err already is in a category: one the
// control API answers with a status other than 500 (errStatus).
func categorized(err error) bool {
	_, code := errStatus(err)
	return code != "internal"
}

// errnoIn reports whether err wraps one of the errnos.
func errnoIn(err error, errnos ...syscall.Errno) bool {
	for _, e := range errnos {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// isOSError reports whether err comes from a system call (or a cancelled
// context) rather than from a check of what was found.
func isOSError(err error) bool {
	var errno syscall.Errno
	return errors.As(err, &errno) || errors.Is(err, context.Canceled)
}

// backingErr sorts a failure to open, check or lock an existing backing
// or image file: one already in a category keeps it; a missing file, a
// permission refusal, a path that is not a file, and every refusal of the
// file's content (an error not from a system call) is ErrUnusableBacking;
// any other system error stays a server fault.
func backingErr(err error) error {
	if err == nil || categorized(err) {
		return err
	}
	if !isOSError(err) || errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) ||
		errnoIn(err, syscall.EROFS, syscall.ENOTDIR, syscall.EISDIR, syscall.ENAMETOOLONG, syscall.ELOOP, syscall.ENXIO, syscall.ENODEV, syscall.ETXTBSY) {
		return tag(ErrUnusableBacking, err)
	}
	return err
}

// namesPath reports whether err's text already names path, as memfile's
// errors do ("backing P: ...", "create P: ...", "P is a named pipe"): a
// wrapper then leaves the path out, so that a message names it once. A
// longer path that starts with path (its metadata record P.nvdimm.json)
// does not count.
func namesPath(err error, path string) bool {
	if path == "" {
		return false
	}
	s := err.Error()
	for off := 0; ; {
		i := strings.Index(s[off:], path)
		if i < 0 {
			return false
		}
		end := off + i + len(path)
		if end == len(s) || strings.IndexByte(": ,;)'\"\n", s[end]) >= 0 {
			return true
		}
		off += i + 1
	}
}

// inBacking wraps err as "backing PATH: err", or returns it unchanged if
// it already names path.
func inBacking(path string, err error) error {
	if namesPath(err, path) {
		return err
	}
	return fmt.Errorf("backing %s: %w", path, err)
}

// createErr sorts a failure of memfile.Create: a size the filesystem
// cannot hold is ErrBadLayout; too little free space up front
// (memfile.ErrNoSpace) or a full filesystem or quota while writing is
// ErrNoSpace; a refusal that is not from a system call (the path exists
// now, a stale metadata record, a parent that is a file) is ErrConflict;
// other system errors stay server faults.
func createErr(err error) error {
	switch {
	case err == nil || categorized(err):
		return err
	case errnoIn(err, syscall.EFBIG):
		return tag(ErrBadLayout, err)
	case errors.Is(err, memfile.ErrNoSpace) || errnoIn(err, syscall.ENOSPC, syscall.EDQUOT):
		return tag(ErrNoSpace, err)
	case !isOSError(err):
		return tag(ErrConflict, err)
	}
	return err
}

// provisionErr sorts a failure to write a namespace into a just-created
// backing: a refusal of the request (name, mode, size) is ErrInvalid, a
// system error stays a server fault.
func provisionErr(err error) error {
	if err == nil || categorized(err) || isOSError(err) {
		return err
	}
	return tag(ErrInvalid, err)
}

// qmpErr sorts a failure to reach a VM's QMP monitor: a socket path where
// no VM listens, that the daemon may not use, or whose peer does not speak
// QMP is ErrInvalid (the request named the wrong socket); a timeout keeps
// its context error; other system errors stay server faults.
func qmpErr(err error) error {
	if err == nil || categorized(err) {
		return err
	}
	if !isOSError(err) || errnoIn(err, syscall.ENOENT, syscall.ECONNREFUSED, syscall.EACCES, syscall.EPERM,
		syscall.ENOTSOCK, syscall.ENOTDIR, syscall.EPROTOTYPE, syscall.ECONNRESET, syscall.EPIPE) {
		return tag(ErrInvalid, err)
	}
	return err
}
