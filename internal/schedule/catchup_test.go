package schedule_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/schedule"
	"github.com/taskd/taskd/internal/testenv"
)

// TestNewLeaderWithManySchedulesCatchesUp: with 10 000 schedules stored,
// a leader that starts right after a tick came due (no leader ran at it)
// fires that tick late, caught up, before the schedule's next tick. A
// leader that needs longer than one interval to take the schedules in
// finds two ticks due and runs only the latest: the first is lost. That
// is what killing the leader at a tick did on ZooKeeper with 10 000 idle
// schedules stored, where a new leader read every record twice and
// compiled each spec twice (loading its time zone file each time).
func TestNewLeaderWithManySchedulesCatchesUp(t *testing.T) {
	const idle = 10000
	every := 2 * time.Second
	if raceEnabled {
		// The race detector makes the start-up several times slower
		// (over 2 s on either store); the check stays, with a looser
		// bound.
		every = 10 * time.Second
	}
	for _, b := range testenv.Backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			root, check, tasks, scs := openStores(t, b)
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			// Daily schedules in a few zones, none due during the test.
			zones := []string{"Europe/Berlin", "America/New_York", "Asia/Shanghai", "Australia/Sydney"}
			hour := (time.Now().UTC().Hour() + 6) % 24
			sem := make(chan struct{}, 32)
			var wg sync.WaitGroup
			errs := make(chan error, 1)
			for i := range idle {
				sem <- struct{}{}
				wg.Add(1)
				go func() {
					defer func() { <-sem; wg.Done() }()
					_, err := scs.Create(ctx, schedule.CreateRequest{Name: fmt.Sprintf("idle-%05d", i),
						Spec:     schedule.Spec{Cron: fmt.Sprintf("%d %d * * *", i%60, hour), Zone: zones[i%len(zones)]},
						Template: schedule.Template{Type: "noop"}})
					if err != nil {
						select {
						case errs <- err:
						default:
						}
					}
				}()
			}
			wg.Wait()
			select {
			case err := <-errs:
				t.Fatal(err)
			default:
			}
			sc, err := scs.Create(ctx, schedule.CreateRequest{Name: "tick", Spec: schedule.Spec{Every: every.String()},
				Template: schedule.Template{Type: "noop"}, Overlap: "allow"})
			if err != nil {
				t.Fatal(err)
			}
			// The first tick comes due with no leader; one starts right
			// after it.
			first := sc.Created.Truncate(time.Second).Add(every)
			timer := time.NewTimer(time.Until(first))
			<-timer.C
			m := startMember(t, b, root, "n1")
			leaderOf(t, []*member{m}, 0)
			elected := time.Now()
			waitTicks(ctx, t, check, tasks.Layout(), sc.Name, first.Add(every))
			_, st, err := scs.Get(ctx, sc.Name)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range st.Runs {
				if r.Tick.Equal(first) && r.Outcome != schedule.CaughtUp {
					t.Errorf("tick %s due before the leader started: %s (%s), want caught up", first.Format(time.TimeOnly), r.Outcome, r.Reason)
				}
			}
			made := ticksMade(ctx, t, check, tasks.Layout(), sc.Name)
			if made[first.UnixNano()] != 1 {
				t.Errorf("tick %s: %d tasks, want 1 (the leader was elected %v after it, %d schedules stored)",
					first.Format(time.TimeOnly), made[first.UnixNano()], elected.Sub(first).Round(time.Millisecond), idle+1)
			}
		})
	}
}
