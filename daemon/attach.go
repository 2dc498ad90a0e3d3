package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/nvdimm-backend/nvdimm-backend/memfile"
	"github.com/nvdimm-backend/nvdimm-backend/qmp"
	"github.com/nvdimm-backend/nvdimm-backend/vhostuser/pmem"
)

// AttachRequest is the body of POST /v1/devices/{name}/attach.
type AttachRequest struct {
	// QMP is the running VM's QMP socket.
	QMP string `json:"qmp"`
	// As is the kind: nvdimm, virtio-pmem or vhost-user.
	As string `json:"as"`
	// Bus optionally names the PCI bus (e.g. a pcie-root-port id) for the
	// PCI kinds.
	Bus string `json:"bus,omitempty"`
}

// QEMU ids the daemon uses for a device; the prefix keeps them apart from
// the VM's own ids and makes them valid QEMU ids.
func objectID(name string) string  { return "nvb-mem-" + name }
func deviceID(name string) string  { return "nvb-dev-" + name }
func chardevID(name string) string { return "nvb-chr-" + name }

// memoryDevice is one entry of query-memory-devices.
type memoryDevice struct {
	Type string `json:"type"`
	Data struct {
		ID      string `json:"id"`
		Addr    uint64 `json:"addr"`
		MemAddr uint64 `json:"memaddr"`
		Size    uint64 `json:"size"`
		Memdev  string `json:"memdev"`
	} `json:"data"`
}

// Attach hot-adds device name to the running VM whose QMP socket is
// req.QMP: lock the backing, add the backend object (or chardev), add the
// device, confirm it, record it. Any failure removes what was added and
// releases the lock.
//
// +checklocksignore: the deferred rollback closure confuses the analyzer.
func (d *Daemon) Attach(ctx context.Context, name string, req AttachRequest) (dev Device, err error) {
	switch req.As {
	case KindNVDIMM, KindVirtioPMEM, KindVhostUser:
	default:
		return Device{}, fmt.Errorf("%w: attach as %q: want nvdimm, virtio-pmem or vhost-user", ErrInvalid, req.As)
	}
	if !filepath.IsAbs(req.QMP) {
		return Device{}, fmt.Errorf("%w: QMP socket %q: must be an absolute path", ErrInvalid, req.QMP)
	}
	for _, c := range req.Bus {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return Device{}, fmt.Errorf("%w: bus %q: not a QEMU id", ErrInvalid, req.Bus)
		}
	}
	defer func() {
		res := "ok"
		if err != nil {
			res = "failed"
		}
		d.attaches.WithLabelValues(req.As, res).Inc()
	}()
	d.opMu.Lock()
	defer d.opMu.Unlock()
	d.mu.Lock()
	dv, ok := d.devices[name]
	if !ok {
		d.mu.Unlock()
		return Device{}, fmt.Errorf("device %q: %w", name, ErrNotFound)
	}
	if dv.Attached != nil {
		q := dv.Attached.QMP
		d.mu.Unlock()
		return Device{}, fmt.Errorf("%w: device %q is already attached to the VM at %s", ErrConflict, name, q)
	}
	snap := copyDevice(dv)
	d.mu.Unlock()

	if err := checkImageAttach(snap, req.As); err != nil {
		return Device{}, err
	}
	if err := checkVirtioAttach(snap, req.As); err != nil {
		return Device{}, err
	}
	if req.As == KindVhostUser && d.cfg.VhostUser == nil {
		return Device{}, fmt.Errorf("%w: this daemon has no vhost-user server support", ErrInvalid)
	}
	if req.As == KindNVDIMM && snap.LabelSize != 0 && snap.LabelSize >= snap.BackingSize {
		return Device{}, fmt.Errorf("%w: device %q: label size %d leaves no room in a %d-byte backing", ErrInvalid, name, snap.LabelSize, snap.BackingSize)
	}

	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()

	lock, err := d.lockBacking(snap)
	if err != nil {
		where := "lock " + snap.Backing
		if namesPath(err, snap.Backing) {
			where = "lock"
		}
		return Device{}, fmt.Errorf("device %q: %s: %w", name, where, err)
	}
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
			_ = lock.Close()
		}
	}()

	sess, fresh, err := d.session(ctx, req.QMP)
	if err != nil {
		return Device{}, fmt.Errorf("device %q: %w", name, err)
	}
	if fresh {
		undo = append(undo, func() { d.dropSessionIfUnused(req.QMP) })
	}

	att := &Attachment{QMP: req.QMP, Kind: req.As, DeviceID: deviceID(name)}
	switch req.As {
	case KindNVDIMM, KindVirtioPMEM:
		att.ObjectID = objectID(name)
		err = d.attachMemory(ctx, sess.conn, snap, req, att, &undo)
	case KindVhostUser:
		att.ChardevID = chardevID(name)
		err = d.attachVhostUser(ctx, sess.conn, snap, req, att, &undo)
	}
	if err != nil {
		if namesPath(err, req.QMP) { // a QMP failure names its socket
			return Device{}, fmt.Errorf("device %q: attach as %s: %w", name, req.As, err)
		}
		return Device{}, fmt.Errorf("device %q: attach to %s as %s: %w", name, req.QMP, req.As, err)
	}
	att.AttachedAt = d.cfg.Now().UTC()

	d.mu.Lock()
	defer d.mu.Unlock()
	dv, ok = d.devices[name]
	if !ok { // cannot happen under opMu; be safe
		return Device{}, fmt.Errorf("device %q: %w", name, ErrNotFound)
	}
	dv.Attached = att
	dv.Kind = req.As
	if req.As == KindVhostUser {
		dv.VhostUserSocket = d.VhostSocketPath(name)
	}
	if err = d.saveLocked(); err != nil {
		dv.Attached = nil
		return Device{}, fmt.Errorf("device %q attached but not recorded: %w", name, err)
	}
	d.locks[name] = lock
	if req.As == KindNVDIMM {
		d.startWritebackLocked(copyDevice(dv))
	}
	d.log.Info("device attached", "device", name, "qmp", req.QMP, "as", req.As, "addr", att.Addr)
	return copyDevice(dv), nil
}

