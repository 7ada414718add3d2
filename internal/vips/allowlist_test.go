package vips_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/testenv"
	"github.com/taskd/taskd/internal/vipaddr"
	"github.com/taskd/taskd/internal/vips"
)

// testAllowlist: members publish their VIP allowlists; the leader never
// assigns a VIP to a member that refuses it, not at first, not on a drain
// and not on failover; vip list shows who refuses and why; a VIP that
// every live member refuses is not accepted.
func testAllowlist(t *testing.T, b backend) {
	pol := map[string]vipaddr.Policy{
		"n1": {Interfaces: []string{"eth1"}},                                // refuses eth0
		"n2": {CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}}, // allows 10.0.0.50/32 on eth0
		"n3": {CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}}, // allows it too
	}
	c := startClusterWith(t, b.Open, []vipaddr.Spec{mustSpec(t, "iscsi=10.0.0.50@eth0")}, pol)
	// n1 has the highest priority: it leads once the yield grace passed.
	if err := testenv.WaitFor(ctxT(t, 20*time.Second), 20*time.Millisecond, func() bool { return c.leader() == "n1" }); err != nil {
		t.Fatalf("n1 (highest priority) never led: %v", err)
	}
	// n2 or n3 holds it: whichever led before n1, or n2 as the best
	// member that allows it.
	var first string
	if err := testenv.WaitFor(ctxT(t, 20*time.Second), 20*time.Millisecond, func() bool {
		first = c.led.holder("iscsi")
		return first == "n2" || first == "n3"
	}); err != nil {
		t.Fatalf("the vip is held by %q, want n2 or n3: %v", c.led.holder("iscsi"), err)
	}
	other := map[string]string{"n2": "n3", "n3": "n2"}[first]
	ctx := ctxT(t, 60*time.Second)
	reg := c.registry("n1")
	st, err := reg.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 1 || len(st[0].Refused) != 1 || !strings.Contains(st[0].Refused["n1"], "--vip-allow-interface") {
		t.Fatalf("list: refusals %+v, want only n1's, naming --vip-allow-interface", st)
	}
	if _, err := reg.Drain(ctx, "iscsi", "n1"); !errors.Is(err, vips.ErrNoTarget) || !strings.Contains(err.Error(), "n1 refuses it") {
		t.Fatalf("drain to n1 = %v, want ErrNoTarget: n1 refuses it", err)
	}
	// An automatic drain prefers the leader, but skips it: n1 refuses.
	if to, err := reg.Drain(ctx, "iscsi", ""); err != nil || to != other {
		t.Fatalf("automatic drain: %q %v, want %s", to, err, other)
	}
	c.waitHolder("iscsi", other, 10*time.Second)
	// The assignment n1 made says why n1 is not the holder. (The first
	// assignment may be older than n1's leadership, made by a leader that
	// had not yet read n1's allowlist: its reason is of its own time.)
	st, err = reg.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 1 || st[0].Assigned == nil || st[0].Assigned.Node != other || !strings.Contains(st[0].Assigned.Reason, "n1 refuses it") {
		t.Fatalf("assignment after the drain %+v does not say that n1 refuses the vip", st)
	}

	// Every member refuses 10.9.0.5 on eth0: not accepted, nothing stored.
	before, err := reg.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = reg.Set(ctx, vips.ServiceVIP{Service: "nfs", Address: "10.9.0.5", Interface: "eth0"})
	if !errors.Is(err, vips.ErrNoTarget) || !strings.Contains(err.Error(), "every live member refuses") {
		t.Fatalf("Set of a vip every member refuses = %v", err)
	}
	if after, err := reg.List(ctx); err != nil || len(after) != len(before) {
		t.Fatalf("the refused Set changed the vips: %d before, %d after (%v)", len(before), len(after), err)
	}

	// The holder stops: the vip goes back to the first, never to n1 (the
	// leader).
	c.member(other).stop()
	c.waitHolder("iscsi", first, 20*time.Second)
	if c.led.everHeld("iscsi", "n1") {
		t.Fatal("n1 held the vip although its allowlist refuses it")
	}
	c.led.check(t)
}
