package node

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/taskd/taskd/internal/backoff"
	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/vipaddr"
	"github.com/vishvananda/netlink"
)

// vipEventKinds are the timeline kinds of a holder's events
// (TestVIPEventKinds: every kind has one).
var vipEventKinds = map[vipaddr.EventKind]events.Kind{
	vipaddr.ProbeConflict:      events.VIPProbeConflict,
	vipaddr.Duplicate:          events.VIPDuplicate,
	vipaddr.Defended:           events.VIPDefended,
	vipaddr.ReleasedOnConflict: events.VIPReleasedOnConflict,
	vipaddr.Held:               events.VIPHeld,
	vipaddr.Released:           events.VIPReleased,
	vipaddr.Lapsed:             events.VIPLapsed,
}

// vipConfig is the holder timing: one probe and 20 ms of listening (a host
// on the LAN answers within a millisecond or two), since a takeover waits
// for it; the announcement schedule is vipaddr.DefaultConfig's.
func (n *Node) vipConfig(report func(up bool, err error)) vipaddr.Config {
	c := vipaddr.DefaultConfig()
	c.ProbeCount, c.ProbeInterval, c.ProbeWait = 1, 20*time.Millisecond, 20*time.Millisecond
	c.Policy, _ = n.cfg.vipPolicy() // validated in Run
	c.Log = n.log
	c.Event = func(e vipaddr.Event) {
		attrs := []any{vipEventKinds[e.Kind].Attr(), "service", e.Service, "vip", e.Addr.String()}
		if e.MAC != "" {
			attrs = append(attrs, "mac", e.MAC)
		}
		switch e.Kind {
		case vipaddr.Held:
			report(true, nil)
			n.log.Info("vip up", attrs...)
		case vipaddr.Released:
			report(false, nil)
			n.log.Info("vip down", attrs...)
		case vipaddr.Lapsed:
			n.log.Warn("vip hold lapsed: this node did not run for a whole address lifetime", attrs...)
		default: // probe-conflict, duplicate, defended, released-on-conflict
			n.log.Warn("another host claims the vip", attrs...)
		}
	}
	return c
}

// cleanupVIPs removes VIPs this node left on its interfaces (a crash skips
// the removal): addresses labelled as a --vip or as any VIP it held before.
// It runs before the node joins.
func (n *Node) cleanupVIPs(specs []vipaddr.Spec) {
	labels := n.vipLabels.Labels()
	for _, s := range specs {
		labels = append(labels, s.Label())
	}
	if len(labels) == 0 {
		return
	}
	removed, err := vipaddr.Cleanup(labels)
	for _, r := range removed {
		n.log.Warn("removed a vip left from an earlier run", events.VIPStaleRemoved.Attr(), "address", r)
	}
	if err != nil {
		n.log.Error("cannot remove stale vips; they may answer until removed by hand", "err", err)
	}
}

// holdVIP holds one VIP until ctx ends (vips.HoldFunc). When it cannot
// (another host answers for the address, the interface is missing), it
// reports why and tries again with backoff: a node never exits over a VIP.
func (n *Node) holdVIP(ctx context.Context, s vipaddr.Spec, report func(up bool, err error)) {
	holding := n.metrics.VIPHolding.WithLabelValues(s.Service)
	holding.Set(1)
	n.log.Info("taking the vip", events.VIPTake.Attr(), "service", s.Service, "vip", s.Prefix.String())
	defer func() {
		holding.Set(0)
		n.log.Info("vip released", events.VIPRelease.Attr(), "service", s.Service, "vip", s.Prefix.String())
	}()
	if err := n.vipLabels.Add(s.Label()); err != nil {
		n.log.Warn("the vip's label is not recorded; a crash may leave the address until its lifetime ends", "err", err)
	}
	retry := backoff.New(time.Second, 30*time.Second)
	lastRefusal := ""
	for {
		err := vipaddr.Hold(ctx, s, n.vipConfig(report))
		if ctx.Err() != nil {
			return
		}
		report(false, err)
		if refused := errors.Is(err, vipaddr.ErrNotAllowed) || errors.Is(err, vipaddr.ErrForeign) || errors.Is(err, vipaddr.ErrInvalid); refused && err.Error() != lastRefusal {
			// Once per reason: the timeline shows why this node does
			// not hold the VIP, without an event per retry.
			lastRefusal = err.Error()
			n.log.Error("this node refuses the vip", events.VIPRefused.Attr(), "service", s.Service, "vip", s.Prefix.String(), "reason", err.Error())
		}
		n.log.Error("vip not held; retrying", "service", s.Service, "vip", s.Prefix.String(), "err", err, "retry_in", retry.Next())
		if retry.Wait(ctx) != nil {
			return
		}
	}
}

// localAddrs lists this node's IPv4 addresses with their labels, for the
// registry's "address already in use" check.
func localAddrs() (map[netip.Addr]string, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	out := map[netip.Addr]string{}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out[ip.Unmap()] = a.Label
		}
	}
	return out, nil
}
