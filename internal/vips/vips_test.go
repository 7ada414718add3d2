package vips_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/testenv"
	"github.com/taskd/taskd/internal/vipaddr"
	"github.com/taskd/taskd/internal/vips"
	"go.uber.org/goleak"
)

// These tests run the assignment and holding protocol on real stores with
// three in-process quorum members. Below the store, the hold itself is a
// stand-in that records who holds what (the netns tests in internal/e2e
// hold real addresses): the stand-in is where "at most one holder" is
// checked, at every hold and release.

func TestMain(m *testing.M) {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	goleak.VerifyTestMain(m)
}

// ledger is the stand-in's record of holders.
type ledger struct {
	mu         sync.Mutex
	holders    map[string][]string // service -> nodes holding it now
	violations []string
	takes      map[string]int  // service -> number of holds started
	took       map[string]bool // "service@node" -> the node held it at some time
	changed    chan struct{}
}

func newLedger() *ledger {
	return &ledger{holders: map[string][]string{}, takes: map[string]int{}, took: map[string]bool{}, changed: make(chan struct{})}
}

// everHeld reports whether node ever held service.
func (l *ledger) everHeld(service, node string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.took[service+"@"+node]
}

func (l *ledger) notify() { close(l.changed); l.changed = make(chan struct{}) }

func (l *ledger) holdFunc(node string) vips.HoldFunc {
	return func(ctx context.Context, s vipaddr.Spec, report func(bool, error)) {
		l.mu.Lock()
		if h := l.holders[s.Service]; len(h) > 0 {
			l.violations = append(l.violations, fmt.Sprintf("%s took %s while %v held it", node, s.Service, h))
		}
		l.holders[s.Service] = append(l.holders[s.Service], node)
		l.takes[s.Service]++
		l.took[s.Service+"@"+node] = true
		l.notify()
		l.mu.Unlock()
		report(true, nil)
		<-ctx.Done()
		l.mu.Lock()
		h := l.holders[s.Service]
		for i, n := range h {
			if n == node {
				l.holders[s.Service] = append(h[:i:i], h[i+1:]...)
				break
			}
		}
		l.notify()
		l.mu.Unlock()
	}
}

// holder returns the single holder of service ("" when none).
func (l *ledger) holder(service string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if h := l.holders[service]; len(h) == 1 {
		return h[0]
	}
	return ""
}

func (l *ledger) check(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, v := range l.violations {
		t.Errorf("two holders: %s", v)
	}
}

type member struct {
	name   string
	q      *quorum.Quorum
	store  coord.Store
	cancel context.CancelFunc
	done   chan error
}

func (m *member) view() quorum.View { v, _ := m.q.View(); return v }

func (m *member) stop() {
	if m.cancel != nil {
		m.cancel()
		<-m.done
		m.cancel = nil
	}
}

var roots atomic.Int64

