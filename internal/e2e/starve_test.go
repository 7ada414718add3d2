package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/testenv"
)

// The CFS quotas (per 100 ms) of the starvation test's cgroup, shared with
// a busy loop. On ZooKeeper, 1000: the setting that made the original's
// client fence and rejoin twice in 45 s (2000 leaves an idle node on time).
// On the embedded store the node also runs an etcd member, and 1000 fences
// it before its own record can say anything; 2000 starves it as clearly.
const (
	starveQuotaZK       = 1000
	starveQuotaEmbedded = 2000
)

// TestStarvedLeader (issue 20), on both backends: the leader is moved into
// a cgroup with a tight CPU quota next to a busy loop. Want: it does not
// exit; it reports itself starved within a few seconds; the leadership
// moves once to a healthy node and stays there while the quota holds;
// `taskctl doctor` fails naming the cause; after the quota is lifted the
// node recovers, and the timeline shows both events.
func TestStarvedLeader(t *testing.T) {
	t.Run("embedded", func(t *testing.T) {
		testStarvedLeader(t, newCluster(t, 3, harness.Options{}), starveQuotaEmbedded)
	})
	t.Run("zookeeper", func(t *testing.T) {
		ens := testenv.StartEnsemble(t, 1)
		testStarvedLeader(t, newCluster(t, 3, harness.Options{Coordinator: ens.URL("/starve"), PKI: ens.PKI}), starveQuotaZK)
	})
}

// memberOf is the named member in n's answer.
func memberIn(ctx context.Context, n *harness.Node, name string) (*taskdv1.Member, bool) {
	r, err := n.Client().Cluster.ListMembers(ctx, connect.NewRequest(&taskdv1.ListMembersRequest{}))
	if err != nil {
		return nil, false
	}
	for _, m := range r.Msg.Members {
		if m.Name == name {
			return m, true
		}
	}
	return nil, false
}

