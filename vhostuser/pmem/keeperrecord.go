package pmem

// The record that ties a standalone server's keeper to its backing.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/nvdimm-backend/nvdimm-backend/memfile"
	"github.com/nvdimm-backend/nvdimm-backend/vhostuser"
)

// KeeperRecord names the backing a standalone serve's keeper belongs to
// (SOCKET.keeper.json): a serve that would take the connection over must
// serve the same file (device and inode, not only path) at the same guest
// size, since QEMU keeps the old file mapped.
type KeeperRecord struct {
	Version int    `json:"version"`
	Backing string `json:"backing"`
	Dev     uint64 `json:"dev"`
	Ino     uint64 `json:"ino"`
	Size    uint64 `json:"size"`
}

const KeeperRecordVersion = 1

// ParseKeeperRecord decodes a keeper record read from path (for errors):
// exactly one JSON object with known fields, the current version and a
// backing named.
func ParseKeeperRecord(path string, data []byte) (KeeperRecord, error) {
	var r KeeperRecord
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return KeeperRecord{}, fmt.Errorf("keeper record %s: %w", path, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return KeeperRecord{}, fmt.Errorf("keeper record %s: data after the record", path)
	}
	if r.Version != KeeperRecordVersion {
		return KeeperRecord{}, fmt.Errorf("keeper record %s: version %d, want %d", path, r.Version, KeeperRecordVersion)
	}
	if r.Backing == "" || r.Size == 0 {
		return KeeperRecord{}, fmt.Errorf("keeper record %s: no backing or size", path)
	}
	return r, nil
}

// BackingIdentity is the record for the backing open as both lockB and
// b (which must be the same file) with guest size size.
func BackingIdentity(lockB, b *memfile.Backing, size uint64) (KeeperRecord, error) {
	var st, st2 unix.Stat_t
	if err := unix.Fstat(int(lockB.File().Fd()), &st); err != nil {
		return KeeperRecord{}, fmt.Errorf("stat %s: %w", lockB.Path(), err)
	}
	if err := unix.Fstat(int(b.File().Fd()), &st2); err != nil {
		return KeeperRecord{}, fmt.Errorf("stat %s: %w", b.Path(), err)
	}
	if st.Dev != st2.Dev || st.Ino != st2.Ino {
		return KeeperRecord{}, fmt.Errorf("backing %s was replaced while it was opened; try again", b.Path())
	}
	abs, err := filepath.Abs(b.Path())
	if err != nil {
		abs = b.Path()
	}
	return KeeperRecord{Version: KeeperRecordVersion, Backing: abs, Dev: st.Dev, Ino: st.Ino, Size: size}, nil
}

// CheckKeeper looks for a keeper running on kpath and returns its pid (0:
// none). A running keeper must belong to the backing id: its record
// (kpath.json) must name the same file and size.
func CheckKeeper(kpath string, id KeeperRecord) (int, error) {
	pid, ok := vhostuser.KeeperPID(kpath)
	if !ok {
		return 0, nil
	}
	rpath := kpath + ".json"
	data, err := os.ReadFile(rpath)
	if err != nil {
		return 0, fmt.Errorf("a keeper (pid %d) holds a front-end connection on %s, but the record of the backing it belongs to cannot be read (%w); refusing to take it over", pid, kpath, err)
	}
	r, err := ParseKeeperRecord(rpath, data)
	if err != nil {
		return 0, fmt.Errorf("a keeper (pid %d) holds a front-end connection on %s; refusing to take it over: %w", pid, kpath, err)
	}
	if r.Dev != id.Dev || r.Ino != id.Ino || r.Size != id.Size {
		return 0, fmt.Errorf("a keeper (pid %d) holds QEMU's connection on %s for backing %s (%s, device %d inode %d); refusing to serve %s (%s, device %d inode %d) in its place: QEMU still has that file mapped. Serve %s again, or stop the keeper (kill %d: the guest loses the device)",
			pid, kpath, r.Backing, memfile.FormatSize(r.Size), r.Dev, r.Ino, id.Backing, memfile.FormatSize(id.Size), id.Dev, id.Ino, r.Backing, pid)
	}
	return pid, nil
}
