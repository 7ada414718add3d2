package starve

import (
	"fmt"
	"strings"
	"time"
)

// Sample is what one sampling period measured.
type Sample struct {
	At time.Time
	// Late is the worst lateness of the session heartbeats sent in the
	// period (0 when none was sent).
	Late time.Duration
	// Heartbeats is how many heartbeats were sent in the period.
	Heartbeats int
	// RoundTrip is the slowest heartbeat round trip in the period (to
	// its answer or its failure).
	RoundTrip time.Duration
	// TickLate is how late the sampler itself woke up.
	TickLate time.Duration
	// SchedP99 is the 99th percentile of the Go scheduler's latency (a
	// runnable goroutine waiting for a thread) in the period.
	SchedP99 time.Duration
	// Throttle is the cgroup's throttling in the period.
	Throttle Throttle
}

// Throttle is the change of a cgroup's CPU throttling counters.
type Throttle struct {
	// Known is false where the counters cannot be read (no cpu
	// controller, or the cgroup changed within the period).
	Known            bool
	Periods          uint64
	ThrottledPeriods uint64
	ThrottledTime    time.Duration
}

// lateness is how long the process waited for a CPU in the period, by
// three local measures: a heartbeat sent late, the sampler woken late, or
// runnable goroutines waiting (scheduler latency p99). None of them
// depends on the store: a slow or unreachable store makes heartbeats fail
// or take long, never start late.
//
// A slow round trip counts only while the cgroup throttled the node in at
// least half of the period's CFS periods: then the node could not process
// the answer for want of CPU, whereas without throttling a slow round trip
// is the store's or the network's.
func (s Sample) lateness() time.Duration { return max(s.beatLate(), s.SchedP99) }

// beatLate is the heartbeat's (or the sampler's) lateness.
func (s Sample) beatLate() time.Duration {
	l := max(s.Late, s.TickLate)
	if s.throttled() {
		l = max(l, s.RoundTrip)
	}
	return l
}

// throttled: the cgroup throttled the node in at least half of the
// period's CFS periods.
func (s Sample) throttled() bool {
	t := s.Throttle
	return t.Known && t.Periods > 0 && 2*t.ThrottledPeriods >= t.Periods
}

// late: the period's lateness reached the threshold, or half of it while
// the CPU quota throttled the node (the cause is then known).
func (s Sample) late(threshold time.Duration) bool {
	if s.throttled() {
		return s.lateness() >= threshold/2
	}
	return s.lateness() >= threshold
}

// Policy is the decision's thresholds.
type Policy struct {
	// Threshold: a period whose lateness reaches it counts as late; half
	// of it does while the cgroup throttles the node in most periods.
	Threshold time.Duration
	// EnterLate late periods within EnterWindow make the node starved:
	// one stall (a long GC pause) does not.
	EnterLate   int
	EnterWindow time.Duration
	// Grace: a starved node recovers once no period has been even half
	// as late as Threshold for this long.
	Grace time.Duration
	// Window is the span the reported figures cover.
	Window time.Duration
}

// Validate checks the ranges and relations.
func (p Policy) Validate() error {
	switch {
	case p.Threshold <= 0:
		return fmt.Errorf("starvation threshold %v must be positive", p.Threshold)
	case p.EnterLate < 1:
		return fmt.Errorf("late periods to enter starvation %d must be at least 1", p.EnterLate)
	case p.EnterWindow < p.Threshold:
		return fmt.Errorf("starvation entry window %v must be at least the threshold %v", p.EnterWindow, p.Threshold)
	case p.Grace <= 0:
		return fmt.Errorf("starvation grace %v must be positive", p.Grace)
	case p.Window < p.EnterWindow:
		return fmt.Errorf("figures window %v must cover the entry window %v", p.Window, p.EnterWindow)
	}
	return nil
}

// Figures summarise the Window before a decision.
type Figures struct {
	// MaxLate is the worst heartbeat (or sampler) lateness; SchedP99
	// counts as well for the decision.
	MaxLate time.Duration
	// SchedP99 is the worst per-period scheduler latency p99.
	SchedP99 time.Duration
	// ThrottleKnown says whether the cgroup counters were readable;
	// ThrottledPct of the CFS periods were throttled, for ThrottledTime.
	ThrottleKnown bool
	Periods       uint64
	ThrottledPct  float64
	ThrottledTime time.Duration
}

