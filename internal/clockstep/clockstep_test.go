package clockstep

import (
	"context"
	"testing"
	"time"
)

// TestWatchEndsWithContext: the watch arms and returns nil once its
// context ends. (Setting the machine's clock to see it fire would change
// the clock of everything else on the machine, so the notification itself
// is exercised through taskd's injected clock offset in the scheduler's
// tests and the chaos campaign.)
func TestWatchEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Watch(ctx, func() { t.Error("notified without a clock step") }) }()
	select {
	case err := <-done:
		t.Fatalf("watch ended before its context: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watch did not end with its context")
	}
}
