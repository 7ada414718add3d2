package vipaddr

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Config is the timing of probing, announcing and defending.
type Config struct {
	ProbeCount    int           // probes before adding (default 3)
	ProbeInterval time.Duration // between probes (default 100ms)
	ProbeWait     time.Duration // listening after the last probe (default 200ms)
	Burst         int           // announcement pairs after the first (default 4)
	BurstInterval time.Duration // default 250ms
	Refresh       time.Duration // periodic announcement (default 20s)
	// DefendWindow: a second foreign claim within this time of the first
	// makes the holder give the address up (default 10s). See Hold.
	DefendWindow time.Duration
	// ValidLifetime is the address's valid lifetime in the kernel (whole
	// seconds, default 1s); the holder renews it every RenewInterval
	// (default 250ms). If the holder process dies or is stopped, the
	// kernel removes the address within about ValidLifetime + 1s, so a
	// frozen or killed holder cannot keep answering for the VIP while
	// another node takes it over.
	ValidLifetime time.Duration
	RenewInterval time.Duration
	// Policy is this node's allowlist; Hold refuses a VIP outside it.
	Policy Policy
	Log    *slog.Logger
	// Event receives what an operator should see: conflicts and duplicate
	// claims. It must not block.
	Event func(Event)
}

// DefaultConfig returns the documented schedule.
func DefaultConfig() Config {
	return Config{ProbeCount: 3, ProbeInterval: 100 * time.Millisecond, ProbeWait: 200 * time.Millisecond,
		Burst: 4, BurstInterval: 250 * time.Millisecond, Refresh: 20 * time.Second, DefendWindow: 10 * time.Second,
		ValidLifetime: time.Second, RenewInterval: 250 * time.Millisecond}
}

// Validate checks ranges and ratios.
func (c Config) Validate() error {
	switch {
	case c.ProbeCount < 1 || c.ProbeInterval <= 0 || c.ProbeWait <= 0:
		return fmt.Errorf("%w: probing needs at least one probe and positive intervals", ErrInvalid)
	case c.Burst < 0 || c.BurstInterval <= 0:
		return fmt.Errorf("%w: burst interval must be positive", ErrInvalid)
	case c.Refresh < time.Second || c.Refresh > 60*time.Second:
		return fmt.Errorf("%w: refresh %v outside 1s-60s (it must stay well under ARP cache timeouts)", ErrInvalid, c.Refresh)
	case c.DefendWindow <= c.BurstInterval:
		return fmt.Errorf("%w: defend window must exceed the burst interval", ErrInvalid)
	case c.ValidLifetime < time.Second || c.ValidLifetime%time.Second != 0:
		return fmt.Errorf("%w: valid lifetime %v must be whole seconds, at least 1s", ErrInvalid, c.ValidLifetime)
	case c.RenewInterval <= 0 || 3*c.RenewInterval > c.ValidLifetime:
		return fmt.Errorf("%w: renew interval %v must be at most a third of the valid lifetime %v", ErrInvalid, c.RenewInterval, c.ValidLifetime)
	}
	return c.Policy.Validate()
}

// EventKind names what a holder saw. The node records each as the
// timeline event "vip_" + kind (events.VIPHeld …).
type EventKind string

// The kinds of a holder's events.
const (
	ProbeConflict      EventKind = "probe-conflict"
	Duplicate          EventKind = "duplicate"
	Defended           EventKind = "defended"
	ReleasedOnConflict EventKind = "released-on-conflict"
	Held               EventKind = "held"
	Released           EventKind = "released"
	Lapsed             EventKind = "lapsed"
)

// EventKinds are every kind a holder reports.
var EventKinds = []EventKind{ProbeConflict, Duplicate, Defended, ReleasedOnConflict, Held, Released, Lapsed}

// Event is something a holder saw.
type Event struct {
	Kind    EventKind
	Service string
	Addr    netip.Addr
	MAC     string // the other host's MAC, for conflicts
	Time    time.Time
}