// Reason is the operator's sentence: the cause and what to do.
func (f Figures) Reason(window time.Duration) string {
	var parts []string
	if f.ThrottleKnown && f.Periods > 0 && f.ThrottledPct > 0 {
		parts = append(parts, fmt.Sprintf("throttled %.0f%% of periods in the last %s by its CPU quota (%s throttled)",
			f.ThrottledPct, spell(window), f.ThrottledTime.Round(10*time.Millisecond)))
	}
	parts = append(parts, fmt.Sprintf("heartbeats up to %.1f s late", f.MaxLate.Seconds()))
	if f.SchedP99 > 0 {
		parts = append(parts, fmt.Sprintf("Go scheduler latency p99 %s", f.SchedP99.Round(time.Millisecond)))
	}
	if f.ThrottleKnown && f.ThrottledPct > 0 {
		parts = append(parts, "raise CPUQuota or lower the load")
	} else {
		parts = append(parts, "the node does not get enough CPU: raise its CPU share (CPUWeight) or lower the load")
	}
	return strings.Join(parts, "; ")
}

func spell(d time.Duration) string {
	if d == time.Minute {
		return "minute"
	}
	return d.String()
}

// Verdict is the state after a sample.
type Verdict struct {
	Starved bool
	// Changed is true on the sample that entered or left starvation.
	Changed bool
	// Since is when the current state began.
	Since   time.Time
	Figures Figures
}

// Decider turns samples into the starved / not starved state, with
// hysteresis on entry (EnterLate late periods) and exit (Grace without
// even half-threshold lateness). It is pure: time comes from the samples.
type Decider struct {
	p       Policy
	hist    []Sample
	starved bool
	since   time.Time
	// lastUneasy is the last period at least Threshold/2 late.
	lastUneasy time.Time
}

// NewDecider returns a decider in the not-starved state.
func NewDecider(p Policy) (*Decider, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &Decider{p: p}, nil
}

// Observe adds a sample (samples come in time order) and decides.
func (d *Decider) Observe(s Sample) Verdict {
	if d.since.IsZero() {
		d.since = s.At
	}
	d.hist = append(d.hist, s)
	cut := 0
	for cut < len(d.hist) && s.At.Sub(d.hist[cut].At) > d.p.Window {
		cut++
	}
	d.hist = d.hist[cut:]
	if s.lateness() >= d.p.Threshold/2 {
		d.lastUneasy = s.At
	}
	changed := false
	switch {
	case !d.starved && d.lateIn(s.At) >= d.p.EnterLate:
		d.starved, d.since, changed = true, s.At, true
	case d.starved && s.At.Sub(d.lastUneasy) >= d.p.Grace:
		d.starved, d.since, changed = false, s.At, true
	}
	return Verdict{Starved: d.starved, Changed: changed, Since: d.since, Figures: d.figures()}
}

// lateIn counts the late periods in the entry window that ends now. The
// window is stretched by the time the sampler itself was held off (each
// newer sample's TickLate): a node so starved that its sampler wakes up
// less often than once per EnterWindow would otherwise never have two
// late periods inside it, and would never be told starved however late
// everything is. A single stall still counts once.
func (d *Decider) lateIn(now time.Time) int {
	n := 0
	var stretch time.Duration
	for i := len(d.hist) - 1; i >= 0; i-- {
		h := d.hist[i]
		if now.Sub(h.At) > d.p.EnterWindow+stretch {
			break
		}
		if h.late(d.p.Threshold) {
			n++
		}
		stretch += h.TickLate
	}
	return n
}

func (d *Decider) figures() Figures {
	var f Figures
	var throttled uint64
	for _, h := range d.hist {
		f.MaxLate = max(f.MaxLate, h.beatLate())
		f.SchedP99 = max(f.SchedP99, h.SchedP99)
		if h.Throttle.Known {
			f.ThrottleKnown = true
			f.Periods += h.Throttle.Periods
			throttled += h.Throttle.ThrottledPeriods
			f.ThrottledTime += h.Throttle.ThrottledTime
		}
	}
	if f.Periods > 0 {
		f.ThrottledPct = 100 * float64(throttled) / float64(f.Periods)
	}
	return f
}