// checkVirtioAttach refuses, before anything is sent to QEMU, a
// virtio-pmem or vhost-user attach of a device that cannot be a virtio-pmem
// device (memfile.CheckVirtioPMEM: read-only, a label area, a size or
// alignment the guest cannot map), and a vhost-user attach whose region
// QEMU cannot expose (pmem.CheckShmemBacking, the check vhost-user serve
// and the server itself apply).
func checkVirtioAttach(dv Device, as string) error {
	var err error
	switch as {
	case KindVirtioPMEM:
		// virtio-pmem-pci maps the whole memory backend at an
		// align boundary.
		err = memfile.CheckVirtioPMEM(dv.Backing, memfile.Layout{GuestSize: dv.Size, LabelSize: dv.LabelSize, Align: dv.Align, BackingSize: dv.BackingSize}, dv.ReadOnly)
	case KindVhostUser:
		err = pmem.CheckShmemBacking(dv.Backing, dv.Size, dv.LabelSize, dv.ReadOnly)
	}
	if err != nil {
		return fmt.Errorf("%w: device %q as %s: %w", ErrInvalid, dv.Name, as, err)
	}
	return nil
}

// attachMemory adds a memory-backend-file and an nvdimm or virtio-pmem-pci
// device, then confirms it in query-memory-devices.
func (d *Daemon) attachMemory(ctx context.Context, c QMPConn, dv Device, req AttachRequest, att *Attachment, undo *[]func()) error {
	obj := map[string]any{
		"qom-type": "memory-backend-file",
		"id":       att.ObjectID,
		"mem-path": dv.Backing,
		"size":     dv.BackingSize,
		"share":    true,
	}
	if dv.Align != 0 {
		obj["align"] = dv.Align
	}
	if dv.PMem {
		obj["pmem"] = true
	}
	if dv.ReadOnly {
		obj["readonly"] = true
	}
	if _, err := execute(ctx, c, "object-add", obj); err != nil {
		return err
	}
	*undo = append(*undo, func() { d.bestEffort(c, "object-del", map[string]any{"id": att.ObjectID}) })

	devArgs := map[string]any{"id": att.DeviceID, "memdev": att.ObjectID}
	if req.As == KindNVDIMM {
		devArgs["driver"] = "nvdimm"
		if dv.LabelSize != 0 {
			devArgs["label-size"] = dv.LabelSize
		}
		if dv.ReadOnly {
			devArgs["unarmed"] = true
		}
		if dv.Slot != nil {
			devArgs["slot"] = *dv.Slot
		}
	} else {
		devArgs["driver"] = "virtio-pmem-pci"
		if req.Bus != "" {
			devArgs["bus"] = req.Bus
		}
	}
	if _, err := execute(ctx, c, "device_add", devArgs); err != nil {
		return err
	}
	// QEMU cannot unplug these devices, but try in case a future one can:
	// the object-del after it then succeeds and leaves no residue.
	*undo = append(*undo, func() { d.bestEffort(c, "device_del", map[string]any{"id": att.DeviceID}) })

	raw, err := execute(ctx, c, "query-memory-devices", nil)
	if err != nil {
		return fmt.Errorf("confirming: %w", err)
	}
	var mds []memoryDevice
	if err := json.Unmarshal(raw, &mds); err != nil {
		return fmt.Errorf("confirming: query-memory-devices reply: %w", err)
	}
	want := "nvdimm"
	if req.As == KindVirtioPMEM {
		want = "virtio-pmem"
	}
	for _, m := range mds {
		if m.Data.ID != att.DeviceID {
			continue
		}
		if m.Type != want {
			return fmt.Errorf("confirming: query-memory-devices lists %s as %q, want %q", att.DeviceID, m.Type, want)
		}
		if m.Data.Memdev != "" && m.Data.Memdev != "/objects/"+att.ObjectID && m.Data.Memdev != att.ObjectID {
			return fmt.Errorf("confirming: %s uses memdev %q, want %q", att.DeviceID, m.Data.Memdev, att.ObjectID)
		}
		att.Addr = m.Data.Addr
		if want == "virtio-pmem" {
			att.Addr = m.Data.MemAddr
		}
		return nil
	}
	return fmt.Errorf("confirming: %s is not in query-memory-devices", att.DeviceID)
}

