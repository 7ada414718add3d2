package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/testenv"
	"github.com/taskd/taskd/internal/vipaddr"
)

// helperMain runs inside a lab namespace (the test binary re-executed with
// `ip netns exec`): "arpsample" samples who answers ARP for the VIP
// (harness.ARPSample); "tcpconnect" connects to $ADDR once.
func helperMain(mode string) int {
	switch mode {
	case "arpsample":
		ip, src, limit, err := harness.SamplerEnv()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		if err := vipaddr.SampleARP(os.Stdout, ip, src, limit); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	case "claim":
		// A foreign host claims the VIP: one gratuitous ARP reply.
		if err := vipaddr.Claim("eth0", netip.MustParseAddr(os.Getenv("VIP"))); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	case "confine":
		return confineMain()
	case "vipconsole":
		return vipConsoleMain()
	case "wxprobe":
		return wxProbeMain()
	case "storeattack":
		return storeAttackMain()
	case "tcpconnect":
		c, err := net.DialTimeout("tcp", os.Getenv("ADDR"), 2*time.Second)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		c.Close()
		return 0
	}
	return attackerMain(mode)
}

func startVIPCluster(t *testing.T, timeout time.Duration) *harness.VIPCluster {
	t.Helper()
	testenv.NeedNetns(t)
	c, err := harness.StartVIPCluster(t.TempDir(), taskdBin, taskctlBin, timeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range harness.VIPNodes {
				b, _ := os.ReadFile(c.LogPath(n))
				t.Logf("--- log of %s:\n%s", n, tail(string(b), 3000))
			}
		}
		c.Close()
	})
	return c
}

// TestVIPFollowsLeader: the leader holds the VIP; kill -9 it and the VIP
// answers ARP and TCP on the new leader within session timeout + 0.5 s;
// the killed node keeps no stale VIP, before or after its restart; a sampler
// in the client namespace never sees two MACs answer in one sample.
func TestVIPFollowsLeader(t *testing.T) {
	// The product default. The bound is timeout + 0.5 s; what varies is
	// etcd's lease expiry, between timeout - timeout/6 and timeout + 0.5 s
	// after the kill (keepalives every timeout/6, a 500 ms lessor tick),
	// and a longer keepalive period leaves more of that range below the
	// bound.
	const timeout = 6 * time.Second
	c := startVIPCluster(t, timeout)
	samples, sampler, err := c.StartSampler(3*time.Minute, []string{"TASKD_E2E_HELPER=arpsample"}, os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sampler.Signal(syscall.SIGKILL); sampler.Wait() })

	var leader string
	var electedAt time.Time
	if err := harness.WaitFor(ctxFor(t, 60*time.Second), 100*time.Millisecond, func() bool {
		leader, electedAt = c.Leader("n1")
		return leader != ""
	}); err != nil {
		t.Fatalf("no leader: %v", err)
	}
	var mac string
	if err := harness.WaitFor(ctxFor(t, 20*time.Second), 20*time.Millisecond, func() bool {
		var ok bool
		_, mac, ok = vipaddr.FirstAnswer(vipaddr.ReadSamples(samples), time.Time{}, "")
		return ok
	}); err != nil {
		t.Fatalf("the vip never answered: %v", err)
	}
	if holder := c.NodeOf(mac); holder != leader {
		t.Fatalf("vip answered by %s, leader is %s", holder, leader)
	}

	for round := 1; round <= 3; round++ {
		old := leader
		oldMAC, err := c.Lab.MAC(old)
		if err != nil {
			t.Fatal(err)
		}
		// A new leader moves etcd's raft leadership away, and etcd renews
		// every lease when raft leadership moves: until session timeout
		// + 1 s after the election, a dead leader's lease lives longer
		// (docs/operations.md). Measure taskd's own failover, after that.
		if err := harness.WaitFor(ctxFor(t, 3*timeout), 100*time.Millisecond, func() bool {
			return time.Since(electedAt) > timeout+time.Second
		}); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		c.Kill(old)
		var at time.Time
		if err := harness.WaitFor(ctxFor(t, 4*timeout), 20*time.Millisecond, func() bool {
			var ok bool
			at, mac, ok = vipaddr.FirstAnswer(vipaddr.ReadSamples(samples), killed, oldMAC)
			return ok
		}); err != nil {
			t.Fatalf("round %d: no other host answers for the vip after kill -9 of %s: %v", round, old, err)
		}
		took := at.Sub(killed)
		holder := c.NodeOf(mac)
		t.Logf("round %d: kill -9 of %s; vip answered by %s after %v", round, old, holder, took.Round(time.Millisecond))
		if took > timeout+500*time.Millisecond {
			t.Errorf("vip failover took %v, more than session timeout + 0.5s (%v)", took, timeout+500*time.Millisecond)
		}
		out, err := exec.Command("ip", "netns", "exec", c.Lab.NS("client"), "env", "TASKD_E2E_HELPER=tcpconnect",
			"ADDR="+c.VIP+":10600", os.Args[0]).CombinedOutput()
		if err != nil {
			t.Fatalf("TCP connect to the vip from the client after failover: %v: %s", err, out)
		}
		// The killed node's address expired with its lifetime.
		if _, ok, _ := c.Lab.Has(old, c.VIP); ok {
			t.Fatalf("%s still has the vip %v after its kill", old, time.Since(killed))
		}
		if err := c.Start(old); err != nil {
			t.Fatal(err)
		}
		if err := harness.WaitFor(ctxFor(t, 60*time.Second), 100*time.Millisecond, func() bool {
			leader, electedAt = c.Leader(old)
			return leader != "" && leader != old
		}); err != nil {
			t.Fatalf("%s did not rejoin: %v", old, err)
		}
		if _, ok, _ := c.Lab.Has(old, c.VIP); ok {
			t.Fatalf("restarted follower %s holds the vip", old)
		}
		if leader != holder {
			t.Fatalf("leader %s, vip holder %s", leader, holder)
		}
	}

	all := vipaddr.ReadSamples(samples)
	if n := vipaddr.Overlaps(all); n > 0 {
		t.Fatalf("%d samples were answered by two MACs", n)
	}
	var answered, silent int
	for _, s := range all {
		switch len(s.MACs) {
		case 0:
			silent++
		case 1:
			answered++
		}
	}
	if answered < 100 || silent == 0 {
		t.Fatalf("%d samples, %d answered, %d silent: the sampler did not observe the failovers", len(all), answered, silent)
	}
	t.Logf("%d ARP samples, %d answered, %d silent (failovers), none by two MACs", len(all), answered, silent)
}

