package testenv

import (
	"context"
	"fmt"
	"time"
)

// WaitFor evaluates cond every interval until it holds or ctx ends. It is how
// tests wait for an outcome: a condition with a deadline, never a bare sleep.
func WaitFor(ctx context.Context, interval time.Duration, cond func() bool) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("condition not met: %w", ctx.Err())
		case <-t.C:
		}
	}
}