// attachVhostUser makes sure the device's vhost-user server is listening,
// then adds a client chardev to it and a vhost-user-test-device-pci
// (virtio-id 27, one queue, 16-byte config).
func (d *Daemon) attachVhostUser(ctx context.Context, c QMPConn, dv Device, req AttachRequest, att *Attachment, undo *[]func()) error {
	sock := d.VhostSocketPath(dv.Name)
	started, err := d.ensureVhostServer(dv, sock)
	if err != nil {
		return err
	}
	if started {
		*undo = append(*undo, func() { d.stopVhostServer(dv.Name) })
	}
	chr := map[string]any{
		"id": att.ChardevID,
		"backend": map[string]any{
			"type": "socket",
			"data": map[string]any{
				"addr":         map[string]any{"type": "unix", "data": map[string]any{"path": sock}},
				"server":       false,
				"reconnect-ms": 1000,
			},
		},
	}
	if _, err := execute(ctx, c, "chardev-add", chr); err != nil {
		return err
	}
	*undo = append(*undo, func() { d.bestEffort(c, "chardev-remove", map[string]any{"id": att.ChardevID}) })
	if err := waitChardevConnected(ctx, c, att.ChardevID); err != nil {
		return err
	}
	devArgs := map[string]any{
		"driver":      "vhost-user-test-device-pci",
		"id":          att.DeviceID,
		"chardev":     att.ChardevID,
		"virtio-id":   27,
		"num_vqs":     1,
		"config_size": 16,
	}
	if req.Bus != "" {
		devArgs["bus"] = req.Bus
	}
	if _, err := execute(ctx, c, "device_add", devArgs); err != nil {
		return err
	}
	*undo = append(*undo, func() { d.bestEffort(c, "device_del", map[string]any{"id": att.DeviceID}) })
	raw, err := execute(ctx, c, "qom-get", map[string]any{"path": "/machine/peripheral/" + att.DeviceID, "property": "type"})
	if err != nil {
		return fmt.Errorf("confirming: %w", err)
	}
	var typ string
	if err := json.Unmarshal(raw, &typ); err != nil || typ != "vhost-user-test-device-pci" {
		return fmt.Errorf("confirming: /machine/peripheral/%s has type %s, want vhost-user-test-device-pci", att.DeviceID, raw)
	}
	return nil
}

