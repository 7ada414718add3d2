// Package backoff is the one capped exponential delay taskd's retry loops
// wait with. A loop calls Wait after a failure and Reset after a success,
// so that a later failure starts again from the first delay.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Clock makes timers; tests inject one to drive Wait without real time.
type Clock interface {
	// After returns a channel that receives once d has passed, and a stop
	// function that releases the timer.
	After(d time.Duration) (<-chan time.Time, func())
}

type realClock struct{}

func (realClock) After(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTimer(d)
	return t.C, func() { t.Stop() }
}

// Backoff doubles its delay after every Wait, from first up to max. It is
// not safe for concurrent use: each retry loop owns one.
type Backoff struct {
	first, max, next time.Duration
	clock            Clock
	jitter           bool
}

// Option configures a Backoff.
type Option func(*Backoff)

// WithClock makes Wait use c instead of real timers.
func WithClock(c Clock) Option { return func(b *Backoff) { b.clock = c } }

// WithJitter makes Wait wait a uniformly random delay between half the
// current delay and all of it ("equal jitter"), so that many clients that
// failed together do not retry together. Next and Advance still return the
// undithered delay.
func WithJitter() Option { return func(b *Backoff) { b.jitter = true } }

// New returns a backoff that waits first, then twice as long each time, up
// to limit. A limit below first is raised to first.
func New(first, limit time.Duration, opts ...Option) *Backoff {
	b := &Backoff{first: first, max: max(limit, first), next: first, clock: realClock{}}
	for _, o := range opts {
		o(b)
	}
	return b
}

// Next is the delay the next Wait will wait.
func (b *Backoff) Next() time.Duration { return b.next }

// Reset starts again from the first delay.
func (b *Backoff) Reset() { b.next = b.first }

// Advance returns the current delay and doubles it (up to max), for a loop
// that waits in its own select (a timer beside its watches) instead of in
// Wait.
func (b *Backoff) Advance() time.Duration {
	d := b.next
	b.next = min(2*b.next, b.max)
	return d
}

// Wait waits the current delay and doubles it (up to max). It returns
// ctx's error if ctx ends first, nil otherwise.
func (b *Backoff) Wait(ctx context.Context) error {
	d := b.Advance()
	if b.jitter && d > 1 {
		d = d/2 + rand.N(d-d/2+1)
	}
	c, stop := b.clock.After(d)
	defer stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-c:
		return nil
	}
}
