package acpi

import (
	"fmt"
	"testing"
)

// benchTopology is a machine with 32 NVDIMMs, QEMU's practical maximum.
func benchTopology() QEMUTopology {
	var t QEMUTopology
	for i := 0; i < 32; i++ {
		t.DIMMs = append(t.DIMMs, QEMUDIMM{Slot: i, Addr: 1<<32 + uint64(i)<<30, Size: 1 << 30})
	}
	return t
}

func BenchmarkBuildQEMU32(b *testing.B) {
	t := benchTopology()
	for b.Loop() {
		if _, err := BuildQEMU(t); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseValidateCookies32(b *testing.B) {
	raw, err := BuildQEMU(benchTopology())
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		n, err := ParseNFIT(raw)
		if err != nil {
			b.Fatal(err)
		}
		if ps := n.Validate(); len(ps) != 0 {
			b.Fatal(fmt.Sprint(ps))
		}
		if _, err := Cookies(n); err != nil {
			b.Fatal(err)
		}
	}
}