// execute runs a command, turning a refusal into a *QEMUError that names
// the command.
func execute(ctx context.Context, c QMPConn, cmd string, args any) (json.RawMessage, error) {
	r, err := c.Execute(ctx, cmd, args)
	if err != nil {
		var qe *QEMUError
		if errors.As(err, &qe) {
			if qe.Command == "" {
				qe2 := *qe
				qe2.Command = cmd
				return nil, &qe2
			}
			return nil, err
		}
		return nil, fmt.Errorf("%s: %w", cmd, err)
	}
	return r, nil
}

// bestEffort runs a rollback command with its own short deadline (the
// attach context may have expired) and logs a failure.
func (d *Daemon) bestEffort(c QMPConn, cmd string, args map[string]any) {
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.Timeout)
	defer cancel()
	if _, err := execute(ctx, c, cmd, args); err != nil {
		d.log.Warn("rollback step failed", "command", cmd, "args", args, "err", err)
	}
}

// session returns the QMP session for path, dialling it when there is
// none; fresh reports that it was dialled now.
func (d *Daemon) session(ctx context.Context, path string) (*vmSession, bool, error) {
	d.mu.Lock()
	if s, ok := d.sessions[path]; ok {
		select {
		case <-s.conn.Gone():
		default:
			d.mu.Unlock()
			return s, false, nil
		}
	}
	d.mu.Unlock()
	if d.cfg.DialQMP == nil {
		return nil, false, errors.New("this daemon has no QMP dialer")
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, false, qmpErr(inQMPSocket(path, err))
	}
	if what := qmp.NotSocket(fi); what != "" {
		return nil, false, tag(ErrInvalid, fmt.Errorf("QMP socket %s: not a Unix socket (it is %s)", path, what))
	}
	conn, err := d.cfg.DialQMP(ctx, path)
	if err != nil {
		return nil, false, qmpErr(inQMPSocket(path, err))
	}
	s := &vmSession{path: path, conn: conn}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		_ = conn.Close()
		return nil, false, ErrUnavailable
	}
	d.sessions[path] = s
	d.mu.Unlock()
	d.wg.Add(1)
	go d.watch(s)
	return s, true, nil
}

// dropSessionIfUnused closes a session no device is attached through.
func (d *Daemon) dropSessionIfUnused(path string) {
	d.mu.Lock()
	s, ok := d.sessions[path]
	if !ok {
		d.mu.Unlock()
		return
	}
	for _, dv := range d.devices {
		if dv.Attached != nil && dv.Attached.QMP == path {
			d.mu.Unlock()
			return
		}
	}
	delete(d.sessions, path)
	d.mu.Unlock()
	_ = s.conn.Close()
}

// watch waits for the VM behind s to go away and releases its devices.
func (d *Daemon) watch(s *vmSession) {
	defer d.wg.Done()
	select {
	case <-d.stop:
		return
	case <-s.conn.Gone():
	}
	d.opMu.Lock()
	defer d.opMu.Unlock()
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	cur, ok := d.sessions[s.path]
	current := ok && cur == s
	if current {
		delete(d.sessions, s.path)
	}
	d.mu.Unlock()
	_ = s.conn.Close()
	if !current {
		// The daemon dropped this session itself (no device used it, or a
		// newer session replaced it): nothing to release.
		return
	}
	d.releaseVM(s.path, "the VM went away (SHUTDOWN or QMP socket closed)")
}

// releaseVM releases every device attached through the QMP socket path:
// drops the lock, stops the vhost-user server and clears the attachment.
// Caller holds opMu.
func (d *Daemon) releaseVM(path, why string) {
	var names []string
	d.mu.Lock()
	for _, dv := range d.devices {
		if dv.Attached != nil && dv.Attached.QMP == path {
			names = append(names, dv.Name)
		}
	}
	d.mu.Unlock()
	d.release(names, why)
}