// testRoot is a fresh store root, so that tests sharing a server do not meet.
func testRoot(t *testing.T) keys.Root {
	r, err := keys.NewRoot(fmt.Sprintf("/taskd/vipstest%d", roots.Add(1)))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

type cluster struct {
	t        *testing.T
	root     keys.Root
	members  []*member
	led      *ledger
	grace    time.Duration
	policies map[string]vipaddr.Policy // by node; none: allow all
}

func startCluster(t *testing.T, open func(t testing.TB) coord.Store, seed []vipaddr.Spec) *cluster {
	return startClusterWith(t, open, seed, nil)
}

func startClusterWith(t *testing.T, open func(t testing.TB) coord.Store, seed []vipaddr.Spec, policies map[string]vipaddr.Policy) *cluster {
	c := &cluster{t: t, root: testRoot(t), led: newLedger(), grace: time.Second, policies: policies}
	for i, name := range []string{"n1", "n2", "n3"} {
		c.start(name, fmt.Sprintf("10.0.0.%d:10600", 11+i), open(t), 10-i, seed)
	}
	return c
}

func (c *cluster) start(name, addr string, store coord.Store, prio int, seed []vipaddr.Spec) *member {
	cfg := quorum.DefaultConfig()
	cfg.Name, cfg.NodeID, cfg.Address, cfg.Priority, cfg.Root = name, "id-"+name, addr, prio, c.root.String()
	// The product's default session timeout and fence budget: a shorter
	// timeout leaves a margin that a loaded machine eats (a 2 s session
	// has 0.8 s between its local deadline and expiry).
	cfg.YieldGrace = c.grace
	cfg.CampaignStagger = 300 * time.Millisecond
	m := &member{name: name, store: store, done: make(chan error, 1)}
	log := slog.Default().With("node", name)
	asg := vips.NewAssigner(store, c.root, name, c.grace, seed, log)
	hol := vips.NewHolder(store, c.root, name, c.policies[name], c.led.holdFunc(name), log)
	roles := quorum.Roles{
		Leader: func(ctx context.Context, l *quorum.Leadership) error { return asg.Run(ctx, l, m.q.View) },
		Member: hol.Run,
	}
	q, err := quorum.New(cfg, store, roles, log)
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.q, m.cancel = q, cancel
	go func() { m.done <- q.Run(ctx) }()
	c.t.Cleanup(m.stop)
	c.members = append(c.members, m)
	return m
}

func (c *cluster) member(name string) *member {
	for _, m := range c.members {
		if m.name == name && m.cancel != nil {
			return m
		}
	}
	c.t.Fatalf("no running member %s", name)
	return nil
}

func (c *cluster) registry(via string) *vips.Registry {
	m := c.member(via)
	return vips.NewRegistry(m.store, c.root, m.view, nil)
}

// waitHolder waits until want holds service (by the stand-in's ledger) and
// returns how long it took.
func (c *cluster) waitHolder(service, want string, limit time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	for {
		c.led.mu.Lock()
		ch := c.led.changed
		c.led.mu.Unlock()
		if h := c.led.holder(service); h == want {
			return time.Since(start)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			c.t.Fatalf("%q did not come to hold %s within %v (holder %q)", want, service, limit, c.led.holder(service))
		}
	}
}

// leader waits until every running member agrees on a leader and lists
// at least every running member, and returns the leader. (The members
// start one after another: a leader may be elected before the last one
// joined, and a drain in that moment rightly finds no place for a VIP on
// a member that is not there yet.)
func (c *cluster) leader() string {
	c.t.Helper()
	var leader string
	err := testenv.WaitFor(ctxT(c.t, 20*time.Second), 20*time.Millisecond, func() bool {
		leader = ""
		running := 0
		for _, m := range c.members {
			if m.cancel != nil {
				running++
			}
		}
		for _, m := range c.members {
			if m.cancel == nil {
				continue
			}
			v := m.view()
			if v.Leader == "" || len(v.Members) < max(2, running) || (leader != "" && v.Leader != leader) {
				return false
			}
			leader = v.Leader
		}
		return true
	})
	if err != nil {
		c.t.Fatalf("no agreed leader: %v", err)
	}
	return leader
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

type backend = testenv.Backend

func backends(t *testing.T) []backend { return testenv.Backends(t) }

func TestVIPs(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			t.Run("SetValidates", func(t *testing.T) { testSetValidates(t, b) })
			t.Run("LeaderHoldsDrainFailover", func(t *testing.T) { testLeaderHoldsDrainFailover(t, b) })
			t.Run("UnhealthyHolder", func(t *testing.T) { testUnhealthy(t, b) })
			t.Run("HolderCutOff", func(t *testing.T) { testHolderCutOff(t, b) })
			t.Run("Allowlist", func(t *testing.T) { testAllowlist(t, b) })
			t.Run("TraversalRefused", func(t *testing.T) { testTraversal(t, b) })
		})
	}
}

