package testenv

import (
	"context"
	"time"

	"github.com/taskd/taskd/internal/harness"
)

// WaitFor evaluates cond every interval until it holds or ctx ends. It is how
// tests wait for an outcome: a condition with a deadline, never a bare sleep.
func WaitFor(ctx context.Context, interval time.Duration, cond func() bool) error {
	return harness.WaitFor(ctx, interval, cond)
}
