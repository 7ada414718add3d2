package chaos

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/taskd/taskd/internal/harness"
)

// schedEvery is the campaign schedule's interval. It is longer than any
// leaderless gap the faults make (a new leader within about 5 s, and the
// cluster whole again before the next fault), so only one tick is ever due
// when a new leader takes over, and every tick must fire exactly once:
// fired by the leader at the tick, or caught up by its successor.
const schedEvery = 10 * time.Second

const schedName = "chaos-tick"

// startSchedule creates the campaign's schedule (a noop task per tick) and
// remembers its anchor. It keeps the last 1000 tasks, so that every tick's
// task is still there to count at the end.
func (r *run) startSchedule() error {
	out, err := r.ctl("schedule", "create", schedName, "--every", schedEvery.String(), "noop", "--overlap", "allow", "--keep-last", "1000", "-o", "json")
	if err != nil {
		return fmt.Errorf("create schedule: %w", err)
	}
	var sc struct {
		Created time.Time `json:"created"`
	}
	if err := json.Unmarshal([]byte(out), &sc); err != nil || sc.Created.IsZero() {
		return fmt.Errorf("schedule create -o json: %v: %s", err, strings.TrimSpace(out))
	}
	r.schedAnchor = sc.Created.Truncate(time.Second)
	return nil
}

// checkTicks waits for the latest tick before now to be made, then checks
// every tick since the schedule's creation: exactly one task each. A tick
// with no task is lost, one with two is doubled; both are violations.
func (r *run) checkTicks() {
	if r.schedAnchor.IsZero() {
		return
	}
	first := harness.NextTick(r.schedAnchor, schedEvery, 0, r.schedAnchor)
	last := harness.NextTick(r.schedAnchor, schedEvery, 0, time.Now()).Add(-schedEvery)
	var made map[int64]int
	err := waitCond(time.Minute, 500*time.Millisecond, func() bool {
		m, err := r.ticksMade()
		made = m
		return err == nil && m[last.UnixNano()] > 0
	})
	if err != nil {
		r.violation("schedule tick %s never fired: %v", last.Format(time.TimeOnly), err)
	}
	got := harness.CountTicks(made, r.schedAnchor, schedEvery, first, last)
	r.mu.Lock()
	r.rep.Ticks, r.rep.TicksLost, r.rep.TicksDoubled = got.Fired, got.Missed, got.Doubled
	r.mu.Unlock()
	for _, t := range got.MissedAt {
		r.violation("schedule tick %s made no task", t.Format(time.TimeOnly))
	}
	for _, t := range got.DoubledAt {
		r.violation("schedule tick %s made %d tasks", t.Format(time.TimeOnly), made[t.UnixNano()])
	}
}

// ticksMade counts the distinct tasks of the campaign's schedule per tick.
func (r *run) ticksMade() (map[int64]int, error) {
	tasks, err := r.listTasks()
	if err != nil {
		return nil, err
	}
	out := map[int64]int{}
	for _, t := range tasks {
		if t.Schedule == schedName && t.Tick != nil {
			out[t.Tick.UnixNano()]++
		}
	}
	return out, nil
}
