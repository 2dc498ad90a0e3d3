package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"gvisor.dev/gvisor/pkg/sync"
)

// Error categories; the control API maps them to HTTP statuses.
var (
	ErrNotFound = errors.New("no such device")
	ErrExists   = errors.New("device already exists")
	ErrInvalid  = errors.New("invalid request")
	ErrConflict = errors.New("conflict")
)

// Config configures a Daemon.
type Config struct {
	// StateDir holds state.json and the vhost-user sockets.
	StateDir string
	// BackingDirs are the directories backings may live in; empty means
	// <StateDir>/backings.
	BackingDirs []string
	Backings    Backings
	// Images is the catalog of shared read-only images that devices may
	// be made from (CreateRequest.Image); nil refuses such devices. Its
	// directory is confined: usable for images only, never as a backing.
	Images  Images
	DialQMP QMPDialer
	// VhostUser starts vhost-user servers; nil refuses vhost-user attach.
	VhostUser VhostUserFactory
	// Writeback, if set, starts periodic writeback for a device attached
	// as an nvdimm (whose guest has no flush path); the closer stops it.
	// It may return nil, nil for backings that need none.
	Writeback func(dev Device) (io.Closer, error)
	// Registry receives the daemon's metrics; nil creates one.
	Registry *prometheus.Registry
	// Timeout bounds each attach, detach and recovery step (default 30 s).
	Timeout time.Duration
	Logger  *slog.Logger
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time
}

// Daemon is the serving daemon's core: registry, attach flows, release.
type Daemon struct {
	cfg       Config
	confiner  *Confiner
	log       *slog.Logger
	reg       *prometheus.Registry
	statePath string

	attaches *prometheus.CounterVec
	releases prometheus.Counter

	// opMu serialises operations that change devices or talk to QEMU.
	opMu sync.Mutex

	mu sync.Mutex
	// +checklocks:mu
	devices map[string]*Device
	// +checklocks:mu
	locks map[string]io.Closer // by device name, while attached
	// +checklocks:mu
	sessions map[string]*vmSession // by QMP path
	// +checklocks:mu
	vhost map[string]VhostUserServer // by device name
	// +checklocks:mu
	writebacks map[string]io.Closer // by device name, nvdimm attachments
	// +checklocks:mu
	closed bool

	stop chan struct{}
	wg   sync.WaitGroup
}

// vmSession is the daemon's connection to one VM's QMP socket.
type vmSession struct {
	path string
	conn QMPConn
}

// New loads the registry from cfg.StateDir and returns a daemon. Call
// Recover to re-establish attachments after a restart.
//
// +checklocksignore: d is not shared until New returns.
func New(cfg Config) (*Daemon, error) {
	if cfg.StateDir == "" {
		return nil, fmt.Errorf("daemon: no state directory")
	}
	if !filepath.IsAbs(cfg.StateDir) {
		return nil, fmt.Errorf("daemon: state directory %q is not absolute", cfg.StateDir)
	}
	if cfg.Backings == nil {
		return nil, fmt.Errorf("daemon: no Backings implementation")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if len(cfg.BackingDirs) == 0 {
		cfg.BackingDirs = []string{DefaultBackingDir(cfg.StateDir)}
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory %s: %w", cfg.StateDir, err)
	}
	for _, bd := range cfg.BackingDirs {
		if !filepath.IsAbs(bd) {
			return nil, fmt.Errorf("backing directory %q: must be absolute", bd)
		}
		if err := os.MkdirAll(bd, 0o700); err != nil {
			return nil, fmt.Errorf("backing directory %s: %w", bd, err)
		}
	}
	conf, err := NewConfiner(cfg.BackingDirs)
	if err != nil {
		return nil, err
	}
	if cfg.Images != nil {
		if err := conf.AllowImages(cfg.Images.Dir()); err != nil {
			return nil, err
		}
		for _, bd := range conf.Dirs() {
			if bd == conf.CatalogDir() || under(bd, conf.CatalogDir()) {
				return nil, fmt.Errorf("backing directory %s is inside the image catalog directory %s: keep them apart (images are read-only, backings writable)", bd, conf.CatalogDir())
			}
		}
	}
	d := &Daemon{
		cfg:        cfg,
		confiner:   conf,
		log:        cfg.Logger,
		reg:        cfg.Registry,
		statePath:  filepath.Join(cfg.StateDir, StateFileName),
		devices:    map[string]*Device{},
		locks:      map[string]io.Closer{},
		sessions:   map[string]*vmSession{},
		vhost:      map[string]VhostUserServer{},
		writebacks: map[string]io.Closer{},
		stop:       make(chan struct{}),
	}
	devs, err := loadState(d.statePath)
	if err != nil {
		return nil, err
	}
	for i := range devs {
		dv := devs[i]
		d.devices[dv.Name] = &dv
	}
	if d.reg == nil {
		d.reg = prometheus.NewRegistry()
		d.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	d.attaches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nvdimm_backend_attach_total",
		Help: "Attach attempts by kind and result (ok, failed).",
	}, []string{"kind", "result"})
	d.releases = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nvdimm_backend_release_total",
		Help: "Devices released because their VM went away.",
	})
	devGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "nvdimm_backend_devices",
		Help: "Devices in the registry.",
	}, func() float64 { d.mu.Lock(); defer d.mu.Unlock(); return float64(len(d.devices)) })
	attGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "nvdimm_backend_devices_attached",
		Help: "Devices attached to a running VM.",
	}, func() float64 {
		d.mu.Lock()
		defer d.mu.Unlock()
		n := 0
		for _, dv := range d.devices {
			if dv.Attached != nil {
				n++
			}
		}
		return float64(n)
	})
	for _, c := range []prometheus.Collector{d.attaches, d.releases, devGauge, attGauge} {
		if err := d.reg.Register(c); err != nil {
			return nil, fmt.Errorf("daemon metrics: %w", err)
		}
	}
	return d, nil
}

