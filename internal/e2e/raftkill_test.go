package e2e

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/harness"
)

// TestRaftLeaderRunnerKill (embedded store only): the task runs on the
// node that hosts the etcd raft leader, which is killed with -9. The new
// raft leader renews every lease, so the store alone would keep the dead
// runner's session for an election and a whole timeout more; the
// surviving members' raft transports saw it go, and the taskd leader ends
// its session (a session_revoked event naming it, witnessed by both
// survivors). The task resumes on another runner, and the ledger shows at
// most one active attempt at any instant.
func TestRaftLeaderRunnerKill(t *testing.T) {
	c := newCluster(t, 3, harness.Options{SessionTimeout: taskTimeout})
	leader := ready(t, c)
	var raftHost *harness.Node
	err := harness.WaitFor(ctxFor(t, 30*time.Second), 50*time.Millisecond, func() bool {
		for _, n := range c.Nodes {
			if hosts, err := n.LeadsRaft(context.Background()); err == nil && hosts && n != leader {
				raftHost = n
				return true
			}
		}
		return false
	})
	if err != nil {
		t.Fatal("no node other than the taskd leader hosts the etcd raft leader")
	}
	// Only the raft host may run the task.
	var other *harness.Node
	for _, n := range c.Nodes {
		if n != raftHost {
			cordon(t, leader, n.Name)
		}
		if n != raftHost && n != leader {
			other = n
		}
	}
	ledger := filepath.Join(t.TempDir(), "ledger")
	const interval = 500 * time.Millisecond
	id := create(t, leader, "sleep", sleepSpec(15*time.Second, interval, ledger))
	waitTask(t, c, id, 10*time.Second, "progress on attempt 1", func(tk *taskdv1.Task) bool {
		return tk.State == "running" && tk.Runner == raftHost.Name && tk.Progress.GetDone() >= 1000
	})
	if _, err := leader.Client().Runners.SetRunnerMarks(ctxFor(t, 5*time.Second), connect.NewRequest(
		&taskdv1.SetRunnerMarksRequest{Node: other.Name, Action: "uncordon"})); err != nil {
		t.Fatal(err)
	}
	if hosts, err := raftHost.LeadsRaft(context.Background()); err != nil || !hosts {
		t.Fatalf("%s no longer hosts the raft leader (%v): the test cannot play its case", raftHost.Name, err)
	}
	killed := time.Now()
	raftHost.Kill()
	tk := waitTask(t, c, id, taskTimeout+15*time.Second, "attempt 2 running", func(tk *taskdv1.Task) bool {
		return tk.Attempt == 2 && tk.State == "running"
	})
	t.Logf("%s (raft leader and runner) killed; attempt 2 running on %s %v later (session timeout %v)", raftHost.Name, tk.Runner, time.Since(killed).Round(time.Millisecond), taskTimeout)
	var revoked *eventJSON
	err = harness.WaitFor(ctxFor(t, 10*time.Second), 100*time.Millisecond, func() bool {
		n := 0
		for _, e := range listEvents(t, leader) {
			if e.Type == "session_revoked" {
				revoked = &e
				n++
			}
		}
		if n > 1 {
			t.Fatalf("%d sessions ended, want only the killed %s's", n, raftHost.Name)
		}
		return n == 1
	})
	fenced := ""
	if err != nil {
		fenced = survivorFenced(t, leader, killed, raftHost.Name)
	}
	switch {
	case err == nil:
		if revoked.Attrs["member"] != raftHost.Name {
			t.Fatalf("session_revoked names %q, want the killed %s: %+v", revoked.Attrs["member"], raftHost.Name, revoked)
		}
		witnesses := strings.Fields(strings.Trim(revoked.Attrs["witnesses"], "[]"))
		for _, w := range []string{leader.Name, other.Name} {
			if !slices.Contains(witnesses, w) {
				t.Errorf("session_revoked witnesses %q lack %s", revoked.Attrs["witnesses"], w)
			}
		}
	case fenced != "":
		// A survivor that fenced during the raft election had no session
		// when the silence was a timeout old: a known node without a
		// session blocks the revocation (it may be a live etcd member,
		// even the raft leader), and the lease ended the dead member's
		// session instead (seen once in CI).
		t.Logf("no session_revoked: %s fenced after the kill; the lease ended %s's session", fenced, raftHost.Name)
	default:
		t.Fatalf("no session_revoked event: the dead raft leader's session ended by its lease alone")
	}
	waitTask(t, c, id, 40*time.Second, "success", func(tk *taskdv1.Task) bool { return tk.State == "succeeded" })
	checkOneActive(t, readLedger(t, ledger))
	// The survivors stayed linked: neither of their sessions was ended.
	for _, e := range listEvents(t, leader) {
		if e.Type == "session_revoked" && e.Attrs["member"] != raftHost.Name {
			t.Errorf("a live member's session was ended: %+v", e)
		}
	}
}

// survivorFenced names a node other than dead that fenced after since
// ("" if none).
func survivorFenced(t *testing.T, n *harness.Node, since time.Time, dead string) string {
	t.Helper()
	for _, e := range listEvents(t, n) {
		if e.Type == "fence_started" && e.Node != dead && e.Time.After(since) {
			return e.Node
		}
	}
	return ""
}