func testStarvedLeader(t *testing.T, c *harness.Cluster, quotaUS int) {
	st, err := harness.WaitAgreed(ctxFor(t, 60*time.Second), c.Nodes, 0)
	if err != nil {
		t.Fatal(err)
	}
	victim := c.Node(st.Leader)
	healthy := others(c, victim.Name)
	cg := newCPUCgroup(t, quotaUS)
	if err := cg.Move(busyLoop(t)); err != nil {
		t.Fatal(err)
	}
	squeezed := time.Now()
	if err := cg.Move(victim.Proc.PID()); err != nil {
		t.Fatal(err)
	}

	// Starved, as the node itself says or as the healthy nodes read its
	// record (the starved node's API and store writes are slow).
	if err := harness.WaitFor(ctxFor(t, 30*time.Second), 100*time.Millisecond, func() bool {
		for _, asked := range []*harness.Node{healthy[0], victim} {
			m, ok := memberIn(ctxFor(t, 2*time.Second), asked, victim.Name)
			if ok && m.Starved && strings.Contains(m.StarvedReason, "heartbeats up to") {
				return true
			}
		}
		return false
	}); err != nil {
		t.Fatalf("%s not reported starved 30 s after its CPU quota: %v", victim.Name, err)
	}
	t.Logf("%s reported starved %v after the quota", victim.Name, time.Since(squeezed).Round(time.Millisecond))

	// The leadership moves once, to a healthy node.
	moved, err := harness.WaitAgreed(ctxFor(t, 30*time.Second), healthy, st.Epoch)
	if err != nil {
		t.Fatalf("the leadership did not move off the starved leader: %v", err)
	}
	if moved.Leader == victim.Name || moved.Epoch != st.Epoch+1 {
		t.Fatalf("leadership after starvation: %s epoch %d; want a healthy node at epoch %d", moved.Leader, moved.Epoch, st.Epoch+1)
	}
	// ... and stays there while the quota holds.
	hold := ctxFor(t, 20*time.Second)
	if err := harness.WaitFor(hold, 200*time.Millisecond, func() bool {
		s, ok := harness.Agreed(hold, healthy)
		return ok && (s.Leader != moved.Leader || s.Epoch != moved.Epoch)
	}); err == nil {
		s, _ := harness.Agreed(ctxFor(t, 5*time.Second), healthy)
		t.Fatalf("leadership moved again while %s was starved: %s epoch %d (was %s epoch %d)", victim.Name, s.Leader, s.Epoch, moved.Leader, moved.Epoch)
	}
	if victim.Proc.Exited() {
		t.Fatalf("starved %s exited with %d", victim.Name, victim.Proc.ExitCode())
	}
	// The operator is told: doctor fails with the cause.
	code, out := runTaskctl(t, healthy[0].CtlEnv(), "doctor")
	if code == 0 || !strings.Contains(out, victim.Name+": ") || !strings.Contains(out, "starved of CPU") || !strings.Contains(out, "heartbeats up to") {
		t.Fatalf("taskctl doctor while %s is starved: exit %d\n%s", victim.Name, code, out)
	}
	// At 1 % beside a busy loop the node may be between two sessions (it
	// fences and rejoins every 9-15 s; CI saw it down for a moment): the
	// list must show it starved once it is back, within a rejoin.
	if err := harness.WaitFor(ctxFor(t, 30*time.Second), 500*time.Millisecond, func() bool {
		code, out = runTaskctl(t, healthy[0].CtlEnv(), "service", "list")
		return code == 0 && strings.Contains(out, "starved of CPU (current priority 0 until it recovers): "+victim.Name)
	}); err != nil {
		t.Fatalf("taskctl service list while %s is starved: exit %d\n%s", victim.Name, code, out)
	}

	// Lift the quota: it recovers after its grace, and the leadership
	// stays where it went (equal priorities).
	if err := cg.Lift(); err != nil {
		t.Fatal(err)
	}
	lifted := time.Now()
	if err := harness.WaitFor(ctxFor(t, 60*time.Second), 200*time.Millisecond, func() bool {
		m, ok := memberIn(ctxFor(t, 2*time.Second), healthy[0], victim.Name)
		return ok && !m.Starved && m.CurrentPriority == 100
	}); err != nil {
		t.Fatalf("%s not recovered 60 s after the quota was lifted: %v", victim.Name, err)
	}
	t.Logf("%s recovered %v after the quota was lifted", victim.Name, time.Since(lifted).Round(time.Millisecond))
	if s, err := harness.WaitAgreed(ctxFor(t, 10*time.Second), c.Nodes, 0); err != nil || s.Leader != moved.Leader || s.Epoch != moved.Epoch {
		t.Fatalf("after recovery: leader %s epoch %d (%v); want %s epoch %d", s.Leader, s.Epoch, err, moved.Leader, moved.Epoch)
	}
	var starved, recovered *eventJSON
	evs := listEvents(t, healthy[0])
	for i := range evs {
		e := &evs[i]
		if e.Node != victim.Name {
			continue
		}
		switch {
		case e.Type == "starved" && starved == nil:
			starved = e
		case e.Type == "recovered" && starved != nil:
			recovered = e
		}
	}
	if starved == nil || recovered == nil {
		t.Fatalf("timeline of %s lacks starved then recovered: %+v / %+v", victim.Name, starved, recovered)
	}
	if starved.Attrs["heartbeat_late_max"] == "" || !strings.Contains(starved.Attrs["reason"], "heartbeats up to") {
		t.Fatalf("starved event without its figures: %+v", starved)
	}
	// The node itself noticed within seconds (its record reaches the
	// others later: its store writes are starved too).
	if took := starved.Time.Sub(squeezed); took > 10*time.Second {
		t.Fatalf("starved event %v after the quota, want within 10 s", took)
	}
	t.Logf("starved event %v after the quota: %s %v", starved.Time.Sub(squeezed).Round(time.Millisecond), starved.Message, starved.Attrs)
	if victim.Proc.Exited() {
		t.Fatalf("%s exited with %d", victim.Name, victim.Proc.ExitCode())
	}
}
