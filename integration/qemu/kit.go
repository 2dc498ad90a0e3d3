//go:build integration

package qemu

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Kit is a bootable guest: a kernel image and an initramfs holding the
// NVDIMM modules, busybox, ndctl/daxctl with their libraries, mke2fs and our
// /init. It is built once per set of package versions and cached.
type Kit struct {
	Dir     string // cache directory of this kit
	Kernel  string // path of the kernel image (vmlinuz)
	Initrd  string // path of the initramfs (uncompressed newc cpio)
	KVer    string // kernel release, e.g. 6.12.95+deb12-amd64
	Key     string // cache key (hash of package versions and the init script)
	Summary string // human description of what the key covers
}

// guestModules are loaded by /init in this order; their dependencies are
// resolved from modules.dep and loaded by modprobe.
// virtio_pci comes first: it is built into the backports kernel (and then
// skipped) but a module in bookworm's own 6.1, whose virtio devices would
// otherwise never be probed.
var guestModules = []string{
	"virtio_pci", "libnvdimm", "nfit", "nd_btt", "nd_pmem", "dax_pmem", "device_dax", "kmem",
	"nd_virtio", "virtio_pmem", "virtio_blk", "crc32c_generic", "ext4",
	"9pnet_virtio", "9p",
}

// initScript is the guest's /init. It mounts the 9p share "host" on /host,
// loads the modules, runs /host/run.sh and reports its exit status between
// markers before powering off.
var initScript = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /mnt /host /run /usr/local/bin
/bin/busybox --install -s /bin
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
for m in ` + strings.Join(guestModules, " ") + `; do
  modprobe "$m" || echo "init: modprobe $m failed"
done
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host /host; then
  echo "init: cannot mount the 9p share"
  echo "` + markExit + `126@@"
  echo "` + markEnd + `"
  poweroff -f
