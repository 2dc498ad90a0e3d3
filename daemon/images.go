package daemon

// Devices backed by catalogued shared read-only images (memfile's image
// catalog): many devices, each attached to its own VM, may name the same
// image; every one is read-only, attached as an unarmed nvdimm, and holds
// the image under a shared lock while its VM runs.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/nvdimm-backend/nvdimm-backend/memfile"
)

// ImageInfo describes a catalogued image as a device backing.
type ImageInfo struct {
	// Path is the image file as the catalog records it.
	Path string
	// BackingInfo gives the sizes, alignment and pmem; LabelSize is
	// always 0 (images are label-less) and Created false.
	BackingInfo
}

// Images is the catalog of shared read-only images the daemon attaches
// from. Production wires it to memfile's Catalog (CatalogImages).
type Images interface {
	// Dir is the catalog directory; image files there may only be used
	// through the catalog.
	Dir() string
	// Prepare checks that image name exists, opens read-only under a
	// shared lock, agrees with the catalog, and can be attached read-only;
	// it describes the image. An unknown name wraps
	// memfile.ErrImageNotFound.
	Prepare(ctx context.Context, name string) (ImageInfo, error)
	// Lock opens image name read-only and takes its shared lock, which is
	// held until the closer is closed (while a VM uses it). It refuses an
	// image that no longer names the file at path or is no longer size
	// bytes; a writer holding the file wraps ErrBackingLocked.
	Lock(name, path string, size uint64) (io.Closer, error)
	// ImageAt returns the name of the image whose file is path, "" when
	// none is.
	ImageAt(path string) (string, error)
}

// CatalogImages is the production Images: memfile's Catalog.
type CatalogImages struct {
	Catalog *memfile.Catalog
}

// Dir implements Images.
func (c CatalogImages) Dir() string { return c.Catalog.Dir() }

// Prepare implements Images. The sizes, alignment and pmem come from the
// catalog's own QEMU arguments (Catalog.QEMUArgs, which has no writable
// form), cross-checked against the image opened read-only.
func (c CatalogImages) Prepare(ctx context.Context, name string) (ImageInfo, error) {
	im, err := c.Catalog.Get(name)
	if err != nil {
		return ImageInfo{}, err
	}
	b, err := c.Catalog.Open(name)
	if err != nil {
		return ImageInfo{}, backingErr(lockedErr(err))
	}
	defer b.Close()
	l := b.Layout()
	if l.LabelSize != 0 {
		return ImageInfo{}, tag(ErrUnusableBacking, fmt.Errorf("image %s: %s has a %s label area; images are label-less", name, im.Path, memfile.FormatSize(l.LabelSize)))
	}
	args, err := c.Catalog.QEMUArgs(name, memfile.QEMUArgOptions{ID: "nv0", Slot: -1}, false)
	if err != nil {
		return ImageInfo{}, backingErr(err)
	}
	info, err := imageInfoFromArgs(args)
	if err != nil {
		return ImageInfo{}, tag(ErrUnusableBacking, fmt.Errorf("image %s: %w", name, err))
	}
	if info.BackingSize != b.Size() || info.Align != l.Align {
		return ImageInfo{}, tag(ErrUnusableBacking, fmt.Errorf("image %s: the catalog's QEMU arguments give size %d and align %d, the file %s has %d and %d: run image verify",
			name, info.BackingSize, info.Align, im.Path, b.Size(), l.Align))
	}
	info.Size = l.GuestSize
	return ImageInfo{Path: im.Path, BackingInfo: info}, nil
}

// Lock implements Images.
func (c CatalogImages) Lock(name, path string, size uint64) (io.Closer, error) {
	b, err := c.Catalog.Open(name)
	if err != nil {
		return nil, backingErr(lockedErr(err))
	}
	if b.Path() != path || b.Size() != size {
		b.Close()
		return nil, fmt.Errorf("%w: image %q is now the file %s (%d bytes), not the %s (%d bytes) the device was made from: delete the device and create it again",
			ErrConflict, name, b.Path(), b.Size(), path, size)
	}
	return b, nil
}

// ImageAt implements Images.
func (c CatalogImages) ImageAt(path string) (string, error) {
	ims, err := c.Catalog.List()
	if err != nil {
		return "", err
	}
	for _, im := range ims {
		if im.Path == path {
			return im.Name, nil
		}
	}
	return "", nil
}

func lockedErr(err error) error {
	if errors.Is(err, memfile.ErrLocked) {
		return fmt.Errorf("%w: %w", ErrBackingLocked, err)
	}
	return err
}

// imageInfoFromArgs reads the memory backend's size, align and pmem from
// the catalog's -object value and checks that it and the -device value
// are the read-only attach: readonly=on and share=on on the backend,
// unarmed=on on a label-less nvdimm.
func imageInfoFromArgs(a memfile.QEMUArgs) (BackingInfo, error) {
	otype, obj := splitQEMUOpts(a.Object)
	dtype, dev := splitQEMUOpts(a.Device)
	if otype != "memory-backend-file" || dtype != "nvdimm" {
		return BackingInfo{}, fmt.Errorf("catalog's QEMU arguments attach %s with %s, want an nvdimm on a memory-backend-file", dtype, otype)
	}
	for _, want := range []struct{ where, key string }{{"object", "readonly"}, {"object", "share"}, {"device", "unarmed"}} {
		m := obj
		if want.where == "device" {
			m = dev
		}
		if m[want.key] != "on" {
			return BackingInfo{}, fmt.Errorf("catalog's QEMU arguments lack %s=on on the %s: refusing an attach that is not read-only", want.key, want.where)
		}
	}
	if _, ok := dev["label-size"]; ok {
		return BackingInfo{}, errors.New("catalog's QEMU arguments give the nvdimm a label area; images are label-less")
	}
	var info BackingInfo
	var err error
	if info.BackingSize, err = memfile.ParseSize(obj["size"]); err != nil {
		return BackingInfo{}, fmt.Errorf("catalog's QEMU arguments: %w", err)
	}
	if info.Align, err = memfile.ParseSize(obj["align"]); err != nil {
		return BackingInfo{}, fmt.Errorf("catalog's QEMU arguments: %w", err)
	}
	info.PMem = obj["pmem"] == "on"
	return info, nil
}

