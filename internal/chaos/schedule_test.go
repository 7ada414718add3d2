package chaos

import (
	"fmt"
	"testing"
	"time"
)

// TestScheduleReplays: two campaigns of one seed draw the same faults in
// the same order with the same pauses, and each fault's own choices
// start the same, even when the faults before drew different counts from
// their own sources (as a fault that asks who leads does). Another seed
// draws another schedule.
func TestScheduleReplays(t *testing.T) {
	kinds := []string{faultKillLeader, faultKill, faultStop, faultPartition, faultStoreLeader, faultClock, faultZKKill, faultStarve}
	type fault struct {
		kind  string
		gap   time.Duration
		first uint64 // the fault's own first draw
	}
	draw := func(seed uint64, spent func(i int) int) []fault {
		s := newSchedule(seed, kinds)
		var out []fault
		for i := 1; i <= 50; i++ {
			kind, own, gap := s.next(i)
			out = append(out, fault{kind, gap, own.Uint64()})
			for range spent(i) { // what the cluster made this fault draw
				own.Uint64()
			}
		}
		return out
	}
	a := draw(7, func(int) int { return 0 })
	b := draw(7, func(i int) int { return i * 3 % 11 })
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("seed 7, fault %d: %+v in one campaign, %+v in the other", i+1, a[i], b[i])
		}
	}
	c := draw(8, func(int) int { return 0 })
	if fmt.Sprint(a) == fmt.Sprint(c) {
		t.Fatalf("seeds 7 and 8 drew the same schedule")
	}
	// Each fault's own source is its own: faults of one kind do not all
	// pick the same node.
	own := map[uint64]int{}
	for i, f := range a {
		if j, ok := own[f.first]; ok {
			t.Fatalf("faults %d and %d drew the same first number from their own sources", j+1, i+1)
		}
		own[f.first] = i
	}
	seen := map[string]bool{}
	for _, f := range a {
		seen[f.kind] = true
		if f.gap < 500*time.Millisecond || f.gap >= 1500*time.Millisecond {
			t.Errorf("pause %v out of [0.5 s, 1.5 s)", f.gap)
		}
	}
	if len(seen) != len(kinds) {
		t.Errorf("50 faults drew the kinds %v of %v", seen, kinds)
	}
}
