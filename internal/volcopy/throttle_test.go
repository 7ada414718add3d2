package volcopy

import (
	"context"
	"math"
	"testing"
	"time"
)

// TestThrottleWakesOnRateChange: a read that waits behind 1 B/s (about two
// weeks for 1 MiB) goes ahead as soon as the rate becomes unlimited, and a
// waiter re-reserves at a new finite rate rather than the old one.
func TestThrottleWakesOnRateChange(t *testing.T) {
	for _, tc := range []struct {
		name string
		to   int64
	}{{"unlimited", 0}, {"faster", 1 << 30}} {
		t.Run(tc.name, func(t *testing.T) {
			const burst = 1 << 20
			th := newThrottle(1, burst)
			waiting := make(chan time.Duration, 1)
			th.reserved = func(d time.Duration) {
				select {
				case waiting <- d:
				default:
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := th.wait(ctx, burst); err != nil { // the burst: at once
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- th.wait(ctx, burst) }()
			select {
			case d := <-waiting:
				if d < 24*time.Hour {
					t.Fatalf("the second read waits %v at 1 B/s", d)
				}
			case err := <-done:
				t.Fatalf("the second read did not wait at 1 B/s: %v", err)
			}
			changed := time.Now()
			th.setRate(tc.to)
			if err := <-done; err != nil {
				t.Fatalf("wait after the rate change: %v", err)
			}
			t.Logf("the waiting read went ahead %v after the rate change", time.Since(changed))
		})
	}
}

// TestThrottleWaitHonoursContext: a waiting read ends with its context.
func TestThrottleWaitHonoursContext(t *testing.T) {
	th := newThrottle(1, 1024)
	ctx, cancel := context.WithCancel(context.Background())
	waiting := make(chan struct{})
	th.reserved = func(time.Duration) { close(waiting) }
	if err := th.wait(ctx, 1024); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- th.wait(ctx, 1024) }()
	<-waiting
	cancel()
	if err := <-done; err != context.Canceled {
		t.Fatalf("wait after cancel: %v, want context.Canceled", err)
	}
}

func TestETA(t *testing.T) {
	for _, tc := range []struct {
		name      string
		remaining int64
		rate      float64
		want      time.Duration
	}{
		{"steady", 100 << 20, 10 << 20, 10 * time.Second},
		{"done", 0, 10 << 20, 0},
		{"no rate yet", 100 << 20, 0, 0},
		{"stalled: rate decayed to almost nothing", 100 << 30, 5e-324, 0},
		{"rate tiny, remaining huge", math.MaxInt64, 1e-9, 0},
		{"NaN rate", 1 << 20, math.NaN(), 0},
		{"infinite rate", 1 << 20, math.Inf(1), 0},
		{"negative rate", 1 << 20, -5, 0},
		{"just under the cap", 1 << 20, float64(1<<20) / (maxETA.Seconds() - 3600), maxETA - time.Hour},
		{"above the cap", 1 << 20, float64(1<<20) / (maxETA.Seconds() + 3600), 0},
		{"fast: at least a second", 1, 1 << 30, time.Second},
	} {
		got := eta(tc.remaining, tc.rate)
		if got < 0 {
			t.Errorf("%s: eta %v is negative", tc.name, got)
		}
		if diff := got - tc.want; diff < -time.Millisecond || diff > time.Millisecond {
			t.Errorf("%s: eta(%d, %g) = %v, want %v", tc.name, tc.remaining, tc.rate, got, tc.want)
		}
	}
}
