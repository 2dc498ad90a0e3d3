package qmp

import (
	"context"
	"fmt"
	"os"
)

// GetFD passes f's descriptor to QEMU under name (command getfd), for
// later use by commands that take an fd name. QEMU keeps its own copy;
// the caller may close f afterwards.
func (c *Client) GetFD(ctx context.Context, name string, f *os.File) error {
	if err := checkID("fdname", name); err != nil {
		return fmt.Errorf("qmp %s: getfd: %w", c.path, err)
	}
	c.fdMu.Lock()
	defer c.fdMu.Unlock()
	if err := fileFD(f, func(fd int) error {
		return c.execute(ctx, "getfd", map[string]any{"fdname": name}, nil, []int{fd})
	}); err != nil {
		return c.cmdErr("getfd", err)
	}
	return nil
}

// CloseFD makes QEMU close a descriptor passed with GetFD (closefd).
func (c *Client) CloseFD(ctx context.Context, name string) error {
	return c.Execute(ctx, "closefd", map[string]any{"fdname": name}, nil)
}

// AddFDInfo is add-fd's answer: the fd set and QEMU's number for the
// descriptor (usable as /dev/fdset/ID paths).
type AddFDInfo struct {
	FDSetID int `json:"fdset-id"`
	FD      int `json:"fd"`
}

// AddFD passes f's descriptor into an fd set (command add-fd): into set
// *fdsetID when given, else a new set. opaque is a free-form note QEMU
// keeps with it ("" for none).
func (c *Client) AddFD(ctx context.Context, fdsetID *int, f *os.File, opaque string) (AddFDInfo, error) {
	args := map[string]any{}
	if fdsetID != nil {
		if *fdsetID < 0 {
			return AddFDInfo{}, fmt.Errorf("qmp %s: add-fd: fdset-id %d is negative", c.path, *fdsetID)
		}
		args["fdset-id"] = *fdsetID
	}
	if opaque != "" {
		args["opaque"] = opaque
	}
	var info AddFDInfo
	c.fdMu.Lock()
	defer c.fdMu.Unlock()
	if err := fileFD(f, func(fd int) error {
		return c.execute(ctx, "add-fd", args, &info, []int{fd})
	}); err != nil {
		return AddFDInfo{}, c.cmdErr("add-fd", err)
	}
	return info, nil
}

// RemoveFD removes descriptor fd (or, when fd is nil, every descriptor)
// from fd set fdsetID (command remove-fd).
func (c *Client) RemoveFD(ctx context.Context, fdsetID int, fd *int) error {
	args := map[string]any{"fdset-id": fdsetID}
	if fd != nil {
		args["fd"] = *fd
	}
	return c.Execute(ctx, "remove-fd", args, nil)
}
