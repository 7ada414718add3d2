package backend

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
)

// TestHeartbeatLateness: a ping that overruns the interval makes the next
// scheduled heartbeat late by the overrun, and RunHeartbeat reports it.
func TestHeartbeatLateness(t *testing.T) {
	const timeout = 2 * time.Second
	interval := coord.HeartbeatInterval(timeout)
	c := NewSessionCore(timeout, time.Now())
	var mu sync.Mutex
	var lates []time.Duration
	c.ObserveLateness(func(late, _ time.Duration) {
		mu.Lock()
		lates = append(lates, late)
		mu.Unlock()
	})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	calls := 0
	done := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		RunHeartbeat(ctx, c, func(context.Context) (bool, error) {
			calls++
			switch calls {
			case 2:
				// The process stalls for two intervals (ctx of the ping is
				// ignored, as a starved process would).
				time.Sleep(2 * interval)
			case 3:
				close(done)
			}
			return false, nil
		})
	}()
	select {
	case <-done:
	case <-time.After(10 * interval):
		t.Fatal("heartbeat loop did not reach its third ping")
	}
	cancel()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(lates) < 3 {
		t.Fatalf("observed %d heartbeats, want 3", len(lates))
	}
	// The third heartbeat was due one interval after the second was sent,
	// and was sent two intervals after it.
	if lates[2] < interval*9/10 {
		t.Fatalf("lateness after a stalled ping = %v, want about %v (all: %v)", lates[2], interval, lates)
	}
	if lates[0] > interval/2 {
		t.Fatalf("first heartbeat %v late on an idle loop", lates[0])
	}
}
