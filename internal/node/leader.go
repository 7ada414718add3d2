package node

import (
	"context"
	"fmt"

	"github.com/taskd/taskd/internal/quorum"
	"golang.org/x/sync/errgroup"
)

// leaderPart is one component of the leader role (dispatcher, schedule
// ticker, VIP assigner...).
type leaderPart struct {
	name string
	run  func(ctx context.Context, l *quorum.Leadership) error
}

// leaderRole runs parts together for one leadership, as one errgroup. The
// first part to fail cancels the others and, once every part has returned,
// ends the role with its error: the election then resigns, so that a node
// whose dispatcher or VIP assigner is dead hands the lead on instead of
// keeping it. A part that returns nil has simply nothing left to do; the
// others go on. The role returns only after every part has returned, so the
// fence that cancels it also waits for all of them.
func leaderRole(parts []leaderPart) func(ctx context.Context, l *quorum.Leadership) error {
	return func(ctx context.Context, l *quorum.Leadership) error {
		g, gctx := errgroup.WithContext(ctx)
		for _, p := range parts {
			g.Go(func() error {
				if err := p.run(gctx, l); err != nil {
					return fmt.Errorf("%s: %w", p.name, err)
				}
				return nil
			})
		}
		return g.Wait()
	}
}
