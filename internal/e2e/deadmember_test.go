package e2e

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/harness"
)

// serviceList is the part of `taskctl service list -o json` these tests read.
type serviceList struct {
	Self        string          `json:"self"`
	SelfSession string          `json:"self_session"`
	Members     []serviceMember `json:"members"`
}

type serviceMember struct {
	Name  string     `json:"name"`
	State string     `json:"state"`
	Since *time.Time `json:"since"`
}

func listService(t *testing.T, n *harness.Node) (serviceList, string) {
	t.Helper()
	var v serviceList
	code, out := runTaskctl(t, n.CtlEnv(), "service", "list", "-o", "json")
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil {
		t.Logf("taskctl service list -o json: exit %d\n%s", code, out)
	}
	return v, out
}

// TestDeadMemberVisible plays the operator of issue 13 (bugs 1 and 3) on
// both backends: after kill -9 of one of three nodes, `service list` shows
// it as down with since when (it showed two rows), `doctor` fails naming
// it (it printed ok and exited 0), and `events --node` of the dead node
// still shows its history from its ring in the store (it was empty). A
// live member cannot be forgotten; the dead one can, and is gone then.
func TestDeadMemberVisible(t *testing.T) {
	backends(t, func(t *testing.T, c *harness.Cluster) {
		ready(t, c)
		dead, asked := c.Nodes[0], c.Nodes[1]
		env := asked.CtlEnv()
		// The dead node's ring holds its events before it dies.
		if err := harness.WaitFor(ctxFor(t, 20*time.Second), 100*time.Millisecond, func() bool {
			return len(nodeEvents(t, env, dead.Name)) > 0
		}); err != nil {
			t.Fatalf("no events of %s while it runs", dead.Name)
		}
		dead.Kill()
		killed := time.Now()

		// Wait until its session has expired: it is no longer listed up.
		var v serviceList
		var out string
		err := harness.WaitFor(ctxFor(t, 30*time.Second), 200*time.Millisecond, func() bool {
			v, out = listService(t, asked)
			for _, m := range v.Members {
				if m.Name == dead.Name && m.State != "down" {
					return false
				}
			}
			return len(v.Members) > 0
		})
		if err != nil {
			t.Fatalf("%s never stopped being listed up:\n%s", dead.Name, out)
		}
		if !slices.ContainsFunc(v.Members, func(m serviceMember) bool { return m.Name == dead.Name && m.State == "down" }) {
			t.Errorf("service list does not show the dead %s as down:\n%s", dead.Name, out)
		}
		if len(v.Members) != 3 {
			t.Errorf("service list has %d rows, want 3:\n%s", len(v.Members), out)
		}
		for _, m := range v.Members {
			switch {
			case m.Name == dead.Name && (m.Since == nil || m.Since.After(killed) || m.Since.Before(killed.Add(-15*time.Second))):
				t.Errorf("%s down since %v; killed at %v, last seen at most 10 s before", m.Name, m.Since, killed)
			case m.Name != dead.Name && m.State != "up":
				t.Errorf("%s is %s, want up:\n%s", m.Name, m.State, out)
			}
		}
		if code, table := runTaskctl(t, env, "service", "list"); code != 0 || !strings.Contains(table, "down: "+dead.Name) {
			t.Errorf("service list table: exit %d\n%s", code, table)
		} else {
			t.Logf("taskctl service list:\n%s", table)
		}

		code, out := runTaskctl(t, env, "doctor")
		if code != 8 || !strings.Contains(out, "FAIL  member "+dead.Name+" is down: last seen") {
			t.Errorf("doctor with %s dead: exit %d, want 8 naming it\n%s", dead.Name, code, out)
		} else {
			t.Logf("taskctl doctor:\n%s", out)
		}

		evs := nodeEvents(t, env, dead.Name)
		if len(evs) == 0 {
			t.Errorf("events --node %s is empty although its ring is in the store", dead.Name)
		}
		for _, e := range evs {
			if e.Node != dead.Name {
				t.Errorf("events --node %s returned an event of %s", dead.Name, e.Node)
			}
		}

		if code, out := runTaskctl(t, env, "service", "forget", asked.Name); code != 6 || !strings.Contains(out, "live session") {
			t.Errorf("forget the live %s: exit %d, want 6\n%s", asked.Name, code, out)
		}
		if code, out := runTaskctl(t, env, "service", "forget", dead.Name); code != 0 {
			t.Fatalf("forget %s: exit %d\n%s", dead.Name, code, out)
		}
		err = harness.WaitFor(ctxFor(t, 20*time.Second), 200*time.Millisecond, func() bool {
			v, out = listService(t, asked)
			return len(v.Members) == 2
		})
		if err != nil {
			t.Errorf("%s still listed after forget:\n%s", dead.Name, out)
		}
	})
}

// nodeEvents is `taskctl events --node NODE -o json`.
func nodeEvents(t *testing.T, env []string, node string) []eventJSON {
	t.Helper()
	code, out := runTaskctl(t, env, "events", "--node", node, "-o", "json")
	i := strings.Index(out, "{")
	var r struct {
		Events []eventJSON `json:"events"`
	}
	if code != 0 || i < 0 || json.Unmarshal([]byte(out[i:]), &r) != nil {
		t.Fatalf("taskctl events --node %s: exit %d\n%s", node, code, out)
	}
	return r.Events
}

// TestQuorumLossFailsFast plays issue 13 bugs 6 and 1 on the embedded
// store: with two of three nodes killed, task list/show/create on the
// survivor answer at once (they waited 10 s and said deadline_exceeded)
// with exit 3 and the reason, and doctor names the unreachable members
// (it said "etcd grant lease : coord: store unavailable").
func TestQuorumLossFailsFast(t *testing.T) {
	c := newCluster(t, 3, harness.Options{SessionTimeout: taskTimeout})
	ready(t, c)
	survivor := c.Nodes[2]
	env := survivor.CtlEnv()
	code, id := runTaskctl(t, env, "task", "create", "noop")
	if code != 0 {
		t.Fatalf("task create: exit %d\n%s", code, id)
	}
	id = strings.TrimSpace(id)
	c.Nodes[0].Kill()
	c.Nodes[1].Kill()
	var v serviceList
	var out string
	err := harness.WaitFor(ctxFor(t, 30*time.Second), 200*time.Millisecond, func() bool {
		v, out = listService(t, survivor)
		return v.SelfSession != "" && v.SelfSession != "running"
	})
	if err != nil {
		t.Fatalf("%s never lost its session:\n%s", survivor.Name, out)
	}
	for _, args := range [][]string{{"task", "list"}, {"task", "show", id}, {"task", "create", "noop"}} {
		start := time.Now()
		code, out := runTaskctl(t, env, args...)
		took := time.Since(start)
		if code != 3 || !strings.Contains(out, "no store session") || took > 3*time.Second {
			t.Errorf("taskctl %s without quorum: exit %d after %v, want 3 at once with the reason\n%s", strings.Join(args, " "), code, took, out)
		} else {
			t.Logf("taskctl %s: exit %d after %v: %s", strings.Join(args, " "), code, took.Round(time.Millisecond), strings.TrimSpace(out))
		}
	}
	code, out = runTaskctl(t, env, "doctor")
	if code != 8 || !strings.Contains(out, "members n1, n2 are unreachable") {
		t.Errorf("doctor without quorum: exit %d, want 8 naming n1 and n2 as unreachable\n%s", code, out)
	} else {
		t.Logf("taskctl doctor:\n%s", out)
	}
}
