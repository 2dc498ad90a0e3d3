package pmem

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzParseKeeperRecord: the keeper record is a file anyone with access
// to the socket's directory can edit. A refusal names the file; an
// accepted record has the current version and a backing, and re-encodes
// to a record that parses to the same fields.
func FuzzParseKeeperRecord(f *testing.F) {
	f.Add([]byte(`{"version":1,"backing":"/b/p.img","dev":2049,"ino":12,"size":4194304}`))
	f.Add([]byte(`{"version":2,"backing":"/b/p.img","dev":1,"ino":1,"size":1}`))
	f.Add([]byte(`{"version":1,"backing":"","size":1}`))
	f.Add([]byte(`{"version":1,"backing":"x","size":1,"pid":3}`))
	f.Add([]byte(`{"version":1,"backing":"x","size":1} {}`))
	f.Add([]byte(`[]`))
	const path = "/s/p.sock.keeper.json"
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseKeeperRecord(path, data)
		if err != nil {
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("refusal does not name the record: %v", err)
			}
			return
		}
		if r.Version != KeeperRecordVersion || r.Backing == "" || r.Size == 0 {
			t.Fatalf("accepted %+v", r)
		}
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		r2, err := ParseKeeperRecord(path, b)
		if err != nil || r2 != r {
			t.Fatalf("round trip %+v -> %s -> %+v, %v", r, b, r2, err)
		}
	})
}