func mustSpec(t *testing.T, s string) vipaddr.Spec {
	t.Helper()
	spec, err := vipaddr.ParseSpec(s)
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// testSetValidates: every bad input is refused with its own error, and the
// store is unchanged after each.
func testSetValidates(t *testing.T, b backend) {
	c := startCluster(t, b.Open, nil)
	c.leader()
	reg := vips.NewRegistry(c.members[0].store, c.root, c.members[0].view, func() (map[netip.Addr]string, error) {
		return map[netip.Addr]string{netip.MustParseAddr("10.0.0.9"): "eth0"}, nil
	})
	ctx := ctxT(t, 30*time.Second)
	good, err := reg.Set(ctx, vips.ServiceVIP{Service: "iscsi", Address: "10.0.0.50", Interface: "eth0"})
	if err != nil {
		t.Fatal(err)
	}
	if good.Address != "10.0.0.50/32" {
		t.Fatalf("a bare address is stored as %q, want 10.0.0.50/32", good.Address)
	}
	bad := []struct {
		c    vips.ServiceVIP
		want error
		text string
	}{
		{vips.ServiceVIP{Service: "nfs", Address: "fe80::1", Interface: "eth0"}, vipaddr.ErrInvalid, "not an IPv4"},
		{vips.ServiceVIP{Service: "nfs", Address: "10.0.0.x", Interface: "eth0"}, vipaddr.ErrInvalid, "neither IP"},
		{vips.ServiceVIP{Service: "nfs", Address: "10.0.0.0/24", Interface: "eth0"}, vipaddr.ErrInvalid, "network address"},
		{vips.ServiceVIP{Service: "nfs", Address: "10.0.0.255/24", Interface: "eth0"}, vipaddr.ErrInvalid, "broadcast address"},
		{vips.ServiceVIP{Service: "nfs", Address: "10.0.0.51", Interface: "eth 0"}, vipaddr.ErrInvalid, "interface name"},
		{vips.ServiceVIP{Service: "nfs", Address: "10.0.0.51", Interface: "a-very-long-if"}, vipaddr.ErrInvalid, "label"},
		{vips.ServiceVIP{Service: "management", Address: "10.0.0.51", Interface: "bond0"}, vipaddr.ErrInvalid, "label"},
		{vips.ServiceVIP{Service: "nfs", Address: "130.0.0.1/1", Interface: "eth0"}, vipaddr.ErrInvalid, "shorter than /16"},
		{vips.ServiceVIP{Service: "nfs", Address: "10.1.0.1/15", Interface: "eth0"}, vipaddr.ErrInvalid, "shorter than /16"},
		{vips.ServiceVIP{Service: "nfs", Address: "0.1.2.3", Interface: "eth0"}, vipaddr.ErrInvalid, "this network"},
		{vips.ServiceVIP{Service: "nfs", Address: "240.0.0.1", Interface: "eth0"}, vipaddr.ErrInvalid, "reserved"},
		{vips.ServiceVIP{Service: "nfs", Address: "255.255.255.255", Interface: "eth0"}, vipaddr.ErrInvalid, "reserved"},
		{vips.ServiceVIP{Service: "nfs", Address: "127.0.0.2", Interface: "eth0"}, vipaddr.ErrInvalid, "loopback"},
		{vips.ServiceVIP{Service: "nfs", Address: "224.0.0.5", Interface: "eth0"}, vipaddr.ErrInvalid, "multicast"},
		{vips.ServiceVIP{Service: "nfs", Address: "169.254.169.254", Interface: "eth0"}, vipaddr.ErrInvalid, "link-local"},
		{vips.ServiceVIP{Service: "nfs", Address: "10.0.0.51", Interface: "lo"}, vipaddr.ErrInvalid, "loopback"},
		{vips.ServiceVIP{Service: "nfs", Address: "10.0.0.50", Interface: "eth0"}, vips.ErrInUse, "vip iscsi"},
		{vips.ServiceVIP{Service: "nfs", Address: "10.0.0.9", Interface: "eth0"}, vips.ErrInUse, "interface of node"},
		{vips.ServiceVIP{Service: "nfs", Address: "10.0.0.12", Interface: "eth0"}, vips.ErrInUse, "member n2"},
	}
	configs := func() string {
		st, err := reg.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, s := range st {
			out = append(out, fmt.Sprintf("%+v", s.VIP))
		}
		return strings.Join(out, "\n")
	}
	for _, tc := range bad {
		before := configs()
		_, err = reg.Set(ctx, tc.c)
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
			t.Errorf("Set(%+v) = %v, want %v mentioning %q", tc.c, err, tc.want, tc.text)
		}
		if after := configs(); before != after {
			t.Errorf("Set(%+v) changed the store:\n before %v\n after  %v", tc.c, before, after)
		}
	}
	if err := reg.Delete(ctx, "nope"); !errors.Is(err, vips.ErrNotFound) {
		t.Errorf("Delete(nope) = %v, want ErrNotFound", err)
	}
	if _, err := reg.Drain(ctx, "iscsi", "n9"); !errors.Is(err, vips.ErrNoTarget) {
		t.Errorf("Drain to a non-member = %v, want ErrNoTarget", err)
	}
}