// splitQEMUOpts splits a QEMU option string "type,k=v,k=v" (",," is an
// escaped comma) into its type and properties.
func splitQEMUOpts(s string) (string, map[string]string) {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				cur.WriteByte(',')
				i++
				continue
			}
			parts = append(parts, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(s[i])
	}
	parts = append(parts, cur.String())
	props := map[string]string{}
	for _, p := range parts[1:] {
		k, v, _ := strings.Cut(p, "=")
		props[k] = v
	}
	return parts[0], props
}

// createImage registers a device made from a catalogued image.
func (d *Daemon) createImage(ctx context.Context, req CreateRequest) (Device, error) {
	if d.cfg.Images == nil {
		return Device{}, fmt.Errorf("%w: device %q: this daemon has no image catalog", ErrInvalid, req.Name)
	}
	var extra []string
	if req.Backing != "" {
		extra = append(extra, "a backing (the image's file comes from the catalog)")
	}
	if req.Size != 0 {
		extra = append(extra, "a size (the catalog records the image's)")
	}
	if req.LabelSize != 0 {
		extra = append(extra, "a label size (images are label-less)")
	}
	if req.Namespace != "" || req.Mode != "" || req.Slot != nil {
		extra = append(extra, "a namespace, mode or slot (the guest finds the image's namespace through its info block; nothing is written)")
	}
	if len(extra) > 0 {
		return Device{}, fmt.Errorf("%w: device %q from image %q: do not give %s", ErrInvalid, req.Name, req.Image, strings.Join(extra, ", "))
	}
	info, err := d.cfg.Images.Prepare(ctx, req.Image)
	if err != nil {
		return Device{}, fmt.Errorf("device %q: image %q: %w", req.Name, req.Image, err)
	}
	path, err := d.confiner.CheckImage(info.Path)
	if err != nil {
		return Device{}, fmt.Errorf("device %q: image %q: %w", req.Name, req.Image, err)
	}
	d.opMu.Lock()
	defer d.opMu.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.devices[req.Name]; ok {
		return Device{}, fmt.Errorf("device %q: %w", req.Name, ErrExists)
	}
	for _, o := range d.devices {
		if o.Backing == path && o.Image == "" {
			return Device{}, fmt.Errorf("%w: image %q's file %s is registered as the backing of device %q", ErrConflict, req.Image, path, o.Name)
		}
	}
	dv := &Device{
		Name: req.Name, Image: req.Image, Backing: path, BackingSize: info.BackingSize,
		Size: info.Size, Align: info.Align, PMem: info.PMem, ReadOnly: true,
		CreatedAt: d.cfg.Now().UTC(),
	}
	d.devices[dv.Name] = dv
	if err := d.saveLocked(); err != nil {
		delete(d.devices, dv.Name)
		return Device{}, err
	}
	d.log.Info("device created", "device", dv.Name, "image", req.Image, "backing", path)
	return copyDevice(dv), nil
}

// lockBacking takes the lock a device holds while attached: the image's
// shared lock through the catalog, else the backing's lock.
func (d *Daemon) lockBacking(dv Device) (io.Closer, error) {
	if dv.Image == "" {
		return d.cfg.Backings.Lock(dv.Backing, dv.ReadOnly)
	}
	if d.cfg.Images == nil {
		return nil, fmt.Errorf("%w: device %q is made from image %q and this daemon has no image catalog", ErrInvalid, dv.Name, dv.Image)
	}
	return d.cfg.Images.Lock(dv.Image, dv.Backing, dv.BackingSize)
}

// checkImageAttach refuses every attach of an image device but the
// read-only nvdimm one.
func checkImageAttach(dv Device, as string) error {
	if dv.Image == "" {
		return nil
	}
	if !dv.ReadOnly {
		return fmt.Errorf("%w: device %q: image %q: refusing a writable attach; images are shared read-only", ErrInvalid, dv.Name, dv.Image)
	}
	switch as {
	case KindNVDIMM:
		return nil
	case KindVirtioPMEM:
		return fmt.Errorf("%w: device %q is the shared read-only image %q: virtio-pmem has no read-only mode (the guest maps it writable and flushes it), so images attach only as an nvdimm (--as nvdimm: readonly=on, share=on, unarmed=on)", ErrInvalid, dv.Name, dv.Image)
	default:
		return fmt.Errorf("%w: device %q is the shared read-only image %q: vhost-user shared memory is mapped writable by QEMU, so images attach only as an nvdimm (--as nvdimm: readonly=on, share=on, unarmed=on)", ErrInvalid, dv.Name, dv.Image)
	}
}
