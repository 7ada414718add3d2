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
func TestPlanClockStep(t *testing.T) {
	start := utc("2026-01-01T00:00:00Z")
	const hold = 5 * time.Second
	for _, step := range []time.Duration{0, 45 * time.Second, -45 * time.Second, 393 * time.Second, -393 * time.Second, 600 * time.Second, -600 * time.Second} {
		t.Run(fmt.Sprint(step), func(t *testing.T) {
			sc := testSchedule(t, Spec{Every: "10s"}, OverlapAllow, start)
			sc.CatchUp = Duration(time.Minute)
			st := &State{UID: sc.UID, Name: sc.Name}
			made := map[string]time.Time{} // task id -> real time made
			perTick := map[time.Time]int{} // tick -> creations
			stepAt, end := start.Add(2*time.Minute), start.Add(4*time.Minute)
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
		})
	}
}
