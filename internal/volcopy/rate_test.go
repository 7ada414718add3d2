package volcopy_test

import (
	"context"
	"math"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/volcopy"
	"github.com/taskd/taskd/internal/volume"
)

// TestSetRateUnlimitedFreesStalledCopy is issue 13 bug 2: a copy slowed to
// 1 B/s stayed frozen after `task set-rate ID 0`, because the reads already
// waiting slept out the delay reserved at the old rate. Once the first
// request has gone through (the limiter's burst), the others wait about 12
// days each; after SetRate(0) the copy must finish at once. While it is
// stalled, the smoothed rate decays towards zero, and the ETA (remaining /
// rate) used to overflow time.Duration into "-2562047h47m16s": it must read
// as unknown (0) instead, never negative.
func TestSetRateUnlimitedFreesStalledCopy(t *testing.T) {
	dir := t.TempDir()
	const req = 64 << 10
	src := writeImage(t, filepath.Join(dir, "src"), 4<<20, rand.New(rand.NewPCG(13, 2)))
	dst := filepath.Join(dir, "dst")

	firstRead, stalled := make(chan struct{}), make(chan volcopy.Progress, 1)
	var once, stallOnce sync.Once
	var mu sync.Mutex
	var progress []volcopy.Progress
	opts := volcopy.Options{
		ProgressInterval: 5 * time.Millisecond,
		OnProgress: func(p volcopy.Progress) {
			mu.Lock()
			progress = append(progress, p)
			mu.Unlock()
			if p.BytesRead > 0 {
				once.Do(func() { close(firstRead) })
			}
			// A rate so low that remaining/rate in nanoseconds exceeds
			// an int64: where the old ETA overflowed.
			remaining := float64(p.AllocatedTotal - p.AllocatedDone)
			if p.BytesRead > 0 && remaining > 0 && p.Rate < remaining*1e9/math.MaxInt64 {
				stallOnce.Do(func() { stalled <- p })
			}
		},
	}
	// No deadline on the copy: rate.Limiter.WaitN refuses at once a wait
	// past one, which would hide the stall. The selects below bound the test.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	spec := volcopy.Spec{Source: "file://" + src.path, Target: "file://" + dst, Rate: 1, RequestSize: req, Workers: 2}
	job, err := volcopy.Prepare(ctx, spec, volume.Options{}, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer job.Close()
	type result struct {
		p   volcopy.Progress
		err error
	}
	done, joined := make(chan result, 1), make(chan struct{})
	go func() {
		defer close(joined)
		p, err := job.Run(ctx)
		done <- result{p, err}
	}()
	defer func() { cancel(); <-joined }() // also when the test fails

	select {
	case <-firstRead:
	case r := <-done:
		t.Fatalf("the copy at 1 B/s ended before the rate change: %+v, %v", r.p, r.err)
	}
	select {
	case p := <-stalled:
		if p.ETA != 0 {
			t.Errorf("stalled at %g B/s with %d bytes left: ETA %v, want 0 (unknown)", p.Rate, p.AllocatedTotal-p.AllocatedDone, p.ETA)
		}
	case r := <-done:
		t.Fatalf("the copy at 1 B/s ended before the rate change: %+v, %v", r.p, r.err)
	case <-time.After(30 * time.Second):
		t.Fatalf("the smoothed rate of the stalled copy did not decay")
	}
	changed := time.Now()
	job.SetRate(0)
	var r result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second): // generous: the copy needs milliseconds once unlimited
		t.Fatalf("the copy stayed stalled for 30 s after SetRate(0) (issue 13 bug 2)")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Logf("copy finished %v after the rate became unlimited", time.Since(changed))
	mustEqual(t, dst, src.data)
	mu.Lock()
	defer mu.Unlock()
	for _, p := range progress {
		if p.ETA < 0 {
			t.Errorf("negative ETA in progress %+v", p)
		}
	}
}