fi
# Give udev-less device nodes a moment: devtmpfs creates them synchronously,
# but region probing by libnvdimm is asynchronous.
udevadm settle 2>/dev/null || sleep 0
i=0
while [ $i -lt 50 ] && [ -d /sys/bus/nd ] && [ -z "$(ls /sys/bus/nd/devices 2>/dev/null)" ]; do sleep 0.1; i=$((i+1)); done
echo "` + markBegin + `"
cd /host
sh -c 'set -ex; . /host/run.sh'
rc=$?
sync
echo "` + markExit + `$rc@@"
echo "` + markEnd + `"
cd /
umount /host 2>/dev/null
poweroff -f
`

const kitFormat = "kit-v1"

var (
	kitOnce sync.Once
	kitVal  *Kit
	kitErr  error
)

// CacheDir is where kits live: $XDG_CACHE_HOME/nvdimm-backend or
// $HOME/.cache/nvdimm-backend.
func CacheDir() (string, error) {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "nvdimm-backend"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("cache dir: %w", err)
	}
	return filepath.Join(home, ".cache", "nvdimm-backend"), nil
}

// GetKit installs what is missing and returns the cached guest kit, building
// it when its key changed. Safe for concurrent callers in this process and in
// other processes (a file lock serialises builders).
func GetKit(ctx context.Context, logf func(string, ...any)) (*Kit, error) {
	kitOnce.Do(func() {
		if err := EnsureInstalled(ctx, logf); err != nil {
			kitErr = err
			return
		}
		kitVal, kitErr = buildKit(ctx, logf)
	})
	return kitVal, kitErr
}

// repoRoot finds the module root (the directory holding go.mod) above the
// working directory.
func repoRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		p := filepath.Dir(d)
		if p == d {
			return "", errors.New("go.mod not found above the working directory")
		}
		d = p
	}
}

// EnsureInstalled runs install.sh --check and, when something is missing,
// install.sh (which needs root).
func EnsureInstalled(ctx context.Context, logf func(string, ...any)) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	script := filepath.Join(root, "integration", "qemu", "install.sh")
	if out, err := exec.CommandContext(ctx, script, "--check").CombinedOutput(); err == nil {
		return nil
	} else {
		logf("installing from Debian's archive (%s)", strings.TrimSpace(string(out)))
	}
	start := time.Now()
	out, err := exec.CommandContext(ctx, script).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", script, err, out)
	}
	logf("installed in %s", time.Since(start).Round(time.Second))
	return nil
}

func run(ctx context.Context, dir string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout = &out
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out.String(), nil
}

// kernelPackage resolves the image package behind linux-image-amd64 in
// bookworm-backports and its version.
func kernelPackage(ctx context.Context) (name, version string, err error) {
	out, err := run(ctx, "", "apt-cache", "depends", "linux-image-amd64/bookworm-backports")
	if err != nil {
		return "", "", err
	}
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		if p, ok := strings.CutPrefix(l, "Depends: "); ok && strings.HasPrefix(p, "linux-image-") {
			name = strings.TrimSpace(p)
			break
		}
	}
	if name == "" {
		return "", "", fmt.Errorf("apt-cache depends linux-image-amd64/bookworm-backports: no image package in %q", out)
	}
	out, err = run(ctx, "", "apt-cache", "show", "--no-all-versions", name)
	if err != nil {
		return "", "", err
	}
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, "Version: "); ok {
			return name, strings.TrimSpace(v), nil
		}
	}
	return "", "", fmt.Errorf("apt-cache show %s: no Version", name)
}

func pkgVersion(ctx context.Context, pkg string) string {
	out, err := run(ctx, "", "dpkg-query", "-W", "-f", "${Version}", pkg)
	if err != nil {
		return "missing"
	}
	return strings.TrimSpace(out)
}

func buildKit(ctx context.Context, logf func(string, ...any)) (*Kit, error) {
	kpkg, kvers, err := kernelPackage(ctx)
	if err != nil {
		return nil, fmt.Errorf("guest kit: resolving the kernel: %w", err)
	}
	parts := []string{kitFormat, kpkg + "=" + kvers}
	for _, p := range []string{"busybox-static", "ndctl", "daxctl", "e2fsprogs", "libc6"} {
		parts = append(parts, p+"="+pkgVersion(ctx, p))
	}
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintln(h, p)
	}
	h.Write([]byte(initScript))
	key := hex.EncodeToString(h.Sum(nil))[:16]
	cache, err := CacheDir()
	if err != nil {
		return nil, err
	}
	kitsDir := filepath.Join(cache, "guest-kit")
	if err := os.MkdirAll(kitsDir, 0o755); err != nil {
		return nil, fmt.Errorf("guest kit: %w", err)
	}
	dir := filepath.Join(kitsDir, key)
	kit := &Kit{Dir: dir, Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd.cpio"),
		Key: key, Summary: strings.Join(parts, " ")}

	// Serialise builders across processes.
	lockPath := filepath.Join(kitsDir, "lock")
	lf, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("guest kit lock %s: %w", lockPath, err)
	}
	defer lf.Close()
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("guest kit lock %s: %w", lockPath, err)
	}
	defer unix.Flock(int(lf.Fd()), unix.LOCK_UN) //nolint:errcheck

	if b, err := os.ReadFile(filepath.Join(dir, "kver")); err == nil {
		kit.KVer = strings.TrimSpace(string(b))
		if err := holdKit(kitsDir, key); err != nil {
			return nil, err
		}
		return kit, nil
	}
	start := time.Now()
	logf("building guest kit %s (%s)", key, kit.Summary)
	tmp, err := os.MkdirTemp(kitsDir, "build-")
	if err != nil {
		return nil, fmt.Errorf("guest kit: %w", err)
	}
	defer os.RemoveAll(tmp)
	kver, err := assembleKit(ctx, tmp, kpkg)
	if err != nil {
		return nil, fmt.Errorf("guest kit %s: %w", key, err)
	}
	out := filepath.Join(tmp, "out")
	if err := os.WriteFile(filepath.Join(out, "kver"), []byte(kver+"\n"), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(out, "key.txt"), []byte(kit.Summary+"\n"), 0o644); err != nil {
		return nil, err
	}
	os.RemoveAll(dir)
	if err := os.Rename(out, dir); err != nil {
		return nil, fmt.Errorf("guest kit: %w", err)
	}
	kit.KVer = kver
	logf("guest kit built in %s", time.Since(start).Round(time.Second))
	if err := holdKit(kitsDir, key); err != nil {
		return nil, err
	}
	removeUnusedKits(kitsDir, key, filepath.Base(tmp))
	return kit, nil
}

// kitsInUse are the open lock files by which this process marks the kits
// it uses; they stay open (and their shared locks held) until the process
// exits. Kept here so that no finalizer closes them.
var kitsInUse []*os.File

// holdKit takes a shared lock on kitsDir/<key>.inuse for the life of the
// process. Called with the builders' lock held, so that no other process
// removes the kit between the check and the lock.
func holdKit(kitsDir, key string) error {
	p := filepath.Join(kitsDir, key+".inuse")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("guest kit in-use lock %s: %w", p, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH); err != nil {
		f.Close()
		return fmt.Errorf("guest kit in-use lock %s: %w", p, err)
	}
	kitsInUse = append(kitsInUse, f)
	return nil
}

// removeUnusedKits removes the kits of other package versions or init
// scripts (and builds that died) that no process is using: test processes
// from other checkouts (another init script, so another key) may be booting
// guests from them right now. Called with the builders' lock held.
func removeUnusedKits(kitsDir, key, building string) {
	ents, err := os.ReadDir(kitsDir)
	if err != nil {
		return
	}
	for _, e := range ents {
		name := e.Name()
		if !e.IsDir() || name == key || name == building {
			continue
		}
		lp := filepath.Join(kitsDir, name+".inuse")
		f, err := os.OpenFile(lp, os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			continue
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
			os.RemoveAll(filepath.Join(kitsDir, name)) //nolint:errcheck
			os.Remove(lp)                              //nolint:errcheck
		}
		f.Close()
	}
}

// assembleKit downloads and unpacks the kernel into tmp, builds the
// initramfs tree and writes tmp/out/{vmlinuz,initrd.cpio}.
func assembleKit(ctx context.Context, tmp, kpkg string) (string, error) {
	dl := filepath.Join(tmp, "dl")
	kroot := filepath.Join(tmp, "kernel")
	root := filepath.Join(tmp, "root")
	out := filepath.Join(tmp, "out")
	for _, d := range []string{dl, kroot, root, out} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", err
		}
	}
	// apt drops privileges to _apt for downloads; let it write here.
	os.Chmod(dl, 0o777) //nolint:errcheck
	if _, err := run(ctx, dl, "apt-get", "download", "-q", kpkg); err != nil {
		return "", err
	}
	debs, _ := filepath.Glob(filepath.Join(dl, "*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("apt-get download %s: want one .deb, got %v", kpkg, debs)
	}
	if _, err := run(ctx, "", "dpkg-deb", "-x", debs[0], kroot); err != nil {
		return "", err
	}
	vmlinuz, _ := filepath.Glob(filepath.Join(kroot, "boot", "vmlinuz-*"))
	if len(vmlinuz) != 1 {
		return "", fmt.Errorf("%s: want one boot/vmlinuz-*, got %v", debs[0], vmlinuz)
	}
	kver := strings.TrimPrefix(filepath.Base(vmlinuz[0]), "vmlinuz-")
	if err := copyFile(vmlinuz[0], filepath.Join(out, "vmlinuz"), 0o644); err != nil {
		return "", err
	}
	if _, err := run(ctx, "", "depmod", "-b", kroot, kver); err != nil {
		return "", err
	}
	mods, err := moduleClosure(filepath.Join(kroot, "lib", "modules", kver), guestModules)
	if err != nil {
		return "", err
	}
	for _, m := range mods {
		src := filepath.Join(kroot, "lib", "modules", kver, m)
		dst := filepath.Join(root, "lib", "modules", kver, strings.TrimSuffix(m, ".xz"))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return "", err
		}
		if strings.HasSuffix(m, ".xz") {
			data, err := exec.CommandContext(ctx, "xz", "-dc", src).Output()
			if err != nil {
				return "", fmt.Errorf("xz -dc %s: %w", src, err)
			}
			if err := os.WriteFile(dst, data, 0o644); err != nil {
				return "", err
			}
		} else if err := copyFile(src, dst, 0o644); err != nil {
			return "", err
		}
	}
	for _, f := range []string{"modules.builtin", "modules.builtin.modinfo", "modules.order"} {
		src := filepath.Join(kroot, "lib", "modules", kver, f)
		if _, err := os.Stat(src); err == nil {
			if err := copyFile(src, filepath.Join(root, "lib", "modules", kver, f), 0o644); err != nil {
				return "", err
			}
		}
	}
	if _, err := run(ctx, "", "depmod", "-b", root, kver); err != nil {
		return "", err
	}

	// Userland.
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return "", err
	}
	if err := copyFile(bb, filepath.Join(root, "bin", "busybox"), 0o755); err != nil {
		return "", err
	}
	bins := map[string]string{}
	for _, b := range []string{"ndctl", "daxctl", "mke2fs"} {
		p, err := exec.LookPath(b)
		if err != nil {
			if p2 := filepath.Join("/usr/sbin", b); fileExists(p2) {
				p = p2
			} else if p2 := filepath.Join("/sbin", b); fileExists(p2) {
				p = p2
			} else {
				return "", fmt.Errorf("guest userland: %s not installed", b)
			}
		}
		bins[b] = p
	}
	libs := map[string]bool{}
	for name, p := range bins {
		dst := filepath.Join(root, "usr", "local", "bin", name)
		if name == "mke2fs" {
			dst = filepath.Join(root, "usr", "local", "sbin", name)
		}
		if err := copyFile(p, dst, 0o755); err != nil {
			return "", err
		}
		ls, err := lddLibs(ctx, p)
		if err != nil {
			return "", err
		}
		for _, l := range ls {
			libs[l] = true
		}
	}
	for l := range libs {
		if err := copyFile(l, filepath.Join(root, l), 0o755); err != nil {
			return "", err
		}
	}
	if fileExists("/etc/mke2fs.conf") {
		if err := copyFile("/etc/mke2fs.conf", filepath.Join(root, "etc", "mke2fs.conf"), 0o644); err != nil {
			return "", err
		}
	}
	// ndctl wants /etc/ndctl and /etc/ndctl.conf.d to exist; empty is fine.
	for _, d := range []string{"etc/ndctl/keys", "etc/ndctl.conf.d", "var/log", "run"} {
		os.MkdirAll(filepath.Join(root, d), 0o755) //nolint:errcheck
	}
	os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte("root:x:0:0:root:/:/bin/sh\n"), 0o644) //nolint:errcheck
	if err := os.WriteFile(filepath.Join(root, "init"), []byte(initScript), 0o755); err != nil {
		return "", err
	}
	f, err := os.Create(filepath.Join(out, "initrd.cpio"))
	if err != nil {
		return "", err
	}
	if err := writeCpio(f, root); err != nil {
		f.Close()
		return "", fmt.Errorf("initramfs: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return kver, nil
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// moduleClosure returns the paths (relative to the modules dir) of mods and
// their dependencies per modules.dep; built-in modules are skipped.
func moduleClosure(modDir string, mods []string) ([]string, error) {
	dep, err := os.ReadFile(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	builtin, _ := os.ReadFile(filepath.Join(modDir, "modules.builtin"))
	norm := func(s string) string { return strings.ReplaceAll(s, "-", "_") }
	modName := func(p string) string {
		b := filepath.Base(p)
		b = strings.TrimSuffix(b, ".xz")
		b = strings.TrimSuffix(b, ".zst")
		return norm(strings.TrimSuffix(b, ".ko"))
	}
	byName := map[string]string{}
	deps := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(dep))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		byName[modName(k)] = k
		deps[k] = strings.Fields(v)
	}
	isBuiltin := map[string]bool{}
	for _, l := range strings.Split(string(builtin), "\n") {
		if l != "" {
			isBuiltin[modName(l)] = true
		}
	}
	seen := map[string]bool{}
	var add func(p string)
	add = func(p string) {
		if seen[p] {
			return
		}
		seen[p] = true
		for _, d := range deps[p] {
			add(d)
		}
	}
	for _, m := range mods {
		p, ok := byName[norm(m)]
		if !ok {
			if isBuiltin[norm(m)] {
				continue
			}
			return nil, fmt.Errorf("%s: module %s neither in modules.dep nor built in", modDir, m)
		}
		add(p)
	}
	var res []string
	for p := range seen {
		res = append(res, p)
	}
	sort.Strings(res)
	return res, nil
}

// lddLibs lists the shared libraries (and the dynamic loader) of bin.
func lddLibs(ctx context.Context, bin string) ([]string, error) {
	out, err := run(ctx, "", "ldd", bin)
	if err != nil {
		return nil, err
	}
	var libs []string
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			libs = append(libs, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			libs = append(libs, f[0])
		}
	}
	return libs, nil
}

// copyFile copies src (following symlinks) to dst, creating parents.
func copyFile(src, dst string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s -> %s: %w", src, dst, err)
	}
	return out.Close()
}

// writeCpio writes the tree under root as a newc cpio archive (directories,
// regular files and symlinks), as the kernel's initramfs unpacker reads it.
func writeCpio(w io.Writer, root string) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	ino := uint32(1)
	pad := func(n int) error {
		if r := n % 4; r != 0 {
			_, err := bw.Write(make([]byte, 4-r))
			return err
		}
		return nil
	}
	entry := func(name string, mode uint32, data []byte) error {
		hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
		ino++
		if _, err := bw.WriteString(hdr); err != nil {
			return err
		}
		if _, err := bw.WriteString(name + "\x00"); err != nil {
			return err
		}
		if err := pad(110 + len(name) + 1); err != nil {
			return err
		}
		if _, err := bw.Write(data); err != nil {
			return err
		}
		return pad(len(data))
	}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		perm := uint32(fi.Mode().Perm())
		switch {
		case fi.IsDir():
			return entry(rel, unix.S_IFDIR|perm, nil)
		case fi.Mode()&os.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return entry(rel, unix.S_IFLNK|0o777, []byte(t))
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return entry(rel, unix.S_IFREG|perm, data)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := entry("TRAILER!!!", 0, nil); err != nil {
		return err
	}
	return bw.Flush()
}
