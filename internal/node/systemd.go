package node

import (
	"context"
	"fmt"
	"time"

	"github.com/taskd/taskd/internal/sdnotify"
)

// notifySystemd tells systemd (Type=notify) when the node has joined
// (READY=1), what it is doing (STATUS=), that its main loop is alive
// (WATCHDOG=1), and that it is stopping. It does nothing outside systemd.
//
// The watchdog follows the node's own liveness, not the store's: a node
// that waits for a lost coordinator is healthy and must not be killed, or
// systemd would turn a store outage into the crash loop of the seed. A
// ping is sent only after the quorum's state has been read, which catches
// a deadlocked main loop.
func (n *Node) notifySystemd(ctx context.Context) {
	sd := sdnotify.FromEnv()
	if sd == nil {
		return
	}
	var tick <-chan time.Time
	if iv, ok := sdnotify.WatchdogInterval(); ok {
		t := time.NewTicker(iv / 2)
		defer t.Stop()
		tick = t.C
	}
	// A lost ping or READY makes systemd kill or time out the unit, so a
	// failed send is worth a warning with its cause.
	send := func(msgs ...string) {
		if err := sd.Send(msgs...); err != nil {
			n.log.Warn("systemd notify failed", "msgs", msgs, "err", err)
		}
	}
	ready := false
	var changed <-chan struct{}
	started := n.quorumStarted
	for {
		q := n.q.Load()
		if q != nil {
			v, ch := q.View()
			changed = ch
			status := fmt.Sprintf("STATUS=session %s, leader %q, epoch %d", v.Session, v.Leader, v.Epoch)
			msgs := []string{status}
			if v.Ready && !ready {
				ready = true
				msgs = append(msgs, sdnotify.Ready)
				n.log.Info("told systemd the node is ready")
			}
			send(msgs...)
		}
		select {
		case <-ctx.Done():
			send(sdnotify.Stopping, "STATUS=stopping")
			return
		case <-changed:
		case <-tick:
			// Read the quorum's state before each ping: if that blocks
			// (a deadlocked main loop), this loop blocks with it, the
			// pings stop and systemd restarts the process.
			if q := n.q.Load(); q != nil {
				q.View()
			}
			send(sdnotify.Watchdog)
			continue
		case <-started:
			started = nil // closed once: look at the new quorum, then stop selecting it
		}
	}
}
