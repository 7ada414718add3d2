package schedule

import (
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/task"
)

// view is what the leader knows of one schedule when it decides.
type view struct {
	sc *Schedule
	tt *Timetable
	st *State // never nil: a fresh one (version 0) before the first tick
	// open are the unfinished tasks the schedule made.
	open []*task.Record
	// triggers are its pending trigger requests, oldest first.
	triggers []trigger
}

type trigger struct {
	key, id   string
	version   int64
	requested time.Time
}

// action is one decision: at most one task to create and one state to
// write, in one fenced transaction.
type action struct {
	next   *State // state to write; nil: nothing to write
	create *made  // task to create with it
	// dropTrigger is the trigger key consumed by this action.
	dropTrigger *trigger
	// cancel lists previous tasks to cancel (cancel-previous), after
	// the write.
	cancel []string
	// logs are told after the write succeeded, one line each.
	logs []logLine
}

type made struct {
	id      string
	tick    time.Time
	trigger string
}

type logLine struct {
	msg   string
	event events.Kind
	attrs []any
}

// maxDue bounds the walk over ticks missed during a long outage.
const maxDue = 10000

// plan decides the next step for v at now. since is when this leader
// started firing: a tick due before it came due while no leader ran. It
// returns a zero action when nothing is to be done, and when the clock
// alone makes the next step due (zero: only an event can).
func plan(v view, now, since time.Time) (action, time.Time) {
	sc, st := v.sc, v.st
	log := func(msg string, event events.Kind, attrs ...any) logLine {
		out := []any{"schedule", sc.Name}
		for i := 0; i+1 < len(attrs); i += 2 {
			switch v := attrs[i+1].(type) {
			case string:
				if v == "" {
					continue // no empty attributes (a tick has no trigger)
				}
			case time.Time:
				attrs[i+1] = v.UTC().Format(time.RFC3339Nano)
			}
			out = append(out, attrs[i], attrs[i+1])
		}
		return logLine{msg: msg, event: event, attrs: out}
	}

	// 1. A pending tick runs once the previous tasks have ended.
	if p := st.Pending; p != nil && !sc.Paused {
		if len(v.open) == 0 {
			next := st.clone()
			next.Pending = nil
			id := tickID(sc, p.Tick, p.Trigger)
			out := Fired
			if p.Trigger != "" {
				out = Triggered
			}
			next.addRun(Run{Tick: p.Tick, At: now, Outcome: out, Task: id, Trigger: p.Trigger, Reason: "waited for the previous run to end"})
			next.Made = append(next.Made, id)
			return action{next: next, create: &made{id: id, tick: p.Tick, trigger: p.Trigger},
				logs: []logLine{log("schedule fired a waiting tick", events.ScheduleFired, "tick", p.Tick, "task", id, "waited", now.Sub(p.Tick).Round(time.Millisecond).String())}}, time.Time{}
		}
		if sc.Overlap == OverlapCancelPrevious {
			if ids := uncancelled(v.open); len(ids) > 0 {
				return action{cancel: ids}, time.Time{}
			}
		}
	}

	// 2. Triggers, oldest first; they run while paused too.
	if len(v.triggers) > 0 {
		tr := v.triggers[0]
		if st.handled(tr.id) {
			// The same request again: consume it, run nothing.
			return action{next: st.clone(), dropTrigger: &tr}, time.Time{}
		}
		a := startTick(v, now, tr.requested, &tr, Triggered, log)
		a.next.addTrigger(tr.id)
		return a, time.Time{}
	}
	if sc.Paused {
		return action{}, time.Time{}
	}

	// 3. Ticks that are due, from the latest decided one this leader's
	// clock can vouch for.
	var a action
	if st.LastTick.After(now.Add(skewTolerance)) && st.LastTick.After(sc.Since) {
		next, msg, attrs := rewind(sc, st, now)
		a = action{next: next, logs: []logLine{log(msg, events.ScheduleClockBehind, attrs...)}}
		v.st, st = next, next
	}
	if since.After(now) {
		since = time.Time{} // read from a clock that was stepped: says nothing
	}
	lower := sc.Since
	if st.LastTick.After(lower) {
		lower = st.LastTick
	}
	var due []time.Time
	var stood time.Time // latest due tick that already made its task
	t := v.tt.Next(lower)
	for n := 0; !t.IsZero() && !t.Add(sc.JitterOf(t)).After(now); n++ {
		if st.madeAhead(t) {
			stood = t
			t = v.tt.Next(t)
			continue
		}
		if n == maxDue {
			// A long outage: ticks older than the catch-up window are
			// missed anyway; count them as "at least".
			due = due[len(due)-1:]
			jump := now.Add(-time.Duration(sc.CatchUp) - MaxJitter - time.Second)
			if jump.After(t) {
				t = v.tt.Next(jump)
				n = 0
				continue
			}
		}
		due = append(due, t)
		t = v.tt.Next(t)
	}
	wake := time.Time{}
	if !t.IsZero() {
		wake = t.Add(sc.JitterOf(t))
	}
	if len(due) == 0 || stood.After(due[len(due)-1]) {
		// Every due tick made its task already (before a clock step),
		// or only older ones are left: they are decided; move past them.
		if !stood.IsZero() {
			a = pastStood(a, st, lower, stood, due, now, log)
		}
		return a, wake
	}
	latest := due[len(due)-1]
	fire := latest.Add(sc.JitterOf(latest))
	var missed []time.Time
	if len(due) > 1 {
		missed = due[:len(due)-1]
	}
	late := fire.Before(since)
	if late && now.Sub(fire) > time.Duration(sc.CatchUp) {
		missed = due
	}
	if len(missed) > 0 {
		next := st.clone()
		first, last := missed[0], missed[len(missed)-1]
		reason := fmt.Sprintf("not fired at its time (no leader, or the store was unavailable) and older than the catch-up window %v", time.Duration(sc.CatchUp))
		if len(missed) < len(due) {
			reason = "not fired at its time (no leader, or the store was unavailable); only the latest due tick runs"
		}
		next.addRun(Run{Tick: last, At: now, Outcome: Missed, Count: len(missed), After: lower, Reason: reason})
		next.LastTick = last
		next.pruneAhead()
		a = action{next: next, logs: append(a.logs, log("schedule missed ticks", events.ScheduleMissed, "count", len(missed),
			"first", first, "last", last, "reason", reason))}
		if len(missed) == len(due) {
			return a, wake
		}
		v.st = next
	}
	outcome := Fired
	if late {
		outcome = CaughtUp
	}
	b := startTick(v, now, latest, nil, outcome, log)
	b.logs = append(a.logs, b.logs...)
	return b, wake
}

