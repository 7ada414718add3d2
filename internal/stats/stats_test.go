package stats

import (
	"testing"
	"time"
)

func TestQuantile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = 100 - i // unsorted on purpose
	}
	for _, tc := range []struct {
		name string
		s    []time.Duration
		p    float64
		want time.Duration
	}{
		{"empty", nil, 0.99, 0},
		{"one", ms(7), 0.99, 7 * time.Millisecond},
		{"min", ms(5, 1, 3), 0, time.Millisecond},
		{"max", ms(5, 1, 3), 1, 5 * time.Millisecond},
		{"median of three", ms(5, 1, 3), 0.5, 3 * time.Millisecond},
		{"p99 of 1..100", ms(hundred...), 0.99, 99 * time.Millisecond},
		{"p50 of 1..100 (nearest rank rounds up)", ms(hundred...), 0.5, 51 * time.Millisecond},
	} {
		if got := Quantile(tc.s, tc.p); got != tc.want {
			t.Errorf("%s: Quantile(p=%v) = %v, want %v", tc.name, tc.p, got, tc.want)
		}
	}
	s := ms(3, 1, 2)
	Quantile(s, 0.5)
	if s[0] != 3*time.Millisecond {
		t.Error("Quantile sorted its argument in place")
	}
}

func TestSummary(t *testing.T) {
	if got := Summary(nil); got != "n=0" {
		t.Errorf("Summary(nil) = %q", got)
	}
	got := Summary([]time.Duration{3 * time.Millisecond, time.Millisecond, 2 * time.Millisecond})
	if want := "n=3 min=1ms p50=2ms p99=3ms max=3ms"; got != want {
		t.Errorf("Summary = %q, want %q", got, want)
	}
}