// Registry returns the Prometheus registry /metrics serves.
func (d *Daemon) Registry() *prometheus.Registry { return d.reg }

// Confiner returns the daemon's backing-path confiner.
func (d *Daemon) Confiner() *Confiner { return d.confiner }

// StatePath returns the path of the state file.
func (d *Daemon) StatePath() string { return d.statePath }

// VhostSocketPath is where the vhost-user server of device name listens.
func (d *Daemon) VhostSocketPath(name string) string {
	return filepath.Join(d.cfg.StateDir, "vhost", name+".sock")
}

// List returns copies of all devices, sorted by name.
func (d *Daemon) List() []Device {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]Device, 0, len(d.devices))
	for _, dv := range d.devices {
		out = append(out, copyDevice(dv))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Get returns a copy of one device.
func (d *Daemon) Get(name string) (Device, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	dv, ok := d.devices[name]
	if !ok {
		return Device{}, fmt.Errorf("device %q: %w", name, ErrNotFound)
	}
	return copyDevice(dv), nil
}

func copyDevice(dv *Device) Device {
	c := *dv
	if dv.Attached != nil {
		a := *dv.Attached
		c.Attached = &a
	}
	if dv.Slot != nil {
		s := *dv.Slot
		c.Slot = &s
	}
	return c
}

// +checklocks:d.mu
func (d *Daemon) saveLocked() error {
	devs := make([]Device, 0, len(d.devices))
	for _, dv := range d.devices {
		devs = append(devs, *dv)
	}
	return saveState(d.statePath, devs)
}

// CreateRequest is the body of POST /v1/devices.
type CreateRequest struct {
	Name      string `json:"name"`
	Backing   string `json:"backing"`
	Size      uint64 `json:"size"`
	LabelSize uint64 `json:"label_size"`
	Namespace string `json:"namespace,omitempty"`
	Mode      string `json:"mode,omitempty"`
	// Slot is the DIMM slot to write namespace labels for (0..255).
	Slot     *int `json:"slot,omitempty"`
	ReadOnly bool `json:"readonly"`
	// Image makes the device from the catalogued shared image of that
	// name instead of a backing: read-only whatever ReadOnly says, sized
	// by the catalog, attached only as an nvdimm. Many devices (one per
	// VM) may name the same image. Backing, Size, LabelSize, Namespace,
	// Mode and Slot must then be empty.
	Image string `json:"image,omitempty"`
}

// Create registers a device, creating its backing when it does not exist
// and adopting it when it does.
func (d *Daemon) Create(ctx context.Context, req CreateRequest) (Device, error) {
	if err := validName(req.Name); err != nil {
		return Device{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if req.Image != "" {
		return d.createImage(ctx, req)
	}
	switch req.Mode {
	case "", "fsdax", "devdax", "raw":
	default:
		return Device{}, fmt.Errorf("%w: mode %q: want fsdax, devdax or raw", ErrInvalid, req.Mode)
	}
	if req.Namespace != "" && req.Mode == "" {
		return Device{}, fmt.Errorf("%w: namespace %q needs a mode (fsdax, devdax or raw)", ErrInvalid, req.Namespace)
	}
	if (req.Namespace != "" || req.Mode != "") && req.LabelSize == 0 {
		return Device{}, fmt.Errorf("%w: a namespace needs a label area (label size 0)", ErrInvalid)
	}
	slot := -1
	if req.Slot != nil {
		if req.Namespace == "" {
			return Device{}, fmt.Errorf("%w: a slot is only meaningful with a namespace", ErrInvalid)
		}
		if *req.Slot < 0 || *req.Slot > 255 {
			return Device{}, fmt.Errorf("%w: slot %d: want 0..255", ErrInvalid, *req.Slot)
		}
		slot = *req.Slot
	}
	if req.LabelSize != 0 && req.LabelSize < 128<<10 {
		return Device{}, fmt.Errorf("%w: label size %d: QEMU needs at least 128 KiB or 0", ErrInvalid, req.LabelSize)
	}
	path, err := d.confiner.Check(req.Backing)
	if err != nil {
		return Device{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if d.cfg.Images != nil {
		// An image kept outside the catalog directory (image add catalogues
		// files in place) is still an image: it is shared read-only.
		im, err := d.cfg.Images.ImageAt(path)
		if err != nil {
			return Device{}, fmt.Errorf("device %q: image catalog: %w", req.Name, err)
		}
		if im != "" {
			return Device{}, fmt.Errorf("%w: backing %s is the file of the catalogued image %q, which guests share read-only: use --image %s (or `image clone %s PATH` for a private writable copy)",
				ErrInvalid, path, im, im, im)
		}
	}
	d.opMu.Lock()
	defer d.opMu.Unlock()
	d.mu.Lock()
	if _, ok := d.devices[req.Name]; ok {
		d.mu.Unlock()
		return Device{}, fmt.Errorf("device %q: %w", req.Name, ErrExists)
	}
	for _, o := range d.devices {
		if o.Backing == path {
			d.mu.Unlock()
			return Device{}, fmt.Errorf("%w: backing %s is already registered as device %q", ErrConflict, path, o.Name)
		}
	}
	d.mu.Unlock()
	info, err := d.cfg.Backings.Prepare(ctx, BackingSpec{
		Path: path, Size: req.Size, LabelSize: req.LabelSize,
		Namespace: req.Namespace, Mode: req.Mode, Slot: slot, ReadOnly: req.ReadOnly,
	})
	if err != nil {
		return Device{}, fmt.Errorf("device %q: %w", req.Name, inBacking(path, err))
	}
	dv := &Device{
		Name: req.Name, Backing: path, BackingSize: info.BackingSize,
		Size: info.Size, LabelSize: info.LabelSize, Align: info.Align, PMem: info.PMem,
		Namespace: req.Namespace, Mode: req.Mode, ReadOnly: req.ReadOnly,
		Created: info.Created, CreatedAt: d.cfg.Now().UTC(), Slot: info.Slot,
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.devices[dv.Name] = dv
	if err := d.saveLocked(); err != nil {
		delete(d.devices, dv.Name)
		if info.Created {
			_ = d.cfg.Backings.Remove(path)
		}
		return Device{}, err
	}
	d.log.Info("device created", "device", dv.Name, "backing", path, "created", info.Created)
	return copyDevice(dv), nil
}

// Delete removes an unattached device from the registry; with purge it
// also removes a backing the daemon created.
func (d *Daemon) Delete(ctx context.Context, name string, purge bool) error {
	d.opMu.Lock()
	defer d.opMu.Unlock()
	d.mu.Lock()
	dv, ok := d.devices[name]
	if !ok {
		d.mu.Unlock()
		return fmt.Errorf("device %q: %w", name, ErrNotFound)
	}
	if dv.Attached != nil {
		a := dv.Attached.QMP
		d.mu.Unlock()
		return fmt.Errorf("%w: device %q is attached to the VM at %s; it is released when that VM exits", ErrConflict, name, a)
	}
	srv := d.vhost[name]
	delete(d.vhost, name)
	delete(d.devices, name)
	err := d.saveLocked()
	if err != nil {
		d.devices[name] = dv
	}
	d.mu.Unlock()
	if err != nil {
		return err
	}
	if srv != nil {
		cctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
		if cerr := srv.Close(cctx); cerr != nil {
			d.log.Warn("vhost-user server close", "device", name, "err", cerr)
		}
		cancel()
		_ = os.Remove(d.VhostSocketPath(name))
	}
	if purge && dv.Created {
		if err := d.cfg.Backings.Remove(dv.Backing); err != nil {
			return fmt.Errorf("device %q deleted, but removing its backing %s failed: %w", name, dv.Backing, err)
		}
	}
	d.log.Info("device deleted", "device", name, "purged", purge && dv.Created)
	return nil
}

// Close stops the watchers, closes the QMP sessions and vhost-user servers
// (draining in-flight flushes within ctx) and releases the locks. The
// state file keeps the attachments, so a restarted daemon recovers them.
func (d *Daemon) Close(ctx context.Context) error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	close(d.stop)
	sessions := d.sessions
	d.sessions = map[string]*vmSession{}
	servers := d.vhost
	d.vhost = map[string]VhostUserServer{}
	locks := d.locks
	d.locks = map[string]io.Closer{}
	wbs := d.writebacks
	d.writebacks = map[string]io.Closer{}
	d.mu.Unlock()
	var errs []error
	for _, s := range sessions {
		_ = s.conn.Close()
	}
	for name, srv := range servers {
		// A shutdown is not a release: a server that can leave QEMU's
		// connection with its keeper does, so the restarted daemon takes
		// the session over and the guest sees no disconnect.
		stop := srv.Close
		if d, ok := srv.(interface{ Detach(context.Context) error }); ok {
			stop = d.Detach
		}
		if err := stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("vhost-user server %s: %w", name, err))
		}
	}
	for name, wb := range wbs {
		if err := wb.Close(); err != nil {
			errs = append(errs, fmt.Errorf("writeback %s: %w", name, err))
		}
	}
	for _, l := range locks {
		_ = l.Close()
	}
	d.wg.Wait()
	return errors.Join(errs...)
}
