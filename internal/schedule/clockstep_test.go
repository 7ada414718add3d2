package schedule

import (
	"fmt"
	"testing"
	"time"
)

// TestPlanClockStep plays a leader whose wall clock is stepped for a few
// seconds, forward and back, against a 10 s interval schedule, deciding
// once per simulated 250 ms. Every tick that real time has passed must
// make exactly one task, none may be made twice, and a tick must not run
// later than the step lasted. Before the rewind (plan.go, clockstep.go)
// a forward step silenced the schedule until real time caught up with
// the tick the stepped clock had fired.
//
// The step comes two minutes after the schedule was made, 2 s before a
// tick (118 s), or before its first tick and ending just after it (first
// tick at 10 s, clock ahead from 5.5 s to 10.5 s). The last is the chaos
// campaign's seed 6 on ZooKeeper: the clock ahead declared the first
// ticks missed, and the rewind, finding no run at or before its clock,
// walked from "now", 0.5 s past the first tick, which then made no task.
// Short steps (15 s, 25 s) at 118 s are the review's case: the clock
// ahead declares tick 120 s missed before its time, and that run's tick is
// at or before the corrected clock when the rewind comes.
func TestPlanClockStep(t *testing.T) {
	start := utc("2026-01-01T00:00:00Z")
	const hold = 5 * time.Second
	for _, stepAfter := range []time.Duration{2 * time.Minute, 118 * time.Second, 5500 * time.Millisecond} {
		for _, step := range []time.Duration{0, 15 * time.Second, -15 * time.Second, 25 * time.Second, 45 * time.Second, -45 * time.Second, 393 * time.Second, -393 * time.Second, 600 * time.Second, -600 * time.Second} {
			t.Run(fmt.Sprintf("after %v step %v", stepAfter, step), func(t *testing.T) {
				planClockStep(t, start, start.Add(stepAfter), step, hold)
			})
		}
	}
}

func planClockStep(t *testing.T, start, stepAt time.Time, step, hold time.Duration) {
	sc := testSchedule(t, Spec{Every: "10s"}, OverlapAllow, start)
	sc.CatchUp = Duration(time.Minute)
	st := &State{UID: sc.UID, Name: sc.Name}
	made := map[string]time.Time{} // task id -> real time made
	perTick := map[time.Time]int{} // tick -> creations
	end := start.Add(4 * time.Minute)
	for real := start; real.Before(end); real = real.Add(250 * time.Millisecond) {
		now := real
		if !real.Before(stepAt) && real.Before(stepAt.Add(hold)) {
			now = real.Add(step)
		}
		for i := 0; ; i++ {
			if i == 10 {
				t.Fatalf("at %v: plan keeps writing", real)
			}
			a, _ := plan(testView(t, sc, st), now, start)
			if a.next == nil {
				break
			}
			if a.create != nil {
				if _, ok := made[a.create.id]; ok {
					t.Fatalf("at %v (clock %v): tick %v made again", real, now, a.create.tick)
				}
				made[a.create.id] = real
				perTick[a.create.tick]++
			}
			st = a.next
		}
	}
	for tick := start.Add(10 * time.Second); tick.Before(end.Add(-time.Second)); tick = tick.Add(10 * time.Second) {
		if n := perTick[tick]; n != 1 {
			t.Errorf("tick %v made %d tasks, want 1", tick.Format(time.TimeOnly), n)
			continue
		}
		at := made[TickTaskID(sc.UID, tick)]
		if late := at.Sub(tick); late > hold+time.Second {
			t.Errorf("tick %v ran %v late", tick.Format(time.TimeOnly), late)
		}
	}
}
