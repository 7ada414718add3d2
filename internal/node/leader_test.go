package node

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/testenv"
)

var errInjected = errors.New("injected component failure")

// TestLeaderRoleFailureResigns plays a leader component that fails (a
// dispatcher whose store writes keep failing, say) on the preferred node:
// the node's leader role must end with that error, so the election resigns
// and another node leads, instead of a leader that holds the lead with a
// dead component. Real quorum on every real backend.
func TestLeaderRoleFailureResigns(t *testing.T) {
	for _, b := range testenv.Backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			root := "/taskd/leaderfail" + b.Name
			var failures atomic.Int32
			// n1 is preferred; its assigner-like part fails once, at once.
			failOnce := leaderPart{name: "failing part", run: func(ctx context.Context, l *quorum.Leadership) error {
				if failures.Add(1) == 1 {
					return errInjected
				}
				<-ctx.Done()
				return nil
			}}
			var stopped atomic.Int32 // parts of n1 that saw their context end
			blocking := leaderPart{name: "blocking part", run: func(ctx context.Context, l *quorum.Leadership) error {
				<-ctx.Done()
				stopped.Add(1)
				return nil
			}}
			n1 := startMember(t, b.Open(t), "n1", root, 10, leaderRole([]leaderPart{blocking, failOnce}))
			idle := leaderPart{name: "idle part", run: func(ctx context.Context, l *quorum.Leadership) error { <-ctx.Done(); return nil }}
			n2 := startMember(t, b.Open(t), "n2", root, 1, leaderRole([]leaderPart{idle}))
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			// n2 may lead first, while n1 is still joining (CI saw it):
			// what counts is that it leads after n1's role has failed.
			if err := testenv.WaitFor(ctx, 20*time.Millisecond, func() bool {
				v, _ := n2.View()
				return failures.Load() >= 1 && v.Leader == "n2"
			}); err != nil {
				v1, _ := n1.View()
				t.Fatalf("n2 never led after n1's leader component failed (n1 sees leader %q, %d failures): %v", v1.Leader, failures.Load(), err)
			}
			if failures.Load() < 1 || stopped.Load() < 1 {
				t.Fatalf("failures %d, parts stopped %d: the failing role did not stop its other parts", failures.Load(), stopped.Load())
			}
		})
	}
}

// startMember runs one quorum member with the given leader role until the
// test ends.
func startMember(t *testing.T, store coord.Store, name, root string, prio int, lead func(context.Context, *quorum.Leadership) error) *quorum.Quorum {
	t.Helper()
	cfg := quorum.DefaultConfig()
	cfg.Name, cfg.NodeID, cfg.Address, cfg.Priority, cfg.Root = name, "id-"+name, name+":1", prio, root
	cfg.SessionTimeout = 2 * time.Second
	cfg.FenceBudget = 300 * time.Millisecond
	cfg.YieldGrace = time.Second
	cfg.CampaignStagger = 500 * time.Millisecond
	q, err := quorum.New(cfg, store, quorum.Roles{Leader: lead}, slog.Default().With("test", t.Name()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return q
}
