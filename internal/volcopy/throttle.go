package volcopy

import (
	"context"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// throttle limits the bytes a copy reads per second, and applies a rate
// change to reads already waiting.
//
// A rate.Limiter alone does not: WaitN reserves at the rate of the moment
// and sleeps out the whole delay, so a read queued behind 1 B/s keeps
// sleeping for days after the rate became unlimited. Here every change
// replaces the limiter and closes the channel waiters select on; they drop
// their reservation and reserve again at the new rate. A fresh limiter
// starts with a full burst, so the new rate applies from the change on,
// without the debt the old rate ran up.
type throttle struct {
	burst int

	mu      sync.Mutex
	lim     *rate.Limiter
	changed chan struct{} // closed, and replaced, by every setRate
	// reserved, when set (by tests), is called when a read has to wait.
	reserved func(delay time.Duration)
}

// newThrottle limits to bytesPerSecond (0 or less: unlimited) with reads
// of at most burst bytes.
func newThrottle(bytesPerSecond int64, burst int) *throttle {
	t := &throttle{burst: burst, changed: make(chan struct{})}
	t.lim = rate.NewLimiter(limitOf(bytesPerSecond), burst)
	return t
}

func limitOf(bytesPerSecond int64) rate.Limit {
	if bytesPerSecond <= 0 {
		return rate.Inf
	}
	return rate.Limit(bytesPerSecond)
}

// setRate changes the limit and wakes every waiter to re-reserve at it.
func (t *throttle) setRate(bytesPerSecond int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if limitOf(bytesPerSecond) == t.lim.Limit() {
		return // the same rate again: keep the limiter and its debt
	}
	t.lim = rate.NewLimiter(limitOf(bytesPerSecond), t.burst)
	close(t.changed)
	t.changed = make(chan struct{})
}

// wait blocks until n bytes may be read at the current rate, or ctx ends.
func (t *throttle) wait(ctx context.Context, n int) error {
	if n > t.burst {
		return fmt.Errorf("%w: read of %d bytes exceeds the throttle's burst of %d", ErrInvalid, n, t.burst)
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		t.mu.Lock()
		lim, changed := t.lim, t.changed
		t.mu.Unlock()
		r := lim.ReserveN(time.Now(), n)
		d := r.Delay()
		if d == 0 {
			return nil
		}
		if t.reserved != nil {
			t.reserved(d)
		}
		timer := time.NewTimer(d)
		select {
		case <-timer.C:
			return nil
		case <-ctx.Done():
			timer.Stop()
			r.Cancel()
			return ctx.Err()
		case <-changed:
			// The limiter r came from is discarded: nothing to give back.
			timer.Stop()
		}
	}
}
