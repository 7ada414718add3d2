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
// ping is sent only if the quorum's state can be read within half the
// interval, which catches a deadlocked main loop.
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
			if n.mainLoopAlive(ctx) {
				send(sdnotify.Watchdog)
			} else {
				n.log.Error("main loop did not answer; withholding the systemd watchdog ping")
			}
			continue
		case <-started:
			started = nil // closed once: look at the new quorum, then stop selecting it
		}
	}
}

// mainLoopAlive reads the quorum's state with a deadline. If the read hangs
// its goroutine stays blocked with the main loop; the missing ping then has
// systemd restart the process, which ends it.
func (n *Node) mainLoopAlive(ctx context.Context) bool {
	q := n.q.Load()
	if q == nil {
		return true // still starting the store; nothing can be stuck yet
	}
	done := make(chan struct{})
	go func() { q.View(); close(done) }()
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	case <-ctx.Done():
		return true
	}
}
