package memfile

import (
	"fmt"
	"strconv"
	"strings"
)

// Binary size units.
const (
	KiB = 1 << 10
	MiB = 1 << 20
	GiB = 1 << 30
	TiB = 1 << 40
)

// ParseSize parses a size such as "4G", "512M", "128K", "2MiB", "1T" or a
// plain byte count. Suffixes are binary (K = 1024).
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("size %q: empty", s)
	}
	u := strings.ToUpper(t)
	u = strings.TrimSuffix(u, "IB")
	u = strings.TrimSuffix(u, "B")
	mult := uint64(1)
	if n := len(u); n > 0 {
		switch u[n-1] {
		case 'K':
			mult = KiB
		case 'M':
			mult = MiB
		case 'G':
			mult = GiB
		case 'T':
			mult = TiB
		}
		if mult != 1 {
			u = u[:n-1]
		}
	}
	v, err := strconv.ParseUint(strings.TrimSpace(u), 0, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: want a number with an optional K, M, G or T suffix", s)
	}
	if v != 0 && v > ^uint64(0)/mult {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	return v * mult, nil
}

// FormatSize renders n in the largest binary unit that divides it exactly
// ("128 KiB", "1 GiB"), else in bytes ("1000 B").
func FormatSize(n uint64) string {
	units := []struct {
		div  uint64
		name string
	}{{TiB, "TiB"}, {GiB, "GiB"}, {MiB, "MiB"}, {KiB, "KiB"}}
	for _, u := range units {
		if n >= u.div && n%u.div == 0 {
			return fmt.Sprintf("%d %s", n/u.div, u.name)
		}
	}
	return fmt.Sprintf("%d B", n)
}