// release frees the named devices: their locks and vhost-user servers
// first, then the attachments are cleared and saved, so that anyone who
// sees a device unattached also finds its backing unlocked. Caller holds
// opMu.
func (d *Daemon) release(names []string, why string) {
	if len(names) == 0 {
		return
	}
	var closers []io.Closer
	d.mu.Lock()
	for _, n := range names {
		if wb, ok := d.writebacks[n]; ok { // its last sync runs before the lock goes
			closers = append(closers, wb)
			delete(d.writebacks, n)
		}
		if l, ok := d.locks[n]; ok {
			closers = append(closers, l)
			delete(d.locks, n)
		}
	}
	d.mu.Unlock()
	for _, c := range closers {
		_ = c.Close()
	}
	for _, n := range names {
		d.stopVhostServer(n)
	}
	qmps := map[string]string{}
	d.mu.Lock()
	for _, n := range names {
		if dv, ok := d.devices[n]; ok && dv.Attached != nil {
			qmps[n] = dv.Attached.QMP
			dv.Attached = nil
		}
	}
	if err := d.saveLocked(); err != nil {
		d.log.Error("saving state after release", "err", err)
	}
	d.mu.Unlock()
	for _, n := range names {
		d.releases.Inc()
		d.log.Info("device released", "device", n, "qmp", qmps[n], "why", why)
	}
}

// Detach asks QEMU to unplug the device. QEMU refuses for nvdimm and
// virtio-pmem; the refusal is returned as is (a *QEMUError).
func (d *Daemon) Detach(ctx context.Context, name string) error {
	d.opMu.Lock()
	defer d.opMu.Unlock()
	d.mu.Lock()
	dv, ok := d.devices[name]
	if !ok {
		d.mu.Unlock()
		return fmt.Errorf("device %q: %w", name, ErrNotFound)
	}
	if dv.Attached == nil {
		d.mu.Unlock()
		return fmt.Errorf("%w: device %q is not attached", ErrConflict, name)
	}
	att := *dv.Attached
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	s, fresh, err := d.session(ctx, att.QMP)
	if err != nil {
		return fmt.Errorf("device %q: detach: %w", name, err)
	}
	_ = fresh
	if _, err := execute(ctx, s.conn, "device_del", map[string]any{"id": att.DeviceID}); err != nil {
		return fmt.Errorf("device %q: detach: %w", name, err)
	}
	// QEMU accepted; the device goes once the guest ejects it. Wait for
	// that (the device vanishes from /machine/peripheral) before removing
	// the backend pieces and releasing the backing.
	if err := d.waitUnplugged(ctx, s.conn, att.DeviceID); err != nil {
		return fmt.Errorf("device %q: QEMU accepted the unplug but the guest has not released the device (%w); it stays attached and is released when the VM exits or a later detach finds it gone", name, err)
	}
	if att.ObjectID != "" {
		d.bestEffort(s.conn, "object-del", map[string]any{"id": att.ObjectID})
	}
	if att.ChardevID != "" {
		d.bestEffort(s.conn, "chardev-remove", map[string]any{"id": att.ChardevID})
	}
	d.release([]string{name}, "detached")
	return nil
}

// waitUnplugged polls until the device is gone from QEMU's peripheral
// container, or ctx ends.
func (d *Daemon) waitUnplugged(ctx context.Context, c QMPConn, id string) error {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		_, err := c.Execute(ctx, "qom-get", map[string]any{"path": "/machine/peripheral/" + id, "property": "type"})
		var qe *QEMUError
		if errors.As(err, &qe) && qe.Class == "DeviceNotFound" {
			return nil
		}
		if err != nil && !errors.As(err, &qe) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (d *Daemon) ensureVhostServer(dv Device, sock string) (bool, error) {
	d.mu.Lock()
	_, ok := d.vhost[dv.Name]
	d.mu.Unlock()
	if ok {
		return false, nil
	}
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		return false, fmt.Errorf("vhost-user socket directory: %w", err)
	}
	srv, err := d.cfg.VhostUser(dv, sock)
	if err != nil {
		return false, fmt.Errorf("vhost-user server on %s: %w", sock, err)
	}
	// Only the daemon's uid (and root) may connect, whatever umask the
	// server was created under.
	if err := os.Chmod(sock, 0o600); err != nil {
		cctx, cancel := context.WithTimeout(context.Background(), d.cfg.Timeout)
		_ = srv.Close(cctx)
		cancel()
		return false, fmt.Errorf("vhost-user socket %s: %w", sock, err)
	}
	d.mu.Lock()
	d.vhost[dv.Name] = srv
	d.mu.Unlock()
	return true, nil
}

