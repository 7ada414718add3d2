package starve

import (
	"math"
	"strings"
	"testing"
	"time"
)

var testPolicy = Policy{Threshold: 600 * time.Millisecond, EnterLate: 2, EnterWindow: 10 * time.Second, Grace: 10 * time.Second, Window: time.Minute}

// step is one sample, at offset from t0, with its lateness (ms).
type step struct {
	at      time.Duration
	lateMS  int
	tickMS  int
	schedMS int
	want    bool // starved after it
	changed bool
}

func TestDecider(t *testing.T) {
	s := time.Second
	cases := []struct {
		name  string
		steps []step
	}{
		{"idle node never starves", []step{{1 * s, 5, 1, 0, false, false}, {2 * s, 10, 0, 0, false, false}, {3 * s, 299, 0, 0, false, false}}},
		{"one stall (a GC pause) is not starvation", []step{{1 * s, 0, 0, 0, false, false}, {2 * s, 2000, 1500, 0, false, false}, {3 * s, 0, 0, 0, false, false}, {20 * s, 0, 0, 0, false, false}}},
		{"two late periods within the window enter", []step{{1 * s, 700, 0, 0, false, false}, {3 * s, 0, 900, 0, true, true}, {4 * s, 1200, 0, 0, true, false}}},
		{"scheduler latency alone enters (heartbeats on time, goroutines waiting)", []step{{1 * s, 0, 0, 800, false, false}, {2 * s, 10, 5, 650, true, true}}},
		{"scheduler latency holds starvation", []step{
			{1 * s, 900, 0, 0, false, false}, {2 * s, 900, 0, 0, true, true}, {8 * s, 0, 0, 350, true, false}, {17 * s, 0, 0, 0, true, false}, {18 * s, 0, 0, 0, false, true}}},
		{"two late periods further apart than the window do not", []step{{1 * s, 700, 0, 0, false, false}, {12 * s, 700, 0, 0, false, false}, {23 * s, 700, 0, 0, false, false}}},
		{"a sampler held off longer than the window still enters (two samples, each 14 s late)", []step{
			{1 * s, 0, 0, 0, false, false}, {16 * s, 0, 14000, 0, false, false}, {31 * s, 0, 14000, 0, true, true}}},
		{"two late periods apart by more than the window and the sampler's lateness do not", []step{
			{1 * s, 0, 700, 0, false, false}, {13 * s, 0, 700, 0, false, false}}},
		{"late exactly at the threshold counts", []step{{1 * s, 600, 0, 0, false, false}, {2 * s, 600, 0, 0, true, true}}},
		{"recovers after the grace without uneasy periods", []step{
			{1 * s, 900, 0, 0, false, false}, {2 * s, 900, 0, 0, true, true},
			{5 * s, 0, 0, 0, true, false}, {11 * s, 0, 0, 0, true, false}, {12 * s, 0, 0, 0, false, true}, {13 * s, 0, 0, 0, false, false}}},
		{"half-threshold lateness holds starvation (hysteresis)", []step{
			{1 * s, 900, 0, 0, false, false}, {2 * s, 900, 0, 0, true, true},
			{8 * s, 300, 0, 0, true, false}, {17 * s, 0, 0, 0, true, false}, {18 * s, 0, 0, 0, false, true}}},
		{"starves again after recovering", []step{
			{1 * s, 900, 0, 0, false, false}, {2 * s, 900, 0, 0, true, true}, {12 * s, 0, 0, 0, false, true},
			{13 * s, 900, 0, 0, false, false}, {14 * s, 900, 0, 0, true, true}}},
	}
	t0 := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, err := NewDecider(testPolicy)
			if err != nil {
				t.Fatal(err)
			}
			for i, st := range c.steps {
				v := d.Observe(Sample{At: t0.Add(st.at), Late: time.Duration(st.lateMS) * time.Millisecond, TickLate: time.Duration(st.tickMS) * time.Millisecond,
					SchedP99: time.Duration(st.schedMS) * time.Millisecond})
				if v.Starved != st.want || v.Changed != st.changed {
					t.Fatalf("step %d (%v): starved=%v changed=%v, want %v %v", i, st.at, v.Starved, v.Changed, st.want, st.changed)
				}
				if v.Changed && !v.Since.Equal(t0.Add(st.at)) {
					t.Fatalf("step %d: since %v, want the sample's time", i, v.Since)
				}
			}
		})
	}
}

