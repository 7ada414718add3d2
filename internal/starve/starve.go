// Package starve tells whether this node is starved of CPU: a node squeezed
// by its cgroup's CPU quota (or crowded out by its neighbours) sends its
// session heartbeats late long before it loses its session, and a starved
// leader would fence, rejoin and, with the highest priority, win the
// leadership back: a carousel made by the slice limit.
//
// The Monitor measures three things each second: how late the session
// heartbeats of the coordination store were sent against their schedule
// (from the backends' heartbeat loops, coord.HeartbeatObserver), the Go
// runtime's scheduling latency (runtime/metrics /sched/latencies:seconds),
// and the cgroup's CFS throttling counters (cgroup v1 cpu.stat
// nr_periods/nr_throttled/throttled_time, or v2 nr_periods/nr_throttled/
// throttled_usec) where readable. A Decider turns them into starved / not
// starved with hysteresis; each change is a "starved" or "recovered" event
// in the timeline, with the figures, and is handed to the quorum, which
// advertises current priority 0 while starved.
//
// Guarantees: one late period does not make a node starved (EnterLate
// periods must be late within EnterWindow), and a starved node recovers
// only after Grace without a period even half as late as the threshold.
// Non-guarantees: a process stopped outright (SIGSTOP) measures nothing
// while stopped; the figures come from the node's own clock.
package starve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/metrics"
)

// Config configures a Monitor.
type Config struct {
	Policy
	// Interval is the sampling period.
	Interval time.Duration
	// Refresh: while starved, the reason handed to OnChange is refreshed
	// this often (the member record shows the current figures).
	Refresh time.Duration
}

// DefaultConfig derives the policy from the session: the margin between
// the local deadline and the session timeout is timeout × (1 − deadline
// fraction); a heartbeat a quarter of that margin late is a late one.
func DefaultConfig(timeout time.Duration, deadlineFraction float64) Config {
	margin := timeout - time.Duration(deadlineFraction*float64(timeout))
	enter := max(10*time.Second, 2*timeout)
	return Config{
		Policy: Policy{
			Threshold:   margin / 4,
			EnterLate:   2,
			EnterWindow: enter,
			Grace:       enter,
			Window:      max(time.Minute, enter),
		},
		Interval: time.Second,
		Refresh:  15 * time.Second,
	}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	var errs []error
	if err := c.Policy.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Interval <= 0 || c.Interval > c.EnterWindow/2 {
		errs = append(errs, fmt.Errorf("starvation sampling interval %v: must be positive and at most half the entry window %v", c.Interval, c.EnterWindow))
	}
	if c.Refresh < c.Interval {
		errs = append(errs, fmt.Errorf("starvation refresh %v must be at least the sampling interval %v", c.Refresh, c.Interval))
	}
	return errors.Join(errs...)
}

// Status is the monitor's current state.
type Status struct {
	Starved bool
	Since   time.Time
	Reason  string
	Figures Figures
}

// Monitor samples and decides. Feed it heartbeats with ObserveHeartbeat.
type Monitor struct {
	cfg      Config
	dec      *Decider
	log      *slog.Logger
	met      *metrics.Set
	onChange func(starved bool, reason string)
	cg       cgroupFS
	sched    *schedReader

	mu     sync.Mutex
	late   time.Duration // worst heartbeat lateness since the last sample
	rtt    time.Duration // slowest heartbeat round trip since the last sample
	beats  int
	status Status
}

// New returns a Monitor; onChange (it must not block for long) is called
// on each change of state and, while starved, every Refresh.
func New(cfg Config, met *metrics.Set, log *slog.Logger, onChange func(starved bool, reason string)) (*Monitor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("starvation monitor: %w", err)
	}
	dec, err := NewDecider(cfg.Policy)
	if err != nil {
		return nil, err
	}
	return &Monitor{cfg: cfg, dec: dec, log: log, met: met, onChange: onChange,
		cg: cgroupFS{procSelf: "/proc/self"}, sched: newSchedReader()}, nil
}

// ObserveHeartbeat is a coord.HeartbeatObserver.
func (m *Monitor) ObserveHeartbeat(late, roundTrip time.Duration) {
	if m.met != nil {
		m.met.HeartbeatLateness.Observe(late.Seconds())
		m.met.HeartbeatRoundTrip.Observe(roundTrip.Seconds())
	}
	m.mu.Lock()
	m.late = max(m.late, late)
	m.rtt = max(m.rtt, roundTrip)
	m.beats++
	m.mu.Unlock()
}

// Status returns the current state.
func (m *Monitor) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.status
}

// Run samples every Interval until ctx ends.
func (m *Monitor) Run(ctx context.Context) error {
	prev, cgErr := m.cg.read()
	if cgErr != nil {
		m.log.Info("cgroup CPU throttling counters are not readable; starvation is measured from lateness alone", "err", cgErr)
	}
	m.sched.p99() // the baseline
	due := time.Now().Add(m.cfg.Interval)
	t := time.NewTimer(m.cfg.Interval)
	defer t.Stop()
	var refreshed time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		now := time.Now()
		s := Sample{At: now, TickLate: max(now.Sub(due), 0), SchedP99: m.sched.p99()}
		m.mu.Lock()
		s.Late, s.Heartbeats, s.RoundTrip = m.late, m.beats, m.rtt
		m.late, m.beats, m.rtt = 0, 0, 0
		m.mu.Unlock()
		if cur, err := m.cg.read(); err == nil {
			s.Throttle = delta(prev, cur)
			prev = cur
		} else {
			prev = counters{}
		}
		m.record(s)
		v := m.dec.Observe(s)
		reason := ""
		if v.Starved {
			reason = v.Figures.Reason(m.cfg.Window)
		}
		m.mu.Lock()
		m.status = Status{Starved: v.Starved, Since: v.Since, Reason: reason, Figures: v.Figures}
		m.mu.Unlock()
		if m.met != nil {
			m.met.Starved.Set(b2f(v.Starved))
		}
		switch {
		case v.Changed && v.Starved:
			m.log.Warn("node is starved of CPU: it advertises priority 0 and yields the leadership", events.Starved.Attr(), "reason", reason,
				"heartbeat_late_max", v.Figures.MaxLate, "sched_latency_p99", v.Figures.SchedP99,
				"throttled_pct", fmt.Sprintf("%.0f", v.Figures.ThrottledPct), "throttled_time", v.Figures.ThrottledTime,
				"threshold", m.cfg.Threshold)
			refreshed = now
			m.onChange(true, reason)
		case v.Changed:
			m.log.Info("node recovered from CPU starvation", events.Recovered.Attr(), "grace", m.cfg.Grace,
				"heartbeat_late_max", v.Figures.MaxLate, "throttled_pct", fmt.Sprintf("%.0f", v.Figures.ThrottledPct))
			m.onChange(false, "")
		case v.Starved && now.Sub(refreshed) >= m.cfg.Refresh:
			refreshed = now
			m.onChange(true, reason)
		}
		due = now.Add(m.cfg.Interval)
		t.Reset(m.cfg.Interval)
	}
}

func (m *Monitor) record(s Sample) {
	if m.met == nil {
		return
	}
	m.met.SchedLatencyP99.Set(s.SchedP99.Seconds())
	if s.Throttle.Known {
		m.met.CPUPeriods.Add(float64(s.Throttle.Periods))
		m.met.CPUThrottledPeriods.Add(float64(s.Throttle.ThrottledPeriods))
		m.met.CPUThrottledSeconds.Add(s.Throttle.ThrottledTime.Seconds())
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