func (d *Daemon) stopVhostServer(name string) {
	d.mu.Lock()
	srv, ok := d.vhost[name]
	delete(d.vhost, name)
	d.mu.Unlock()
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.Timeout)
	defer cancel()
	if err := srv.Close(ctx); err != nil {
		d.log.Warn("vhost-user server close", "device", name, "err", err)
	}
}

// Recover re-establishes the attachments recorded in the state file after
// a restart: for each VM it reconnects to the QMP socket and checks that
// the devices are still there; devices whose VM is gone are released.
// vhost-user servers are restarted so that QEMU reconnects to them.
func (d *Daemon) Recover(ctx context.Context) {
	d.opMu.Lock()
	defer d.opMu.Unlock()
	byVM := map[string][]Device{}
	d.mu.Lock()
	for _, dv := range d.devices {
		if dv.Attached != nil {
			byVM[dv.Attached.QMP] = append(byVM[dv.Attached.QMP], copyDevice(dv))
		}
	}
	d.mu.Unlock()
	for path, devs := range byVM {
		cctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
		s, _, err := d.session(cctx, path)
		if err != nil {
			cancel()
			d.releaseVM(path, "recovery: "+err.Error())
			continue
		}
		present := map[string]bool{}
		raw, err := execute(cctx, s.conn, "query-memory-devices", nil)
		var mds []memoryDevice
		if err == nil {
			err = json.Unmarshal(raw, &mds)
		}
		for _, m := range mds {
			present[m.Data.ID] = true
		}
		for _, dv := range devs {
			ok := true
			switch dv.Attached.Kind {
			case KindNVDIMM, KindVirtioPMEM:
				ok = err == nil && present[dv.Attached.DeviceID]
			case KindVhostUser:
				_, qerr := execute(cctx, s.conn, "qom-get", map[string]any{"path": "/machine/peripheral/" + dv.Attached.DeviceID, "property": "type"})
				ok = qerr == nil
			}
			if ok {
				ok = d.retake(dv)
			}
			if !ok {
				d.releaseOne(dv.Name, "recovery: device no longer in the VM or its backing cannot be locked")
			}
		}
		cancel()
		d.dropSessionIfUnused(path)
	}
}

// startWritebackLocked starts the writeback of an nvdimm attachment; a
// failure is logged (the device works, only without periodic sync).
//
// +checklocks:d.mu
func (d *Daemon) startWritebackLocked(dv Device) {
	if d.cfg.Writeback == nil {
		return
	}
	wb, err := d.cfg.Writeback(dv)
	if err != nil {
		d.log.Warn("writeback not started", "device", dv.Name, "err", err)
		return
	}
	if wb != nil {
		d.writebacks[dv.Name] = wb
	}
}

// retake re-locks a recovered device's backing and restarts its vhost-user
// server.
func (d *Daemon) retake(dv Device) bool {
	l, err := d.lockBacking(dv)
	if err != nil {
		d.log.Warn("recovery: cannot lock backing", "device", dv.Name, "err", err)
		return false
	}
	if dv.Attached.Kind == KindVhostUser {
		if d.cfg.VhostUser == nil {
			_ = l.Close()
			return false
		}
		if _, err := d.ensureVhostServer(dv, d.VhostSocketPath(dv.Name)); err != nil {
			d.log.Warn("recovery: vhost-user server", "device", dv.Name, "err", err)
			_ = l.Close()
			return false
		}
	}
	d.mu.Lock()
	d.locks[dv.Name] = l
	if dv.Attached.Kind == KindNVDIMM {
		d.startWritebackLocked(dv)
	}
	d.mu.Unlock()
	d.log.Info("device recovered", "device", dv.Name, "qmp", dv.Attached.QMP)
	return true
}

// releaseOne clears one device's attachment. Caller holds opMu.
func (d *Daemon) releaseOne(name, why string) {
	d.release([]string{name}, why)
}
