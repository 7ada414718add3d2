package schedule_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/schedule"
	"github.com/taskd/taskd/internal/testenv"
)

// TestLeaderClockStep: the leader's wall clock jumps 5 minutes ahead for
// a moment, as an NTP step would, and comes back. The leader fires the
// tick its clock says is due (early), and once the clock is back the
// next real ticks fire on time: the step signal plans every schedule
// again and the state decided ahead of the clock is rewound. Before, the
// schedule stayed silent until real time caught up with the early tick.
func TestLeaderClockStep(t *testing.T) {
	const every = 2 * time.Second
	for _, b := range testenv.Backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			root, check, tasks, scs := openStores(t, b)
			var offset atomic.Int64
			now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
			steps := make(chan struct{}, 1)
			m := startMemberClock(t, b, root, "n1", now, steps)
			leaderOf(t, []*member{m}, 0)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			sc, err := scs.Create(ctx, schedule.CreateRequest{Name: "tick", Spec: schedule.Spec{Every: every.String()},
				Template: schedule.Template{Type: "noop"}, Overlap: "allow", KeepLast: 1000})
			if err != nil {
				t.Fatal(err)
			}
			anchor := sc.Created.Truncate(time.Second)
			nextTick := func(after time.Time) time.Time { return anchor.Add((after.Sub(anchor)/every + 1) * every) }
			waitTicks(ctx, t, check, tasks.Layout(), "tick", nextTick(time.Now()))

			// Step ahead; the leader fires a tick about 5 minutes early.
			ahead := 5 * time.Minute
			offset.Store(int64(ahead))
			steps <- struct{}{}
			waitTicks(ctx, t, check, tasks.Layout(), "tick", nextTick(time.Now().Add(ahead)).Add(-every))

			// Step back: the next two real ticks fire at their time.
			offset.Store(0)
			steps <- struct{}{}
			back := time.Now()
			for _, tick := range []time.Time{nextTick(back), nextTick(back).Add(every)} {
				wctx, wcancel := context.WithDeadline(ctx, tick.Add(1500*time.Millisecond))
				err := testenv.WaitFor(wctx, 50*time.Millisecond, func() bool {
					return ticksMade(ctx, t, check, tasks.Layout(), "tick")[tick.UnixNano()] == 1
				})
				wcancel()
				if err != nil {
					t.Fatalf("tick %s after the clock came back: not fired within 1.5 s: %v", tick.Format(time.TimeOnly), err)
				}
			}
		})
	}
}