// Hold probes for the address, adds it and keeps announcing it until ctx
// ends; then it removes the address and returns nil. It returns ErrConflict
// without adding the address if the probe is answered.
//
// Before anything reaches the network it refuses, without adding the
// address: a VIP outside cfg.Policy (ErrNotAllowed), a loopback interface
// (ErrInvalid), and an address already on the host without the VIP's label
// (ErrForeign). The address is added with IFA_F_NOPREFIXROUTE, so it never
// installs a route for its prefix. Each renewal looks again: a copy of the
// address that somebody else configured meanwhile ends the hold
// (ErrForeign), and the holder only ever removes the address with its own
// label.
//
// Duplicate policy (RFC 5227 section 2.4 (b)): when another MAC claims the
// address while it is held (any ARP packet with the VIP as sender address),
// the holder records a "duplicate" event and defends once with an immediate
// announcement (a request and a reply from one MAC within 50 ms are one
// announcement, so one claim). If another
// conflicting packet comes within DefendWindow, it
// records "released-on-conflict", removes the address and returns
// ErrConflict, so that two hosts never keep fighting over it; whoever
// assigns VIPs decides what happens next.
func Hold(ctx context.Context, s Spec, cfg Config) error {
	if err := s.Validate(); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := cfg.Policy.Check(s); err != nil {
		return err
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("service", s.Service, "vip", s.Prefix.String(), "interface", s.Interface)
	emit := func(kind EventKind, mac string) {
		if cfg.Event != nil {
			cfg.Event(Event{Kind: kind, Service: s.Service, Addr: s.Prefix.Addr(), MAC: mac, Time: time.Now()})
		}
	}
	conn, link, err := openARP(s.Interface)
	if err != nil {
		return err
	}
	defer conn.close()
	if err := checkLink(s, link); err != nil {
		return err
	}
	if _, err := hostAddress(s, link); err != nil {
		return err
	}
	ip := s.Prefix.Addr()

	if other, err := probe(ctx, conn, ip, cfg); err != nil {
		return err
	} else if other != nil {
		log.Warn("vip not added: another host answers for it", "mac", other.String())
		emit(ProbeConflict, other.String())
		return fmt.Errorf("%w: %s answers for %s", ErrConflict, other, ip)
	}
	// Look again after the probe: it took time.
	present, err := hostAddress(s, link)
	if err != nil {
		return err
	}
	addr := nlAddr(s, cfg.ValidLifetime)
	added := time.Now()
	if err := addOwned(link, addr, present); err != nil {
		return fmt.Errorf("add %s to %s: %w", s.Prefix, s.Interface, err)
	}
	log.Info("vip added")
	emit(Held, "")
	defer func() {
		// The delete names the label: the kernel removes only the
		// address that carries it, never a foreign copy.
		if err := netlink.AddrDel(link, addr); err != nil && !gone(err) {
			log.Error("removing vip failed", "err", err)
			return
		}
		log.Info("vip removed")
		emit(Released, "")
	}()
	renew := func() error {
		// A replace of a foreign copy would give it the VIP's
		// lifetime, and the kernel would expire it: look first.
		present, err := hostAddress(s, link)
		if err != nil {
			return err
		}
		return addOwned(link, addr, present)
	}
	return keep(ctx, conn, ip, cfg, log, emit, renew, added)
}

func nlAddr(s Spec, valid time.Duration) *netlink.Addr {
	return &netlink.Addr{
		IPNet: &net.IPNet{IP: s.Prefix.Addr().AsSlice(), Mask: net.CIDRMask(s.Prefix.Bits(), 32)},
		Label: s.Label(),
		// No route for the prefix: the VIP is one address, and its
		// prefix must never claim a range of the routing table
		// (130.0.0.1/1 would route 128.0.0.0/1 to this interface).
		Flags: unix.IFA_F_NOPREFIXROUTE,
		// Deprecated (preferred lifetime 0): the kernel never picks the
		// VIP as a source address. The valid lifetime is a dead man's
		// switch, renewed while the holder runs.
		PreferedLft: 0,
		ValidLft:    int(valid / time.Second),
	}
}

// probe sends RFC 5227 probes and returns the MAC of a host that answers
// for ip or probes for it itself, or nil.
func probe(ctx context.Context, c *arpConn, ip netip.Addr, cfg Config) (net.HardwareAddr, error) {
	for i := range cfg.ProbeCount {
		if err := c.probe(ip); err != nil {
			return nil, err
		}
		wait := cfg.ProbeInterval
		if i == cfg.ProbeCount-1 {
			wait = cfg.ProbeWait
		}
		deadline := time.Now().Add(wait)
		for {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			p, err := c.recv(deadline)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				return nil, err
			}
			if slices.Equal(p.SenderMAC, c.mac) {
				continue
			}
			if p.SenderIP == ip || (p.Op == arpRequest && !p.SenderIP.IsValid()) ||
				(p.Op == arpRequest && p.SenderIP.IsUnspecified() && p.TargetIP == ip) {
				return p.SenderMAC, nil
			}
		}
	}
	return nil, nil
}

// lifetimeMargin: the kernel may expire an address up to 20 ms before its
// valid lifetime (ADDRCONF_TIMER_FUZZ_MINUS); the holder treats it as gone
// this long before.
const lifetimeMargin = 100 * time.Millisecond

// claimPair: a gratuitous ARP request and reply from one MAC this close
// together are one announcement, so one claim.
const claimPair = 50 * time.Millisecond

