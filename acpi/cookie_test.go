package acpi

import "testing"

func TestQEMUSlotCookiesMatchGuests(t *testing.T) {
	// Values read from real guests' /sys/bus/nd/devices/region0/set_cookie
	// (v1.1 index and v1.2 index respectively).
	cases := []struct {
		slot     int
		v11, v12 uint64
	}{
		{0, 0x002468ac00123456, 0x00ba90120012b4dc},
		{1, 0x002468ae00123457, 0x00ba901c0012b4dd},
	}
	for _, c := range cases {
		v11, v12 := QEMUSlotCookies(c.slot)
		if v11 != c.v11 || v12 != c.v12 {
			t.Errorf("slot %d: got %#x/%#x, want %#x/%#x", c.slot, v11, v12, c.v11, c.v12)
		}
	}
}

func TestComputeCookiesOrderAndAlt(t *testing.T) {
	// Offsets 0x100 (bytes 00 01 00 00 ...) and 0x1000000 (bytes
	// 00 00 00 01 ...): numeric order puts 0x100 first, memcmp of the
	// little-endian bytes puts 0x1000000 first, so Alt differs from V11.
	a := CookieDIMM{RegionOffset: 0x100, Serial: 1, VendorID: 0x8086}
	b := CookieDIMM{RegionOffset: 0x1000000, Serial: 2, VendorID: 0x8086}
	c1, err := ComputeCookies([]CookieDIMM{a, b})
	if err != nil {
		t.Fatal(err)
	}
	c2, err := ComputeCookies([]CookieDIMM{b, a})
	if err != nil {
		t.Fatal(err)
	}
	if c1 != c2 {
		t.Errorf("cookies depend on input order: %+v vs %+v", c1, c2)
	}
	if c1.Alt == c1.V11 {
		t.Errorf("alt cookie %#x should differ from v1.1 %#x when byte order differs from numeric", c1.Alt, c1.V11)
	}
	// Same numeric and byte-wise order: Alt == V11.
	d := CookieDIMM{RegionOffset: 0x200, Serial: 3}
	c3, err := ComputeCookies([]CookieDIMM{a, d})
	if err != nil {
		t.Fatal(err)
	}
	if c3.Alt != c3.V11 {
		t.Errorf("alt %#x != v1.1 %#x for offsets sorted the same both ways", c3.Alt, c3.V11)
	}
	if _, err := ComputeCookies(nil); err == nil {
		t.Error("empty set: want error")
	}
}