// testLeaderHoldsDrainFailover: the leader holds a seeded VIP; drains move
// it to the named node and to an automatic one; a deleted VIP is released;
// a stopped holder's VIP goes to the new leader. The stand-in never sees two
// holders at once.
func testLeaderHoldsDrainFailover(t *testing.T, b backend) {
	c := startCluster(t, b.Open, []vipaddr.Spec{mustSpec(t, "iscsi=10.0.0.50@eth0")})
	leader := c.leader()
	c.waitHolder("iscsi", leader, 20*time.Second)
	ctx := ctxT(t, 60*time.Second)
	reg := c.registry(leader)

	var other string
	for _, m := range c.members {
		if m.name != leader {
			other = m.name
			break
		}
	}
	to, err := reg.Drain(ctx, "iscsi", other)
	if err != nil || to != other {
		t.Fatalf("drain to %s: %q %v", other, to, err)
	}
	took := c.waitHolder("iscsi", other, 5*time.Second)
	t.Logf("drain to %s took %v", other, took)
	if err := reg.WaitHeld(ctx, "iscsi", other); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Drain(ctx, "iscsi", other); !errors.Is(err, vips.ErrNoTarget) {
		t.Errorf("drain to the current holder = %v, want ErrNoTarget", err)
	}
	// Without --to: the leader is the first choice.
	to, err = reg.Drain(ctx, "iscsi", "")
	if err != nil || to != leader {
		t.Fatalf("automatic drain: %q %v, want %s", to, err, leader)
	}
	c.waitHolder("iscsi", leader, 5*time.Second)

	// A second VIP, then deleted: released.
	if _, err := reg.Set(ctx, vips.ServiceVIP{Service: "nfs", Address: "10.0.0.51", Interface: "eth0"}); err != nil {
		t.Fatal(err)
	}
	c.waitHolder("nfs", leader, 5*time.Second)
	if err := reg.Delete(ctx, "nfs"); err != nil {
		t.Fatal(err)
	}
	c.waitHolder("nfs", "", 5*time.Second)

	// The leader stops: the VIP follows the new leader.
	c.member(leader).stop()
	var next string
	if err := testenv.WaitFor(ctxT(t, 20*time.Second), 20*time.Millisecond, func() bool {
		next = c.leader()
		return next != leader
	}); err != nil {
		t.Fatalf("no new leader after %s stopped", leader)
	}
	c.waitHolder("iscsi", next, 20*time.Second)
	// The holder records "up" in its held key after it has taken the
	// address: wait for the store to show it rather than read it once.
	var st []vips.Status
	if err := testenv.WaitFor(ctxT(t, 10*time.Second), 20*time.Millisecond, func() bool {
		var lerr error
		st, lerr = c.registry(next).List(ctx)
		return lerr == nil && len(st) == 1 && st[0].Held != nil && st[0].Held.Node == next && st[0].Held.Up &&
			st[0].Assigned != nil && st[0].Assigned.Node == next
	}); err != nil {
		t.Fatalf("list after failover: %+v", st)
	}
	c.led.check(t)
}

