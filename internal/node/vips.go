package node

import (
	"context"
	"time"

	"github.com/taskd/taskd/internal/vip"
)

// vipConfig is the holder timing: one probe and 20 ms of listening (a host
// on the LAN answers within a millisecond or two), since a takeover waits
// for it; the announcement schedule is vip.DefaultConfig's.
func (n *Node) vipConfig() vip.Config {
	c := vip.DefaultConfig()
	c.ProbeCount, c.ProbeInterval, c.ProbeWait = 1, 20*time.Millisecond, 20*time.Millisecond
	c.Log = n.log
	return c
}

// cleanupVIPs removes configured VIPs this node left on its interfaces (a
// crash skips the removal); it runs before the node can lead.
func (n *Node) cleanupVIPs(specs []vip.Spec) {
	if len(specs) == 0 {
		return
	}
	labels := make([]string, len(specs))
	for i, s := range specs {
		labels[i] = s.Label()
	}
	removed, err := vip.Cleanup(labels)
	for _, r := range removed {
		n.log.Warn("removed a vip left from an earlier run", "address", r)
	}
	if err != nil {
		n.log.Error("cannot remove stale vips; they may answer until removed by hand", "err", err)
	}
}

// holdVIP holds one VIP until ctx ends. When it cannot (another host
// answers for the address, the interface is missing), it logs why and tries
// again with backoff: a leader never exits or resigns over a VIP.
func (n *Node) holdVIP(ctx context.Context, s vip.Spec) {
	holding := n.metrics.VIPHolding.WithLabelValues(s.Service)
	holding.Set(1)
	n.log.Info("taking the vip", "event", "vip_take", "service", s.Service, "vip", s.Prefix.String())
	defer func() {
		holding.Set(0)
		n.log.Info("vip released", "event", "vip_release", "service", s.Service, "vip", s.Prefix.String())
	}()
	wait := time.Second
	for {
		err := vip.Hold(ctx, s, n.vipConfig())
		if ctx.Err() != nil {
			return
		}
		n.log.Error("vip not held; retrying", "service", s.Service, "vip", s.Prefix.String(), "err", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, 30*time.Second)
	}
}
