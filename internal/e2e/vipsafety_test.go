package e2e

import (
	"encoding/json"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/testenv"
	"github.com/taskd/taskd/internal/vipaddr"
)

// vipState is one VIP of `taskctl vip list -o json`.
type vipState struct {
	Service        string            `json:"service"`
	Holder         string            `json:"holder"`
	Up             bool              `json:"up"`
	Error          string            `json:"error"`
	Assigned       string            `json:"assigned"`
	AssignedReason string            `json:"assigned_reason"`
	Refused        map[string]string `json:"refused"`
}

func listVIPs(c *harness.VIPCluster, from string) ([]vipState, error) {
	out, err := c.Ctl(from, "vip", "list", "-o", "json")
	if err != nil {
		return nil, err
	}
	var r struct {
		VIPs []vipState `json:"vips"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return nil, err
	}
	return r.VIPs, nil
}

// TestVIPAllowlistRefusal: n1 leads (highest priority) but its
// --vip-allow-cidr excludes the VIP. The VIP is held by another node, never
// by n1, also when its holder is killed; vip list and doctor say that n1
// refuses it and why; a drain to n1 is refused.
func TestVIPAllowlistRefusal(t *testing.T) {
	testenv.NeedNetns(t)
	c, err := harness.NewVIPCluster(t.TempDir(), taskdBin, taskctlBin, 6*time.Second)
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
	c.NodeExtra = map[string][]string{"n1": {"--priority", "200", "--vip-allow-cidr", "10.99.0.0/16", "--vip-allow-interface", "eth0"}}
	c.Seedless = map[string]bool{"n1": true}
	if err := c.StartAll(); err != nil {
		t.Fatal(err)
	}
	samples, sampler, err := c.StartSampler(3*time.Minute, []string{"TASKD_E2E_HELPER=arpsample"}, os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sampler.Signal(syscall.SIGKILL); sampler.Wait() })
	n1MAC, err := c.Lab.MAC("n1")
	if err != nil {
		t.Fatal(err)
	}
	if err := harness.WaitFor(ctxFor(t, 60*time.Second), 100*time.Millisecond, func() bool {
		l, _ := c.Leader("n2")
		return l == "n1"
	}); err != nil {
		t.Fatalf("n1 (priority 200) never led: %v", err)
	}
	// n2 and n3 seed the vip only when they lead, and one of them may have
	// led before n1 joined: its assignment then carries its own reason.
	// Start from no vip (gone from every interface), so that n1, the
	// leader, makes the assignment. Set it: n1 refuses it, the others
	// allow it.
	if out, err := c.Ctl("n1", "vip", "delete", "iscsi"); err != nil && !strings.Contains(err.Error(), "exit status 4") {
		t.Fatalf("vip delete: %v\n%s", err, out)
	}
	if err := harness.WaitFor(ctxFor(t, 30*time.Second), 100*time.Millisecond, func() bool {
		for _, n := range harness.VIPNodes {
			if _, ok, _ := c.Lab.Has(n, c.VIP); ok {
				return false
			}
		}
		return true
	}); err != nil {
		t.Fatalf("the seeded vip was never released: %v", err)
	}
	if out, err := c.Ctl("n1", "vip", "set", "iscsi", c.VIP, "--interface", "eth0"); err != nil {
		t.Fatalf("vip set: %v\n%s", err, out)
	}
	var st vipState
	var lerr error
	if err := harness.WaitFor(ctxFor(t, 30*time.Second), 100*time.Millisecond, func() bool {
		var vs []vipState
		vs, lerr = listVIPs(c, "n2")
		if lerr != nil || len(vs) != 1 {
			return false
		}
		st = vs[0]
		return st.Up && st.Holder != "" && st.Refused["n1"] != ""
	}); err != nil {
		t.Fatalf("the vip never came up elsewhere with n1's refusal listed: %+v (%v; last list: %v)", st, err, lerr)
	}
	if st.Holder == "n1" || !strings.Contains(st.Refused["n1"], "--vip-allow-cidr (10.99.0.0/16)") ||
		!strings.Contains(st.AssignedReason, "n1 refuses it") {
		t.Fatalf("vip list: %+v; want a holder other than n1, n1's refusal naming --vip-allow-cidr, and the reason in the assignment", st)
	}
	first := st.Holder
	if _, ok, _ := c.Lab.Has("n1", c.VIP); ok {
		t.Fatal("n1 has the vip on its interface")
	}
	if _, ok, _ := c.Lab.Has(first, c.VIP); !ok {
		t.Fatalf("the holder %s does not have the vip on its interface", first)
	}
	out, err := c.Ctl("n1", "vip", "drain", "iscsi", "--to", "n1")
	if err == nil || !strings.Contains(out, "n1 refuses it") {
		t.Fatalf("drain to n1: %v\n%s; want a refusal naming n1's allowlist", err, out)
	}
	out, _ = c.Ctl("n1", "doctor")
	if !strings.Contains(out, "note  vip iscsi ("+c.VIP+"/32) is never assigned to n1: ") {
		t.Fatalf("doctor does not explain n1's refusal:\n%s", out)
	}

	// The holder dies: the vip goes to the third node, not to the leader.
	killed := time.Now()
	c.Kill(first)
	firstMAC, _ := c.Lab.MAC(first)
	var mac string
	if err := harness.WaitFor(ctxFor(t, 30*time.Second), 20*time.Millisecond, func() bool {
		var ok bool
		_, mac, ok = vipaddr.FirstAnswer(vipaddr.ReadSamples(samples), killed, firstMAC)
		return ok
	}); err != nil {
		t.Fatalf("nobody answers for the vip after %s was killed: %v", first, err)
	}
	if holder := c.NodeOf(mac); holder == "n1" || holder == first {
		t.Fatalf("after %s was killed the vip answers on %s", first, holder)
	}
	for _, s := range vipaddr.ReadSamples(samples) {
		for _, m := range s.MACs {
			if m == n1MAC {
				t.Fatalf("n1 answered for the vip at %v although its allowlist refuses it", time.Unix(0, s.At))
			}
		}
	}
	if n := vipaddr.Overlaps(vipaddr.ReadSamples(samples)); n > 0 {
		t.Fatalf("%d samples were answered by two MACs", n)
	}
}
