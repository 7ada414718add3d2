package schedule

import (
	"slices"
	"time"

	"github.com/taskd/taskd/internal/events"
)

// skewTolerance is how far the latest decided tick may lie ahead of the
// leader's clock before the leader distrusts the decision. Clocks of
// members kept by NTP differ by milliseconds; a larger lead means a wall
// clock was stepped (docs/schedules.md, "Clock steps").
const skewTolerance = time.Second

// rewind answers a state whose LastTick lies ahead of now: a leader with
// a clock ahead decided it (or this leader's clock went back). Only
// decisions this clock can vouch for stand: LastTick goes back to the
// latest tick at or before now that a remembered run decided, ticks after
// it that made a task (or were skipped or buffered) are kept in Ahead and
// never run again, and ticks declared missed after it are walked again
// when they come due by this clock.
//
// A missed run decided by a clock ahead of this one (its At is later than
// now) may stand for ticks that are due by now, declared missed before
// their time: the ticks at or before its After were decided before it, so
// the walk starts there and those due ticks are decided again.
func rewind(sc *Schedule, st *State, now time.Time) (*State, string, []any) {
	next := st.clone()
	from := time.Time{}
	later := func(t time.Time) {
		if t.After(from) {
			from = t
		}
	}
	for _, r := range st.Runs {
		if r.Trigger != "" {
			continue
		}
		switch {
		case r.Outcome == Missed && r.At.After(now.Add(skewTolerance)) && !r.After.IsZero():
			// Declared missed by a clock ahead, even if its ticks are
			// due by now: they are walked again.
			if !r.After.After(now) {
				later(r.After)
			}
		case !r.Tick.After(now):
			later(r.Tick)
		case r.Outcome != Missed:
			next.Ahead = append(next.Ahead, r.Tick)
		}
	}
	if from.IsZero() {
		// No run this clock can vouch for is remembered: walk from now,
		// so that nothing decided is replayed.
		from = now
	}
	if from.Before(sc.Since) {
		from = sc.Since
	}
	old := next.LastTick
	next.LastTick = from
	slices.SortFunc(next.Ahead, time.Time.Compare)
	next.Ahead = slices.CompactFunc(next.Ahead, time.Time.Equal)
	next.pruneAhead()
	return next, "schedule's latest tick is ahead of this leader's clock; walking again from the latest tick it can vouch for",
		[]any{"last_tick", old, "now", now, "ahead_by", old.Sub(now).Round(time.Millisecond).String(), "from", from, "made_ahead", len(next.Ahead)}
}

// madeAhead reports whether tick t already made its task ahead of time.
func (s *State) madeAhead(t time.Time) bool {
	return slices.ContainsFunc(s.Ahead, t.Equal)
}

// pruneAhead drops the ticks at or before LastTick from Ahead.
func (s *State) pruneAhead() {
	s.Ahead = slices.DeleteFunc(s.Ahead, func(t time.Time) bool { return !t.After(s.LastTick) })
	if len(s.Ahead) == 0 {
		s.Ahead = nil
	}
}

// pastStood moves LastTick past stood, the latest due tick that made its
// task ahead of time, when no newer tick is due. Due ticks older than it
// that made nothing are missed: a later tick already ran.
func pastStood(a action, st *State, lower, stood time.Time, due []time.Time, now time.Time, log func(string, events.Kind, ...any) logLine) action {
	next := st.clone()
	if len(due) > 0 {
		reason := "not fired at its time; a later tick already ran ahead of time (a leader's clock was ahead)"
		next.addRun(Run{Tick: due[len(due)-1], At: now, Outcome: Missed, Count: len(due), After: lower, Reason: reason})
		a.logs = append(a.logs, log("schedule missed ticks", events.ScheduleMissed, "count", len(due),
			"first", due[0], "last", due[len(due)-1], "reason", reason))
	}
	next.LastTick = stood
	next.pruneAhead()
	a.next = next
	a.logs = append(a.logs, log("schedule tick already made its task ahead of time; not fired again", events.ScheduleTickStood, "tick", stood))
	return a
}
