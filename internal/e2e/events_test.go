package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/testenv"
)

type eventJSON struct {
	Time    time.Time         `json:"time"`
	Node    string            `json:"node"`
	Type    string            `json:"type"`
	Message string            `json:"message"`
	Attrs   map[string]string `json:"attrs"`
}

func listEvents(t *testing.T, n *harness.Node) []eventJSON {
	t.Helper()
	code, out := runTaskctl(t, n.CtlEnv(), "events", "-o", "json")
	if code != 0 {
		t.Fatalf("taskctl events: exit %d\n%s", code, out)
	}
	// Warnings about unreachable parts go to stderr, before the JSON.
	i := strings.Index(out, "{")
	var r struct {
		Events []eventJSON `json:"events"`
	}
	if i < 0 || json.Unmarshal([]byte(out[i:]), &r) != nil {
		t.Fatalf("taskctl events -o json: %s", out)
	}
	return r.Events
}

// TestEventsTimeline: one command shows the merged timeline of three
// nodes in time order (starts with the previous exit, elections with their
// epochs), and still does after the coordinator is gone, from the nodes'
// local journals.
func TestEventsTimeline(t *testing.T) {
	ens := testenv.StartEnsemble(t, 1)
	c := newCluster(t, 3, harness.Options{Coordinator: ens.URL("/ev"), PKI: ens.PKI, SessionTimeout: taskTimeout})
	first := ready(t, c)
	first.Kill()
	st, err := harness.WaitAgreed(ctxFor(t, 30*time.Second), others(c, first.Name), 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := harness.WaitAgreed(ctxFor(t, 30*time.Second), c.Nodes, st.Epoch-1); err != nil {
		t.Fatal(err)
	}
	asker := c.Node(st.Leader)
	evs := listEvents(t, asker)
	for i := 1; i < len(evs); i++ {
		if evs[i].Time.Before(evs[i-1].Time) {
			t.Fatalf("events out of order at %d: %v then %v", i, evs[i-1], evs[i])
		}
	}
	starts, elections := map[string]int{}, map[string]string{}
	for _, e := range evs {
		switch e.Type {
		case "start":
			starts[e.Node]++
		case "election":
			elections[e.Attrs["epoch"]] = e.Node
		}
	}
	if len(starts) != 3 || starts[first.Name] != 2 {
		t.Errorf("start events per node %v; want all three, and two for the restarted %s", starts, first.Name)
	}
	if elections["1"] != first.Name || elections[strconv.FormatInt(st.Epoch, 10)] != st.Leader {
		t.Errorf("elections %v; want epoch 1 by %s and epoch %d by %s", elections, first.Name, st.Epoch, st.Leader)
	}
	var restarted *eventJSON
	for i := range evs {
		if evs[i].Type == "start" && evs[i].Node == first.Name {
			restarted = &evs[i]
		}
	}
	if restarted == nil || restarted.Attrs["previous_exit"] != "none" || !strings.Contains(restarted.Attrs["previous_reason"], "killed") {
		t.Errorf("restart after kill -9: %+v; want previous_exit none and a reason naming a kill", restarted)
	}

	// --follow prints new events as they happen.
	logPath := filepath.Join(t.TempDir(), "follow.log")
	f, err := harness.StartProc(logPath, taskctlBin, "--endpoint", asker.API, "--data-dir", asker.DataDir, "events", "--follow", "--type", "priority")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Signal(syscall.SIGKILL); f.Wait() })
	if code, out := runTaskctl(t, asker.CtlEnv(), "service", "set-priority", first.Name, "150"); code != 0 {
		t.Fatalf("set-priority: %d %s", code, out)
	}
	err = harness.WaitFor(ctxFor(t, 20*time.Second), 50*time.Millisecond, func() bool {
		b, _ := os.ReadFile(logPath)
		return strings.Contains(string(b), "priority changed") && strings.Contains(string(b), "priority=150")
	})
	if err != nil {
		b, _ := os.ReadFile(logPath)
		t.Fatalf("events --follow did not show the priority change:\n%s", b)
	}
	f.Signal(syscall.SIGKILL)
	f.Wait()

	// The coordinator goes away: the timeline is still there, from the
	// local journals, and shows the sessions losing contact.
	for _, z := range ens.Servers {
		z.Kill()
	}
	err = harness.WaitFor(ctxFor(t, 20*time.Second), 100*time.Millisecond, func() bool {
		for _, e := range listEvents(t, asker) {
			if e.Type == "session" && e.Attrs["to"] == "connecting" {
				return true
			}
		}
		return false
	})
	if err != nil {
		t.Fatalf("no session event after the coordinator's loss: %v", err)
	}
	after := listEvents(t, asker)
	if len(after) < len(evs) {
		t.Fatalf("the timeline lost events with the coordinator: %d before, %d after", len(evs), len(after))
	}
}

// TestSeedZKServerLossTimeline replays the seed's second incident: a
// ZooKeeper server of the ensemble dies under running nodes. The timeline
// (printed with -v) must show no fence, no restart and no expiry.
func TestSeedZKServerLossTimeline(t *testing.T) {
	ens := testenv.StartEnsemble(t, 3)
	c := newCluster(t, 3, harness.Options{Coordinator: ens.URL("/seed"), PKI: ens.PKI})
	leader := ready(t, c)
	lost := ens.Servers[0]
	lost.Kill()
	// Two session timeouts without the server: long enough for any expiry.
	hold := time.NewTimer(12 * time.Second) // the fault's length, not a wait for a condition
	<-hold.C
	if err := lost.Start(); err != nil {
		t.Fatal(err)
	}
	code, table := runTaskctl(t, leader.CtlEnv(), "events")
	if code != 0 {
		t.Fatalf("taskctl events: %d\n%s", code, table)
	}
	t.Logf("zookeeper server %d killed at the start of the hold; taskctl events:\n%s", lost.ID, table)
	for _, e := range listEvents(t, leader) {
		switch {
		case e.Type == "fence_started" || e.Type == "fence_finished":
			t.Errorf("%s fenced: %+v", e.Node, e)
		case e.Type == "session" && e.Attrs["to"] == "expired":
			t.Errorf("%s's session expired: %+v", e.Node, e)
		}
	}
	for _, n := range c.Nodes {
		if n.Proc.Exited() {
			t.Errorf("%s exited", n.Name)
		}
	}
}