// TestRoundTripNeedsThrottling: a slow heartbeat round trip is starvation
// only while the cgroup throttles the node; otherwise it is the store's.
func TestRoundTripNeedsThrottling(t *testing.T) {
	t0 := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	throttled := Throttle{Known: true, Periods: 10, ThrottledPeriods: 6}
	cases := []struct {
		name string
		th   Throttle
		want bool
	}{
		{"throttled in most periods", throttled, true},
		{"throttled in a few periods", Throttle{Known: true, Periods: 10, ThrottledPeriods: 4}, false},
		{"throttled in every period", Throttle{Known: true, Periods: 10, ThrottledPeriods: 10}, true},
		{"no cgroup counters", Throttle{}, false},
	}
	for _, c := range cases {
		d, _ := NewDecider(testPolicy)
		var v Verdict
		for i := range 3 {
			v = d.Observe(Sample{At: t0.Add(time.Duration(i) * time.Second), RoundTrip: 900 * time.Millisecond, Throttle: c.th})
		}
		if v.Starved != c.want {
			t.Errorf("%s: starved=%v, want %v", c.name, v.Starved, c.want)
		}
		if c.want && v.Figures.MaxLate != 900*time.Millisecond {
			t.Errorf("%s: max late %v", c.name, v.Figures.MaxLate)
		}
	}
}

func TestFiguresAndReason(t *testing.T) {
	d, _ := NewDecider(testPolicy)
	t0 := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	// An old sample outside the window must not count.
	d.Observe(Sample{At: t0, Late: 9 * time.Second, Throttle: Throttle{Known: true, Periods: 1000, ThrottledPeriods: 0}})
	d.Observe(Sample{At: t0.Add(61 * time.Second), Late: 2100 * time.Millisecond, SchedP99: 40 * time.Millisecond,
		Throttle: Throttle{Known: true, Periods: 10, ThrottledPeriods: 8, ThrottledTime: 700 * time.Millisecond}})
	v := d.Observe(Sample{At: t0.Add(62 * time.Second), Late: 100 * time.Millisecond,
		Throttle: Throttle{Known: true, Periods: 10, ThrottledPeriods: 9, ThrottledTime: 800 * time.Millisecond}})
	f := v.Figures
	if f.MaxLate != 2100*time.Millisecond || f.Periods != 20 || f.ThrottledPct != 85 || f.ThrottledTime != 1500*time.Millisecond || f.SchedP99 != 40*time.Millisecond {
		t.Fatalf("figures %+v", f)
	}
	r := f.Reason(time.Minute)
	for _, want := range []string{"throttled 85% of periods in the last minute by its CPU quota", "heartbeats up to 2.1 s late", "raise CPUQuota or lower the load"} {
		if !strings.Contains(r, want) {
			t.Fatalf("reason %q lacks %q", r, want)
		}
	}
	// Without cgroup counters the advice names the CPU share.
	f.ThrottleKnown = false
	if r := f.Reason(time.Minute); strings.Contains(r, "throttled") || !strings.Contains(r, "CPUWeight") {
		t.Fatalf("reason without cgroup counters: %q", r)
	}
}

func TestPolicyValidate(t *testing.T) {
	bad := []Policy{
		{},
		{Threshold: time.Second, EnterLate: 0, EnterWindow: 10 * time.Second, Grace: time.Second, Window: time.Minute},
		{Threshold: time.Second, EnterLate: 2, EnterWindow: 500 * time.Millisecond, Grace: time.Second, Window: time.Minute},
		{Threshold: time.Second, EnterLate: 2, EnterWindow: 10 * time.Second, Grace: 0, Window: time.Minute},
		{Threshold: time.Second, EnterLate: 2, EnterWindow: 10 * time.Second, Grace: time.Second, Window: time.Second},
	}
	for i, p := range bad {
		if _, err := NewDecider(p); err == nil {
			t.Errorf("policy %d %+v accepted", i, p)
		}
	}
	if err := testPolicy.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestQuantile(t *testing.T) {
	b := []float64{0, 0.001, 0.01, 0.1, math.Inf(1)}
	if got := quantile([]uint64{0, 0, 0, 0}, b, 0.99); got != 0 {
		t.Fatalf("empty: %v", got)
	}
	if got := quantile([]uint64{98, 1, 1, 0}, b, 0.99); got != 10*time.Millisecond {
		t.Fatalf("p99 of 98/1/1: %v", got)
	}
	if got := quantile([]uint64{50, 0, 0, 50}, b, 0.99); got != 100*time.Millisecond {
		t.Fatalf("open last bucket: %v", got)
	}
}

// TestDefaultConfigValid: every session the quorum accepts gives a valid
// starvation policy, with the threshold a quarter of the session margin.
func TestDefaultConfigValid(t *testing.T) {
	for _, timeout := range []time.Duration{2 * time.Second, 6 * time.Second, 30 * time.Second, 120 * time.Second} {
		for _, f := range []float64{0.3, 0.6, 0.9} {
			c := DefaultConfig(timeout, f)
			if err := c.Validate(); err != nil {
				t.Fatalf("timeout %v fraction %v: %v", timeout, f, err)
			}
			margin := timeout - time.Duration(f*float64(timeout))
			if c.Threshold != margin/4 {
				t.Fatalf("timeout %v fraction %v: threshold %v, want %v", timeout, f, c.Threshold, margin/4)
			}
		}
	}
	if c := DefaultConfig(6*time.Second, 0.6); c.Threshold != 600*time.Millisecond {
		t.Fatalf("default session: threshold %v", c.Threshold)
	}
}
