package quorum_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/testenv"
)

// testStarvedLeader: a starved leader advertises priority 0 and hands over
// at once (well before the yield grace), exactly once; it does not win the
// leadership back while starved, and not after it recovers either when the
// priorities are equal (no carousel).
func testStarvedLeader(t *testing.T, b backend) {
	r := root()
	var nodes []*node
	for i := range 3 {
		cfg := testConfig(fmt.Sprintf("n%d", i+1), r, 100)
		cfg.YieldGrace = 6 * time.Second
		nodes = append(nodes, startNode(t, b.Dial(t, b.Addr), cfg))
	}
	leader, epoch := waitLeader(t, nodes, 15*time.Second)
	var starved *node
	for _, n := range nodes {
		if n.name == leader {
			starved = n
		}
	}
	const reason = "throttled 83% of periods in the last minute by its CPU quota; heartbeats up to 2.1 s late"
	start := time.Now()
	starved.q.SetStarved(true, reason)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var next string
	if err := testenv.WaitFor(ctx, 20*time.Millisecond, func() bool {
		next = ""
		for _, n := range nodes {
			v := n.view()
			if v.Leader == "" || v.Leader == leader || (next != "" && v.Leader != next) {
				return false
			}
			next = v.Leader
		}
		return true
	}); err != nil {
		t.Fatalf("starved leader %s did not hand over: %v", leader, err)
	}
	if el := time.Since(start); el >= 6*time.Second {
		t.Fatalf("handover took %v, not before the yield grace of 6s", el)
	}
	v := nodes[0].view()
	if v.Epoch != epoch+1 {
		t.Fatalf("epoch %d -> %d, want one handover", epoch, v.Epoch)
	}
	// The member record comes by its own watch, which may trail the
	// leader record's: wait for it to say starved.
	var last string
	if err := testenv.WaitFor(ctx, 20*time.Millisecond, func() bool {
		for _, m := range nodes[0].view().Members {
			if m.Name == leader {
				last = fmt.Sprintf("%+v", m)
				return m.Starved && m.StarvedReason == reason && m.CurrentPriority == 0
			}
		}
		return false
	}); err != nil {
		t.Fatalf("starved member record %s: %v", last, err)
	}
	// While starved, and after recovering with equal priority, the
	// leadership stays where it went.
	hold := func(d time.Duration, what string) {
		hctx, hcancel := context.WithTimeout(context.Background(), d)
		defer hcancel()
		if err := testenv.WaitFor(hctx, 20*time.Millisecond, func() bool {
			for _, n := range nodes {
				if v := n.view(); v.Leader != next || v.Epoch != epoch+1 {
					return true
				}
			}
			return false
		}); err == nil {
			t.Fatalf("leadership moved %s: %s epoch %d", what, nodes[0].view().Leader, nodes[0].view().Epoch)
		}
	}
	hold(8*time.Second, "while the old leader was starved (past its yield grace)")
	starved.q.SetStarved(false, "")
	if err := testenv.WaitFor(ctx, 20*time.Millisecond, func() bool {
		for _, m := range nodes[0].view().Members {
			if m.Name == leader {
				return !m.Starved && m.CurrentPriority == 100
			}
		}
		return false
	}); err != nil {
		t.Fatalf("recovered member record not restored: %v", err)
	}
	hold(8*time.Second, "after the old leader recovered with an equal priority")
}
