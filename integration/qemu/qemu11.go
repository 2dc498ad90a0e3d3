//go:build integration

package qemu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// QEMU is one QEMU build the harness can start: Debian's packaged QEMU on
// the host (Root empty) or QEMU 11.1 from a Debian forky root, which needs
// glibc 2.43 and so cannot be installed on bookworm: it is started through
// the root's own dynamic loader and libraries, without chroot.
type QEMU struct {
	Root    string // forky root directory; "" for the host's qemu-system-x86_64
	Version string // first line of --version, e.g. "QEMU emulator version 11.1.2 (...)"
	Major   int
	Minor   int
}

// Host is the host's packaged QEMU (what the rest of the suite uses).
var Host = &QEMU{}

// Command returns a command that runs this QEMU with args. For a forky root
// QEMU_MODULE_DIR points at the root's modules: without it QEMU 11.1 loads
// the host's QEMU modules and aborts ("Only modules from the same build can
// be loaded").
func (q *QEMU) Command(args ...string) *exec.Cmd {
	if q == nil || q.Root == "" {
		return exec.Command("qemu-system-x86_64", args...)
	}
	r := q.Root
	argv := []string{
		"--library-path", r + "/usr/lib/x86_64-linux-gnu:" + r + "/lib/x86_64-linux-gnu",
		r + "/usr/bin/qemu-system-x86_64",
		"-L", r + "/usr/share/qemu", "-L", r + "/usr/share/seabios",
	}
	cmd := exec.Command(r+"/lib64/ld-linux-x86-64.so.2", append(argv, args...)...)
	cmd.Env = append(os.Environ(), "QEMU_MODULE_DIR="+r+"/usr/lib/x86_64-linux-gnu/qemu")
	return cmd
}

// String names the build for logs.
func (q *QEMU) String() string {
	if q == nil || q.Root == "" {
		return "host QEMU"
	}
	return fmt.Sprintf("QEMU %d.%d (forky root)", q.Major, q.Minor)
}

var qemuVersionRE = regexp.MustCompile(`QEMU emulator version (\d+)\.(\d+)`)

// probeVersion runs --version and fills Version, Major and Minor.
func (q *QEMU) probeVersion(ctx context.Context) error {
	cmd := q.Command("--version")
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("%s --version: %w", cmd.Path, err)
	}
	q.Version = strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0]
	m := qemuVersionRE.FindStringSubmatch(q.Version)
	if m == nil {
		return fmt.Errorf("%s --version: unexpected output %q", cmd.Path, out)
	}
	q.Major, _ = strconv.Atoi(m[1])
	q.Minor, _ = strconv.Atoi(m[2])
	return nil
}

// AtLeast reports whether this QEMU is major.minor or newer.
func (q *QEMU) AtLeast(major, minor int) bool {
	return q.Major > major || (q.Major == major && q.Minor >= minor)
}

// forkyRootFormat is part of the cache directory name: bump it when the
// way the root is built changes.
const forkyRootFormat = "forky-qemu-v1"

var (
	q11Once sync.Once
	q11Val  *QEMU
	q11Err  error
)

// GetQEMU11 returns QEMU 11.1 or later from a Debian forky root. The root
// is built once into the cache directory (debootstrap, then apt-get install
// qemu-system-x86 inside it; about a minute and 480 MB) under a file lock,
// into a temporary directory renamed into place when complete, so a failed
// or concurrent build never leaves a half root behind. NVDIMM_QEMU11_ROOT
// names a ready root to use instead.
func GetQEMU11(ctx context.Context, logf func(string, ...any)) (*QEMU, error) {
	q11Once.Do(func() {
		q11Val, q11Err = getQEMU11(ctx, logf)
	})
	return q11Val, q11Err
}

func getQEMU11(ctx context.Context, logf func(string, ...any)) (*QEMU, error) {
	root := os.Getenv("NVDIMM_QEMU11_ROOT")
	if root == "" {
		cache, err := CacheDir()
		if err != nil {
			return nil, err
		}
		root, err = buildForkyRoot(ctx, cache, logf)
		if err != nil {
			return nil, err
		}
	}
	q := &QEMU{Root: root}
	if err := q.probeVersion(ctx); err != nil {
		return nil, fmt.Errorf("forky root %s: %w", root, err)
	}
	if !q.AtLeast(11, 1) {
		return nil, fmt.Errorf("forky root %s has %s; the vhost-user SHMEM scenarios need 11.1 or later", root, q.Version)
	}
	return q, nil
}

