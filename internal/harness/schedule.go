package harness

import (
	"context"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
)

// TicksMade counts the distinct tasks of schedule name per tick (unix
// nanoseconds), finished ones included, as node n reports them. A task
// that finishes while the listing reads it can appear twice (unfinished
// and finished): it counts once.
func TicksMade(ctx context.Context, n *Node, name string) (map[int64]int, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	r, err := n.client.Tasks.ListTasks(ctx, connect.NewRequest(&taskdv1.ListTasksRequest{Status: "all"}))
	if err != nil {
		return nil, err
	}
	out := map[int64]int{}
	seen := map[string]bool{}
	for _, t := range r.Msg.Tasks {
		if t.Schedule == name && t.Tick != nil && !seen[t.Id] {
			seen[t.Id] = true
			out[t.Tick.AsTime().UnixNano()]++
		}
	}
	return out, nil
}

// NextTick is the first tick anchor + k·every at least lead after now.
func NextTick(anchor time.Time, every, lead time.Duration, now time.Time) time.Time {
	t := anchor.Add((now.Sub(anchor)/every + 1) * every)
	for t.Sub(now) < lead {
		t = t.Add(every)
	}
	return t
}

// TickCount is what became of a schedule's ticks over a span.
type TickCount struct {
	Fired, Missed, Doubled int
	// MissedAt and DoubledAt list the ticks that went wrong.
	MissedAt, DoubledAt []time.Time
}

// CountTicks checks every tick anchor + k·every in [first, last] against
// made: exactly one task each.
func CountTicks(made map[int64]int, anchor time.Time, every time.Duration, first, last time.Time) TickCount {
	var c TickCount
	for t := NextTick(anchor, every, 0, first.Add(-time.Nanosecond)); !t.After(last); t = t.Add(every) {
		switch n := made[t.UnixNano()]; {
		case n == 0:
			c.Missed++
			c.MissedAt = append(c.MissedAt, t)
		case n > 1:
			c.Doubled++
			c.DoubledAt = append(c.DoubledAt, t)
		default:
			c.Fired++
		}
	}
	return c
}