// startTick applies the overlap policy to a tick (or a trigger, tr) that
// is due now.
func startTick(v view, now, tick time.Time, tr *trigger, outcome Outcome, log func(string, events.Kind, ...any) logLine) action {
	sc := v.sc
	next := v.st.clone()
	trigID := ""
	if tr != nil {
		trigID = tr.id
	} else {
		next.LastTick = tick
		next.pruneAhead()
	}
	a := action{next: next, dropTrigger: tr}
	run := Run{Tick: tick, At: now, Trigger: trigID}
	event := map[Outcome]events.Kind{Fired: events.ScheduleFired, CaughtUp: events.ScheduleCaughtUp, Triggered: events.ScheduleFired}[outcome]
	if len(v.open) == 0 || sc.Overlap == OverlapAllow {
		id := tickID(sc, tick, trigID)
		run.Outcome, run.Task = outcome, id
		if outcome == CaughtUp {
			run.Reason = fmt.Sprintf("no leader ran at the tick; run %v late, within the catch-up window %v", now.Sub(tick).Round(time.Millisecond), time.Duration(sc.CatchUp))
		}
		next.addRun(run)
		next.Made = append(next.Made, id)
		a.create = &made{id: id, tick: tick, trigger: trigID}
		a.logs = append(a.logs, log("schedule fired", event, "tick", tick, "task", id, "trigger", trigID,
			"late", now.Sub(tick.Add(sc.JitterOf(tick))).Round(time.Millisecond).String()))
		return a
	}
	prev := v.open[len(v.open)-1]
	busy := fmt.Sprintf("previous run %s is %s", prev.ID, prev.State)
	skip := func(reason string) action {
		run.Outcome, run.Reason = Skipped, reason
		next.addRun(run)
		a.logs = append(a.logs, log("schedule skipped a tick", events.ScheduleSkipped, "tick", tick, "trigger", trigID, "reason", reason))
		return a
	}
	switch sc.Overlap {
	case OverlapSkip:
		return skip(busy + " (overlap policy skip)")
	case OverlapBufferOne:
		if next.Pending != nil {
			return skip(fmt.Sprintf("%s and the tick of %s already waits (overlap policy buffer-one)", busy, next.Pending.Tick.UTC().Format(time.RFC3339)))
		}
	case OverlapCancelPrevious:
		if p := next.Pending; p != nil {
			next.addRun(Run{Tick: p.Tick, At: now, Outcome: Skipped, Trigger: p.Trigger, Reason: "a newer tick replaced it (overlap policy cancel-previous)"})
			a.logs = append(a.logs, log("schedule skipped a tick", events.ScheduleSkipped, "tick", p.Tick, "trigger", p.Trigger,
				"reason", "a newer tick replaced it (overlap policy cancel-previous)"))
		}
		a.cancel = uncancelled(v.open)
	}
	next.Pending = &Pending{Tick: tick, Trigger: trigID}
	run.Outcome, run.Reason = Buffered, busy+" (overlap policy "+string(sc.Overlap)+"): runs when it ends"
	next.addRun(run)
	a.logs = append(a.logs, log("schedule tick waits for the previous run", events.ScheduleBuffered, "tick", tick, "trigger", trigID, "reason", run.Reason))
	return a
}

func tickID(sc *Schedule, tick time.Time, trigger string) string {
	if trigger != "" {
		return TriggerTaskID(sc.UID, trigger)
	}
	return TickTaskID(sc.UID, tick)
}

// uncancelled lists the open tasks no cancel was asked of yet.
func uncancelled(open []*task.Record) []string {
	var ids []string
	for _, r := range open {
		if r.Request != task.RequestCancel {
			ids = append(ids, r.ID)
		}
	}
	return ids
}

// sortOpen orders a schedule's open tasks by tick, then creation.
func sortOpen(open []*task.Record) {
	slices.SortFunc(open, func(a, b *task.Record) int {
		if c := a.Tick.Compare(b.Tick); c != 0 {
			return c
		}
		return a.Created.Compare(b.Created)
	})
}

func (l logLine) emit(log *slog.Logger) {
	log.Info(l.msg, append([]any{l.event.Attr()}, l.attrs...)...)
}