// keep announces on schedule, renews the address's lifetime and watches for
// other hosts claiming ip. renewedAt is when the address was last added or
// renewed (taken before the call).
//
// A holder that did not run for a whole lifetime (stopped, starved) finds
// on waking that the kernel may have removed the address and another node
// may hold it now. It then neither renews (which would add the address
// back) nor announces; it returns ErrLapsed, and whoever holds it decides
// again, after a new probe.
func keep(ctx context.Context, c *arpConn, ip netip.Addr, cfg Config, log *slog.Logger, emit func(kind EventKind, mac string), renew func() error, renewedAt time.Time) error {
	next := time.Now()
	nextRenew := time.Now().Add(cfg.RenewInterval)
	burst := cfg.Burst + 1
	var lastClaim time.Time
	var lastMAC string
	var lastOp uint16
	lapsed := func() error {
		if since := time.Since(renewedAt); since >= cfg.ValidLifetime-lifetimeMargin {
			log.Error("the holder did not run for a whole address lifetime; not renewing or announcing the vip", "not_running_for", since)
			emit(Lapsed, "")
			return fmt.Errorf("%w: no renewal for %v (lifetime %v)", ErrLapsed, since.Round(time.Millisecond), cfg.ValidLifetime)
		}
		return nil
	}
	for {
		if ctx.Err() != nil {
			return nil
		}
		if err := lapsed(); err != nil {
			return err
		}
		if !time.Now().Before(next) {
			if err := c.announce(ip); err != nil {
				log.Warn("gratuitous ARP failed", "err", err)
			}
			if burst--; burst > 0 {
				next = time.Now().Add(cfg.BurstInterval)
			} else {
				next = time.Now().Add(cfg.Refresh)
			}
		}
		if !time.Now().Before(nextRenew) {
			start := time.Now()
			if err := lapsed(); err != nil {
				return err
			}
			if err := renew(); err != nil {
				// Without renewal the kernel drops the address within
				// its lifetime; stop claiming it rather than hold it
				// half-way.
				return fmt.Errorf("renew address lifetime: %w", err)
			}
			renewedAt = start
			nextRenew = time.Now().Add(cfg.RenewInterval)
		}
		// Read until the next announcement or renewal, waking at least
		// every 100 ms to notice ctx.
		deadline := time.Now().Add(100 * time.Millisecond)
		if next.Before(deadline) {
			deadline = next
		}
		if nextRenew.Before(deadline) {
			deadline = nextRenew
		}
		p, err := c.recv(deadline)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			return fmt.Errorf("watch ARP: %w", err)
		}
		if p.SenderIP != ip || slices.Equal(p.SenderMAC, c.mac) {
			continue
		}
		other := p.SenderMAC.String()
		now := time.Now()
		if other == lastMAC && p.Op != lastOp && now.Sub(lastClaim) < claimPair {
			continue // the other half of the same announcement
		}
		lastMAC, lastOp = other, p.Op
		if !lastClaim.IsZero() && now.Sub(lastClaim) < cfg.DefendWindow {
			log.Error("another host keeps claiming the vip; giving it up", "mac", other)
			emit(ReleasedOnConflict, other)
			return fmt.Errorf("%w: %s keeps claiming %s", ErrConflict, other, ip)
		}
		lastClaim = now
		log.Warn("another host claims the vip; defending", "mac", other)
		emit(Duplicate, other)
		if err := lapsed(); err != nil {
			return err
		}
		if err := c.announce(ip); err != nil {
			log.Warn("gratuitous ARP failed", "err", err)
		}
		emit(Defended, other)
	}
}

// Cleanup removes addresses this node left behind (after a crash): every
// address whose label is one of labels. It returns what it removed.
func Cleanup(labels []string) ([]string, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	var removed []string
	var errs []error
	for _, a := range addrs {
		if !slices.Contains(labels, a.Label) {
			continue
		}
		link, err := netlink.LinkByIndex(a.LinkIndex)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := netlink.AddrDel(link, &a); err != nil {
			errs = append(errs, fmt.Errorf("remove stale %s (%s): %w", a.IPNet, a.Label, err))
			continue
		}
		removed = append(removed, a.IPNet.String()+" "+a.Label)
	}
	return removed, errors.Join(errs...)
}

// Query asks, from interface ifname and source address src, who has ip,
// and returns the distinct MACs that answer within wait.
func Query(ctx context.Context, ifname string, src, ip netip.Addr, wait time.Duration) ([]string, error) {
	c, _, err := openARP(ifname)
	if err != nil {
		return nil, err
	}
	defer c.close()
	if err := c.request(src, ip); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(wait)
	var macs []string
	for ctx.Err() == nil {
		p, err := c.recv(deadline)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			return nil, err
		}
		if p.Op == arpReply && p.SenderIP == ip && !slices.Contains(macs, p.SenderMAC.String()) {
			macs = append(macs, p.SenderMAC.String())
		}
	}
	return macs, ctx.Err()
}