// buildForkyRoot returns cache/forky-qemu-v1, building it when absent.
func buildForkyRoot(ctx context.Context, cache string, logf func(string, ...any)) (string, error) {
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", fmt.Errorf("forky root: %w", err)
	}
	dir := filepath.Join(cache, forkyRootFormat)
	done := filepath.Join(dir, ".nvdimm-complete")
	if fileExists(done) {
		return dir, nil
	}
	lockPath := filepath.Join(cache, forkyRootFormat+".lock")
	lf, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", fmt.Errorf("forky root lock %s: %w", lockPath, err)
	}
	defer lf.Close()
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
		return "", fmt.Errorf("forky root lock %s: %w", lockPath, err)
	}
	defer unix.Flock(int(lf.Fd()), unix.LOCK_UN) //nolint:errcheck
	if fileExists(done) {                        // another process built it while we waited
		return dir, nil
	}
	if os.Geteuid() != 0 {
		return "", errors.New("forky root: building it needs root (debootstrap and chroot)")
	}
	start := time.Now()
	if err := ensureDebootstrap(ctx, logf); err != nil {
		return "", err
	}
	mirror, err := debianMirror()
	if err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(cache, forkyRootFormat+"-build-")
	if err != nil {
		return "", fmt.Errorf("forky root: %w", err)
	}
	defer os.RemoveAll(tmp)
	logf("building the QEMU 11.1 forky root in %s (debootstrap from %s; about a minute)", dir, mirror)
	if _, err := run(ctx, "", "debootstrap", "--variant=minbase", "forky", tmp, mirror); err != nil {
		return "", fmt.Errorf("forky root: %w", err)
	}
	// Testing's Release file can be past its Valid-Until date.
	if _, err := run(ctx, "", "chroot", tmp, "apt-get", "-o", "Acquire::Check-Valid-Until=false", "update"); err != nil {
		return "", fmt.Errorf("forky root: %w", err)
	}
	install := exec.CommandContext(ctx, "chroot", tmp, "apt-get", "-o", "Acquire::Check-Valid-Until=false",
		"install", "-y", "--no-install-recommends", "qemu-system-x86")
	install.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := install.CombinedOutput(); err != nil {
		return "", fmt.Errorf("forky root: chroot apt-get install qemu-system-x86: %w\n%s", err, tail(string(out), 20))
	}
	// Keep the root small: the package cache is not needed to run QEMU.
	_ = os.RemoveAll(filepath.Join(tmp, "var", "cache", "apt", "archives"))
	q := &QEMU{Root: tmp}
	if err := q.probeVersion(ctx); err != nil {
		return "", fmt.Errorf("forky root: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, ".nvdimm-complete"), []byte(q.Version+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("forky root: %w", err)
	}
	_ = os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("forky root: %w", err)
	}
	logf("forky root built in %s: %s", time.Since(start).Round(time.Second), q.Version)
	return dir, nil
}

// ensureDebootstrap installs debootstrap when missing and, since bookworm's
// debootstrap knows no "forky" script, links it to "sid" (same layout).
func ensureDebootstrap(ctx context.Context, logf func(string, ...any)) error {
	if _, err := exec.LookPath("debootstrap"); err != nil {
		if _, err := os.Stat("/usr/sbin/debootstrap"); err != nil {
			logf("installing debootstrap")
			cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "-qq", "--no-install-recommends", "debootstrap")
			cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("apt-get install debootstrap: %w\n%s", err, out)
			}
		}
	}
	scripts := "/usr/share/debootstrap/scripts"
	if _, err := os.Lstat(filepath.Join(scripts, "forky")); err != nil {
		if err := os.Symlink("sid", filepath.Join(scripts, "forky")); err != nil && !os.IsExist(err) {
			return fmt.Errorf("debootstrap: linking the forky script to sid: %w", err)
		}
	}
	return nil
}

// debianMirror returns the URI of the machine's own Debian archive source
// (the deb822 stanza or sources.list line for the main suite), so the
// harness never hard-codes a host.
func debianMirror() (string, error) {
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	for _, f := range files {
		if u := mirrorFromDeb822(f); u != "" {
			return u, nil
		}
	}
	if f, err := os.Open("/etc/apt/sources.list"); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) >= 3 && fs[0] == "deb" && !strings.HasPrefix(fs[1], "[") && !strings.Contains(fs[2], "security") {
				return fs[1], nil
			}
		}
	}
	return "", errors.New("forky root: no Debian archive source found in /etc/apt to take the mirror from")
}

// mirrorFromDeb822 returns the first URI of a stanza whose suites contain
// a plain release name (not -security, -updates or -backports).
func mirrorFromDeb822(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	for _, stanza := range strings.Split(string(b), "\n\n") {
		var uris, suites []string
		for _, l := range strings.Split(stanza, "\n") {
			if v, ok := strings.CutPrefix(l, "URIs:"); ok {
				uris = strings.Fields(v)
			}
			if v, ok := strings.CutPrefix(l, "Suites:"); ok {
				suites = strings.Fields(v)
			}
		}
		for _, s := range suites {
			if !strings.Contains(s, "-") && len(uris) > 0 {
				return uris[0]
			}
		}
	}
	return ""
}

// BootOptions are the per-boot settings that the host-QEMU Boot does not
// have.
type BootOptions struct {
	// AllowReboot leaves out -no-reboot: a guest reboot restarts the
	// guest (the /init script runs again) instead of ending QEMU.
	AllowReboot bool
	// Initrd replaces the kit's initramfs (for example the kit's with our
	// benchmark appended as a second cpio archive).
	Initrd string
	// Kernel replaces the kit's kernel.
	Kernel string
	// Append is added to the kernel command line.
	Append string
}

// BootWith runs vm like Boot, but with the QEMU q (nil: the host's) and
// options o. It takes one of the two guest slots.
func BootWith(ctx context.Context, kit *Kit, q *QEMU, accel string, vm *VM, share string, o BootOptions) (*Result, error) {
	guestSlots <- struct{}{}
	defer func() { <-guestSlots }()
	return runGuest(ctx, kit, q, accel, vm, share, o)
}
