package fletcher64

import (
	"encoding/binary"
	"testing"
)

func TestSumKnownValues(t *testing.T) {
	// Words 1, 2, 3: lo = 6, hi = 1 + 3 + 6 = 10.
	b := make([]byte, 12)
	binary.LittleEndian.PutUint32(b[0:], 1)
	binary.LittleEndian.PutUint32(b[4:], 2)
	binary.LittleEndian.PutUint32(b[8:], 3)
	got, err := Sum(b)
	if err != nil || got != 10<<32|6 {
		t.Fatalf("Sum = %#x, %v; want %#x", got, err, uint64(10<<32|6))
	}
	// Wrap-around of both halves.
	w := make([]byte, 8)
	binary.LittleEndian.PutUint32(w[0:], 0xffffffff)
	binary.LittleEndian.PutUint32(w[4:], 2)
	got, _ = Sum(w)
	// lo: 0xffffffff, then 1 (wrapped); hi: 0xffffffff + 1 = 0 (wrapped).
	if got != 0<<32|1 {
		t.Fatalf("wrap: got %#x", got)
	}
}

func TestSumSkippingEqualsZeroedField(t *testing.T) {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
	z := append([]byte(nil), b...)
	for i := 64; i < 72; i++ {
		z[i] = 0
	}
	want, _ := Sum(z)
	got, err := SumSkipping(b, 64)
	if err != nil || got != want {
		t.Fatalf("SumSkipping = %#x, %v; want %#x", got, err, want)
	}
}

func TestRejectsBadLengths(t *testing.T) {
	if _, err := Sum(make([]byte, 5)); err == nil {
		t.Fatal("Sum accepted length 5")
	}
	if _, err := SumSkipping(make([]byte, 8), 4); err == nil {
		t.Fatal("SumSkipping accepted field past the end")
	}
}