// testUnhealthy: an unhealthy holder loses its VIP to a healthy member after
// the grace period; when every member turns unhealthy at once, the VIP does
// not move at all.
func testUnhealthy(t *testing.T, b backend) {
	c := startCluster(t, b.Open, []vipaddr.Spec{mustSpec(t, "iscsi=10.0.0.50@eth0")})
	leader := c.leader()
	c.waitHolder("iscsi", leader, 20*time.Second)

	// Seed replay: all at once. Nothing moves for several grace periods.
	c.led.mu.Lock()
	takes := c.led.takes["iscsi"]
	c.led.mu.Unlock()
	for _, m := range c.members {
		m.q.SetHealth(false, "access network invalid")
	}
	err := testenv.WaitFor(ctxT(t, 20*time.Second), 20*time.Millisecond, func() bool {
		for _, m := range c.members {
			for _, x := range m.view().Members {
				if x.Health == "ok" {
					return false
				}
			}
		}
		return true
	})
	if err != nil {
		t.Fatal("members never saw each other unhealthy")
	}
	// The assigner's grace (1 s) and the quorum's yield grace (1 s) pass
	// three times over: the observation window of "nothing moves".
	deadline := time.NewTimer(3 * c.grace)
	<-deadline.C
	c.led.mu.Lock()
	moved := c.led.takes["iscsi"] - takes
	c.led.mu.Unlock()
	if moved != 0 || c.led.holder("iscsi") != leader {
		t.Fatalf("with every member unhealthy the vip moved %d times (holder now %q)", moved, c.led.holder("iscsi"))
	}

	// One member recovers: the VIP goes to it (directly, or with the
	// leadership), and only there.
	var healthy string
	for _, m := range c.members {
		if m.name != leader {
			healthy = m.name
			m.q.SetHealth(true, "")
			break
		}
	}
	c.waitHolder("iscsi", healthy, 20*time.Second)
	c.led.check(t)
}

// testHolderCutOff: the holder loses the store (its connection is frozen)
// while it holds the VIP. It must release the VIP before its session can
// expire, and the next holder takes it only after that; the process keeps
// running and rejoins when the store comes back.
func testHolderCutOff(t *testing.T, b backend) {
	c := &cluster{t: t, root: testRoot(t), led: newLedger(), grace: time.Second}
	seed := []vipaddr.Spec{mustSpec(t, "iscsi=10.0.0.50@eth0")}
	proxy := testenv.StartProxy(t, b.Addr)
	cut := c.start("n1", "10.0.0.11:10600", b.Dial(t, proxy.Addr()), 10, seed)
	c.start("n2", "10.0.0.12:10600", b.Open(t), 9, seed)
	c.start("n3", "10.0.0.13:10600", b.Open(t), 8, seed)
	// n1 has the highest priority; another member may lead first and
	// yield to it after the yield grace.
	if err := testenv.WaitFor(ctxT(t, 20*time.Second), 20*time.Millisecond, func() bool { return c.leader() == "n1" }); err != nil {
		t.Fatalf("n1 (highest priority) never led: %v", err)
	}
	c.waitHolder("iscsi", "n1", 20*time.Second)
	proxy.Pause()
	c.waitHolder("iscsi", "", 10*time.Second)
	select {
	case err := <-cut.done:
		t.Fatalf("the cut-off node's quorum returned: %v", err)
	default:
	}
	var next string
	err := testenv.WaitFor(ctxT(t, 20*time.Second), 20*time.Millisecond, func() bool {
		next = c.led.holder("iscsi")
		return next != ""
	})
	if err != nil || next == "n1" {
		t.Fatalf("after the cut-off the vip is held by %q (%v)", next, err)
	}
	proxy.Resume()
	c.led.check(t)
}
