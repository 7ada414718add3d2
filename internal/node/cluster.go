package node

import (
	"context"
	"fmt"

	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/schedule"
	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/vips"
)

// The node as the API sees it (api.Cluster). The stores are nil until the
// node has opened the coordination store; each is bound to the cluster's
// store root (Config.Root).

// View implements api.Cluster.
func (n *Node) View() quorum.View {
	if q := n.q.Load(); q != nil {
		v, _ := q.View()
		return v
	}
	return quorum.View{Self: n.cfg.Name, Session: coord.StateConnecting.String(), JoinError: *n.wait.Load(),
		Timeout: n.cfg.SessionTimeout, DeadlineFraction: n.cfg.DeadlineFraction}
}

// Ready implements api.Cluster.
func (n *Node) Ready() bool {
	q := n.q.Load()
	return q != nil && q.Ready()
}

// SetPriority implements api.Cluster.
func (n *Node) SetPriority(ctx context.Context, node string, priority int, force bool) error {
	q := n.q.Load()
	if q == nil {
		return fmt.Errorf("node is not connected to the coordinator yet: %w", coord.ErrUnavailable)
	}
	return q.SetPriority(ctx, node, priority, force)
}

// SetSpecified implements api.Cluster.
func (n *Node) SetSpecified(ctx context.Context, names []string, force bool) error {
	q := n.q.Load()
	if q == nil {
		return fmt.Errorf("node is not connected to the coordinator yet: %w", coord.ErrUnavailable)
	}
	return q.SetSpecified(ctx, names, force)
}

// Events implements api.Cluster.
func (n *Node) Events() *events.Recorder { return n.events }

// VIPs implements api.Cluster.
func (n *Node) VIPs() *vips.Registry { return n.vipReg.Load() }

// TaskStore implements api.Cluster.
func (n *Node) TaskStore() *task.Store { return n.tasks.Load() }

// Tokens implements api.Cluster.
func (n *Node) Tokens() *auth.Tokens { return n.tokens.Load() }

// EventRings implements api.Cluster.
func (n *Node) EventRings() *events.Rings { return n.rings.Load() }

// Schedules implements api.Cluster.
func (n *Node) Schedules() *schedule.Store { return n.scheds.Load() }

// Coordinator implements api.Cluster.
func (n *Node) Coordinator() string { return n.target.String() }
