package flushhint

import (
	"context"
	"time"

	"gvisor.dev/gvisor/pkg/sync"
)

// tokenBucket limits syncs per device: it holds up to burst tokens, gains
// rate tokens per second, and each sync takes one.
type tokenBucket struct {
	mu sync.Mutex
	// +checklocks:mu
	rate float64
	// +checklocks:mu
	burst float64
	// +checklocks:mu
	now func() time.Time
	// +checklocks:mu
	tokens float64
	// +checklocks:mu
	last time.Time
}

func newTokenBucket(rate float64, burst int, now func() time.Time) *tokenBucket {
	if burst < 1 {
		burst = 1
	}
	return &tokenBucket{rate: rate, burst: float64(burst), now: now, tokens: float64(burst), last: now()}
}

// reserve takes a token and returns how long the caller must wait before
// using it (0 when one was available).
func (b *tokenBucket) reserve() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if el := now.Sub(b.last); el > 0 {
		b.tokens += el.Seconds() * b.rate
		if b.tokens > b.burst {
			b.tokens = b.burst
		}
	}
	b.last = now
	b.tokens--
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / b.rate * float64(time.Second))
}

// cancel gives back a token reserve took but the caller did not use.
func (b *tokenBucket) cancel() {
	b.mu.Lock()
	b.tokens++
	if b.tokens > b.burst {
		b.tokens = b.burst
	}
	b.mu.Unlock()
}

// take waits for a token. It reports whether it had to wait, and ctx's
// error if ctx ended first (the token is then given back).
func (b *tokenBucket) take(ctx context.Context) (waited bool, err error) {
	d := b.reserve()
	if d <= 0 {
		return false, nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true, nil
	case <-ctx.Done():
		b.cancel()
		return true, ctx.Err()
	}
}