// TestVIPDrainHealthDuplicate runs on one cluster: taskctl vip validation
// (bad input changes nothing), drains (the VIP answers on the new holder
// within 1 s, never two MACs at once), the seed replay (the gateway every
// node probes stops answering: no process exits and the holder changes at
// most once), and a foreign host claiming the VIP (the event is raised).
func TestVIPDrainHealthDuplicate(t *testing.T) {
	c := startVIPCluster(t, 6*time.Second)
	samples, sampler, err := c.StartSampler(3*time.Minute, []string{"TASKD_E2E_HELPER=arpsample"}, os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sampler.Signal(syscall.SIGKILL); sampler.Wait() })
	leader := waitVIPOnLeader(t, c, samples)
	holderNow := func(since time.Time, not string) (string, time.Time) {
		at, mac, ok := vipaddr.FirstAnswer(vipaddr.ReadSamples(samples), since, not)
		if !ok {
			return "", time.Time{}
		}
		return c.NodeOf(mac), at
	}

	// Validation: each bad input fails with its reason; the list is
	// unchanged.
	before, err := c.Ctl("n1", "vip", "list", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"vip", "set", "nfs", "fd00::5", "--interface", "eth0"}, "not an IPv4"},
		{[]string{"vip", "set", "nfs", "10.77.0.0/24", "--interface", "eth0"}, "network address"},
		{[]string{"vip", "set", "nfs", "130.0.0.1/1", "--interface", "eth0"}, "shorter than /16"},
		{[]string{"vip", "set", "nfs", "0.1.2.3", "--interface", "eth0"}, "this network"},
		{[]string{"vip", "set", "nfs", "240.0.0.1", "--interface", "eth0"}, "reserved"},
		{[]string{"vip", "set", "nfs", "10.77.0.101", "--interface", "lo"}, "loopback"},
		{[]string{"vip", "set", "nfs", "10.77.0.255/24", "--interface", "eth0"}, "broadcast address"},
		{[]string{"vip", "set", "nfs", c.Lab.Addr("n2"), "--interface", "eth0"}, "already in use"},
		{[]string{"vip", "set", "nfs", c.VIP, "--interface", "eth0"}, "vip iscsi already uses"},
		{[]string{"vip", "set", "nfs", "10.77.0.101", "--interface", "eth0/x"}, "interface name"},
		{[]string{"vip", "set", "management", "10.77.0.101", "--interface", "bond0"}, "label"},
		{[]string{"vip", "drain", "iscsi", "--to", "n9"}, "not a live member"},
		{[]string{"vip", "delete", "nope"}, "no such vip"},
	} {
		out, err := c.Ctl("n1", bad.args...)
		if err == nil || !strings.Contains(out, bad.want) {
			t.Errorf("taskctl %s: err %v, output %q; want a failure mentioning %q", strings.Join(bad.args, " "), err, out, bad.want)
		}
	}
	after, err := c.Ctl("n1", "vip", "list", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	if b := stripVolatile(t, before); !strings.Contains(b, c.VIP) || b != stripVolatile(t, after) {
		t.Errorf("bad input changed the vips:\nbefore %s\nafter  %s", before, after)
	}

	// An outsider on the network (the client namespace), with no token or
	// a guessed one, is refused at every member's API before anything is
	// decoded; the VIPs are unchanged.
	for _, n := range harness.VIPNodes {
		for _, tok := range []string{"", auth.NewToken().String()} {
			out, err := exec.Command("ip", "netns", "exec", c.Lab.NS("client"), "env", "TASKD_E2E_HELPER=rawcall",
				"URL=https://"+c.Lab.Addr(n)+":10600/taskd.v1.VIPService/DeleteVIP", "TOKEN="+tok, `BODY={"service":"iscsi"}`, os.Args[0]).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "status=401 code=unauthenticated") {
				t.Errorf("outsider deleting the vip at %s (token %v): %v %s", n, tok != "", err, out)
			}
		}
	}
	if after, err := c.Ctl("n1", "vip", "list", "-o", "json"); err != nil || stripVolatile(t, before) != stripVolatile(t, after) {
		t.Errorf("the outsider changed the vips (%v):\nbefore %s\nafter  %s", err, before, after)
	}

	// Drains: to each other node in turn.
	holder := leader
	for i := range 3 {
		to := harness.VIPNodes[(slices.Index(harness.VIPNodes, holder)+1+i%2)%len(harness.VIPNodes)]
		if to == holder {
			continue
		}
		oldMAC, _ := c.Lab.MAC(holder)
		start := time.Now()
		if out, err := c.Ctl("n1", "vip", "drain", "iscsi", "--to", to); err != nil {
			t.Fatalf("drain to %s: %v %s", to, err, out)
		}
		var got string
		var at time.Time
		if err := harness.WaitFor(ctxFor(t, 10*time.Second), 10*time.Millisecond, func() bool {
			got, at = holderNow(start, oldMAC)
			return got != ""
		}); err != nil {
			t.Fatalf("drain %d: no other host answers for the vip: %v", i, err)
		}
		took := at.Sub(start)
		t.Logf("drain %d: %s -> %s answered after %v", i, holder, got, took.Round(time.Millisecond))
		if got != to || took > time.Second {
			t.Errorf("drain to %s: answered by %s after %v (want %s within 1s)", to, got, took, to)
		}
		holder = got
	}
	out, err := c.Ctl("n2", "vip", "list")
	if err != nil || !strings.Contains(out, holder) || !strings.Contains(out, "up") {
		t.Fatalf("vip list after drains: %v\n%s", err, out)
	}
	t.Logf("vip list:\n%s", out)
	// doctor checks the VIPs: this one is up; one on a missing interface
	// is reported, and doctor exits 8.
	if out, err := c.Ctl("n1", "doctor"); err != nil || !strings.Contains(out, "ok    vip iscsi") {
		t.Fatalf("doctor with the vip up: %v\n%s", err, out)
	}
	if out, err := c.Ctl("n1", "vip", "set", "nfs", "10.77.0.101", "--interface", "eth9"); err != nil {
		t.Fatalf("vip set on a missing interface: %v %s", err, out)
	}
	if err := harness.WaitFor(ctxFor(t, 20*time.Second), 100*time.Millisecond, func() bool {
		out, err := c.Ctl("n1", "doctor")
		return err != nil && strings.Contains(err.Error(), "exit status 8") && strings.Contains(out, "vip nfs (10.77.0.101/32) on") && strings.Contains(out, "is not up")
	}); err != nil {
		out, _ := c.Ctl("n1", "doctor")
		t.Fatalf("doctor did not report the vip on a missing interface: %v\n%s", err, out)
	}
	if out, err := c.Ctl("n1", "vip", "delete", "nfs"); err != nil {
		t.Fatalf("vip delete: %v %s", err, out)
	}

	// Seed replay: the access network goes bad for every node at once.
	macs := func(since time.Time) []string {
		var seq []string
		for _, s := range vipaddr.ReadSamples(samples) {
			if s.At < since.UnixNano() || len(s.MACs) != 1 {
				continue
			}
			if len(seq) == 0 || seq[len(seq)-1] != s.MACs[0] {
				seq = append(seq, s.MACs[0])
			}
		}
		return seq
	}
	replay := time.Now()
	if err := c.GatewayDown(true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.GatewayDown(false) })
	if err := harness.WaitFor(ctxFor(t, 20*time.Second), 100*time.Millisecond, func() bool {
		out, err := c.Ctl("n1", "service", "list", "-o", "json")
		return err == nil && strings.Count(out, `"unhealthy"`) == len(harness.VIPNodes)
	}); err != nil {
		t.Fatalf("the nodes never all reported unhealthy: %v", err)
	}
	// Hold the bad network for twice the yield grace (5 s): long enough
	// for any carousel to show.
	window := time.NewTimer(10 * time.Second)
	<-window.C
	if err := c.GatewayDown(false); err != nil {
		t.Fatal(err)
	}
	if err := harness.WaitFor(ctxFor(t, 20*time.Second), 100*time.Millisecond, func() bool {
		out, err := c.Ctl("n1", "service", "list", "-o", "json")
		return err == nil && !strings.Contains(out, `"unhealthy"`)
	}); err != nil {
		t.Fatalf("the nodes never recovered: %v", err)
	}
	if ex := c.Exited(); len(ex) > 0 {
		t.Fatalf("taskd exited on %v during the seed replay", ex)
	}
	if seq := macs(replay); len(seq) > 2 {
		t.Errorf("during the seed replay the vip moved %d times (%v); at most once allowed", len(seq)-1, seq)
	} else {
		t.Logf("seed replay: vip holders in order %v", seq)
	}

	// A foreign host claims the VIP.
	claimed := time.Now()
	if out, err := exec.Command("ip", "netns", "exec", c.Lab.NS("client"), "env", "TASKD_E2E_HELPER=claim", "VIP="+c.VIP, os.Args[0]).CombinedOutput(); err != nil {
		t.Fatalf("claim: %v %s", err, out)
	}
	if err := harness.WaitFor(ctxFor(t, 20*time.Second), 100*time.Millisecond, func() bool {
		out, err := c.Ctl("n1", "events", "--type", "vip_duplicate", "-o", "json")
		if err != nil {
			return false
		}
		var r struct {
			Events []struct {
				Time  time.Time         `json:"time"`
				Attrs map[string]string `json:"attrs"`
			} `json:"events"`
		}
		if json.Unmarshal([]byte(out), &r) != nil {
			return false
		}
		clientMAC, _ := c.Lab.MAC("client")
		for _, e := range r.Events {
			if e.Time.After(claimed.Add(-time.Second)) && e.Attrs["mac"] == clientMAC {
				return true
			}
		}
		return false
	}); err != nil {
		t.Fatalf("no vip_duplicate event naming the client's MAC: %v", err)
	}
	if n := vipaddr.Overlaps(vipaddr.ReadSamples(samples)); n > 0 {
		t.Fatalf("%d samples were answered by two MACs", n)
	}
}

// stripVolatile drops what changes by itself between two lists (the
// assignment and hold times) from taskctl vip list -o json.
func stripVolatile(t *testing.T, s string) string {
	t.Helper()
	var r struct {
		VIPs []struct {
			Service, Address, Interface, Preferred string
		} `json:"vips"`
	}
	if err := json.Unmarshal([]byte(s), &r); err != nil {
		t.Fatalf("vip list -o json: %v\n%s", err, s)
	}
	return fmt.Sprint(r.VIPs)
}
