package backoff

import (
	"context"
	"errors"
	"testing"
	"time"
)

// fakeClock fires every timer at once and records the delays asked for.
type fakeClock struct{ asked []time.Duration }

func (c *fakeClock) After(d time.Duration) (<-chan time.Time, func()) {
	c.asked = append(c.asked, d)
	ch := make(chan time.Time, 1)
	ch <- time.Time{}
	return ch, func() {}
}

// neverClock's timers never fire.
type neverClock struct{}

func (neverClock) After(time.Duration) (<-chan time.Time, func()) { return nil, func() {} }

func TestDelays(t *testing.T) {
	ms := time.Millisecond
	cases := []struct {
		name       string
		first, max time.Duration
		waits      int
		resetAfter int // Reset after this many waits (0: never)
		want       []time.Duration
	}{
		{"doubles to the cap", 50 * ms, 400 * ms, 6, 0, []time.Duration{50 * ms, 100 * ms, 200 * ms, 400 * ms, 400 * ms, 400 * ms}},
		{"reset starts again", 50 * ms, 2 * time.Second, 5, 3, []time.Duration{50 * ms, 100 * ms, 200 * ms, 50 * ms, 100 * ms}},
		{"cap below first", 100 * ms, 10 * ms, 3, 0, []time.Duration{100 * ms, 100 * ms, 100 * ms}},
		{"cap not a power of two of first", 30 * ms, 100 * ms, 4, 0, []time.Duration{30 * ms, 60 * ms, 100 * ms, 100 * ms}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := &fakeClock{}
			b := New(tc.first, tc.max, WithClock(c))
			for i := range tc.waits {
				if i > 0 && i == tc.resetAfter {
					b.Reset()
				}
				if err := b.Wait(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
			if len(c.asked) != len(tc.want) {
				t.Fatalf("asked %v, want %v", c.asked, tc.want)
			}
			for i := range c.asked {
				if c.asked[i] != tc.want[i] {
					t.Fatalf("asked %v, want %v", c.asked, tc.want)
				}
			}
		})
	}
}

// TestWaitEndsWithContext: a Wait whose timer never fires returns the
// context's error once it ends.
func TestWaitEndsWithContext(t *testing.T) {
	b := New(time.Hour, time.Hour, WithClock(neverClock{}))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait on an ended context: %v, want context.Canceled", err)
	}
}

// TestAdvance: Advance follows the same delays as Wait and shares its
// state, so a loop may mix the two.
func TestAdvance(t *testing.T) {
	ms := time.Millisecond
	c := &fakeClock{}
	b := New(10*ms, 45*ms, WithClock(c))
	got := []time.Duration{b.Advance(), b.Advance()}
	if err := b.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	got = append(got, c.asked...)
	got = append(got, b.Advance())
	b.Reset()
	got = append(got, b.Advance())
	want := []time.Duration{10 * ms, 20 * ms, 40 * ms, 45 * ms, 10 * ms}
	if len(got) != len(want) {
		t.Fatalf("delays %v, want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("delays %v, want %v", got, want)
		}
	}
}

// TestJitter: with jitter every wait lies between half the undithered delay
// and all of it, the sequence still doubles to the cap, and the waits are
// not all the same (retries of clients that failed together spread out).
func TestJitter(t *testing.T) {
	ms := time.Millisecond
	c := &fakeClock{}
	b := New(100*ms, 800*ms, WithClock(c), WithJitter())
	var want []time.Duration
	for range 200 {
		want = append(want, b.Next())
		if err := b.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	distinct := map[time.Duration]bool{}
	for i, d := range c.asked {
		if d < want[i]/2 || d > want[i] {
			t.Fatalf("wait %d: %v, want within [%v, %v]", i, d, want[i]/2, want[i])
		}
		if want[i] == 800*ms {
			distinct[d] = true
		}
	}
	if want[3] != 800*ms {
		t.Fatalf("undithered delays %v, want doubling to 800ms", want[:4])
	}
	if len(distinct) < 2 {
		t.Fatalf("196 waits at the cap were all %v: no jitter", c.asked[len(c.asked)-1])
	}
}
