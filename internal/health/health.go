// Package health probes a node's access network: ICMP echo to configured
// targets (the gateway, peers' access addresses), with rise and fall
// thresholds so that one lost packet does not move anything.
//
// A round sends one echo to every target and waits Timeout for the replies;
// it passes when at least one target answers. A healthy node turns
// unhealthy after Fall failed rounds in a row, and healthy again after Rise
// passed rounds in a row. A node starts healthy. Health is only reported:
// it never ends the process (the seed's crash loop restarted the service on
// an invalid access network).
package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// Config is the probe schedule.
type Config struct {
	Targets  []netip.Addr
	Interval time.Duration // between rounds (default 1s)
	Timeout  time.Duration // waiting for replies in a round (default 500ms)
	Rise     int           // passed rounds to become healthy (default 3)
	Fall     int           // failed rounds to become unhealthy (default 3)
}

// DefaultConfig returns the documented schedule, without targets.
func DefaultConfig() Config {
	return Config{Interval: time.Second, Timeout: 500 * time.Millisecond, Rise: 3, Fall: 3}
}

// Validate checks the schedule.
func (c Config) Validate() error {
	var errs []error
	for _, t := range c.Targets {
		if !t.Is4() || t.IsUnspecified() || t.IsMulticast() {
			errs = append(errs, fmt.Errorf("health target %s: want a unicast IPv4 address", t))
		}
	}
	if c.Interval <= 0 || c.Timeout <= 0 || c.Timeout >= c.Interval {
		errs = append(errs, fmt.Errorf("health timeout %v must be positive and shorter than the interval %v", c.Timeout, c.Interval))
	}
	if c.Rise < 1 || c.Fall < 1 || c.Rise > 100 || c.Fall > 100 {
		errs = append(errs, fmt.Errorf("health rise %d and fall %d must be 1-100", c.Rise, c.Fall))
	}
	return errors.Join(errs...)
}

// Run probes until ctx ends and calls report at every change of health,
// with a reason for an unhealthy one. With no targets it returns at once.
// A socket that cannot be opened (no CAP_NET_RAW and no ping socket
// permission) is reported as unhealthy and retried every interval.
func Run(ctx context.Context, cfg Config, log *slog.Logger, report func(ok bool, reason string)) {
	if len(cfg.Targets) == 0 {
		return
	}
	p := &prober{cfg: cfg, log: log, report: report, healthy: true}
	tick := time.NewTimer(0)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			if p.conn != nil {
				p.conn.Close()
			}
			return
		case <-tick.C:
		}
		tick.Reset(cfg.Interval)
		p.round(ctx)
	}
}

type prober struct {
	cfg        Config
	log        *slog.Logger
	report     func(bool, string)
	conn       *icmp.PacketConn
	raw        bool // ip4:icmp (echo ids are ours) rather than a ping socket
	seq        uint16
	healthy    bool
	reason     string
	pass, fail int
	openErr    string
}

func (p *prober) open() error {
	c, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	if err == nil {
		p.conn, p.raw = c, true
		return nil
	}
	c, err2 := icmp.ListenPacket("udp4", "0.0.0.0")
	if err2 != nil {
		return fmt.Errorf("open an ICMP socket: raw: %w; ping socket: %w", err, err2)
	}
	p.conn, p.raw = c, false
	return nil
}

// round probes once and updates health.
func (p *prober) round(ctx context.Context) {
	if p.conn == nil {
		if err := p.open(); err != nil {
			if p.openErr != err.Error() {
				p.log.Error("access-network probes cannot run", "err", err)
				p.openErr = err.Error()
			}
			p.set(false, "cannot probe the access network: "+err.Error())
			return
		}
		p.openErr = ""
	}
	answered, err := p.probe(ctx)
	if err != nil && ctx.Err() == nil {
		p.log.Warn("access-network probe failed; reopening the socket", "err", err)
		p.conn.Close()
		p.conn = nil
	}
	if len(answered) > 0 {
		p.pass, p.fail = p.pass+1, 0
		if !p.healthy && p.pass >= p.cfg.Rise {
			p.set(true, "")
		}
		return
	}
	p.fail, p.pass = p.fail+1, 0
	if p.healthy && p.fail >= p.cfg.Fall {
		names := make([]string, len(p.cfg.Targets))
		for i, t := range p.cfg.Targets {
			names[i] = t.String()
		}
		p.set(false, fmt.Sprintf("access network: no answer from %s for %d rounds", strings.Join(names, ", "), p.fail))
	}
}

// set reports a change of health or of its reason.
func (p *prober) set(ok bool, reason string) {
	if p.healthy == ok && p.reason == reason {
		return
	}
	p.healthy, p.reason = ok, reason
	p.report(ok, reason)
}

// probe sends one echo to each target and returns those that answered
// within the timeout.
func (p *prober) probe(ctx context.Context) ([]netip.Addr, error) {
	p.seq++
	id := os.Getpid() & 0xffff
	body := &icmp.Echo{ID: id, Seq: int(p.seq), Data: []byte("taskd-health")}
	msg, err := (&icmp.Message{Type: ipv4.ICMPTypeEcho, Body: body}).Marshal(nil)
	if err != nil {
		return nil, fmt.Errorf("marshal echo: %w", err)
	}
	for _, t := range p.cfg.Targets {
		var dst net.Addr = &net.IPAddr{IP: t.AsSlice()}
		if !p.raw {
			dst = &net.UDPAddr{IP: t.AsSlice()}
		}
		if _, err := p.conn.WriteTo(msg, dst); err != nil {
			// An unreachable network fails the send; that target did
			// not answer.
			p.log.Debug("echo not sent", "target", t, "err", err)
		}
	}
	var answered []netip.Addr
	deadline := time.Now().Add(p.cfg.Timeout)
	if err := p.conn.SetReadDeadline(deadline); err != nil {
		return nil, fmt.Errorf("set deadline: %w", err)
	}
	buf := make([]byte, 1500)
	for len(answered) < len(p.cfg.Targets) && ctx.Err() == nil {
		n, from, err := p.conn.ReadFrom(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			return answered, fmt.Errorf("read echo reply: %w", err)
		}
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		e, ok := m.Body.(*icmp.Echo)
		if !ok || e.Seq != int(p.seq) || (p.raw && e.ID != id) {
			continue
		}
		var src netip.Addr
		switch a := from.(type) {
		case *net.IPAddr:
			src, _ = netip.AddrFromSlice(a.IP)
		case *net.UDPAddr:
			src, _ = netip.AddrFromSlice(a.IP)
		}
		src = src.Unmap()
		if slices.Contains(p.cfg.Targets, src) && !slices.Contains(answered, src) {
			answered = append(answered, src)
		}
	}
	return answered, nil
}
