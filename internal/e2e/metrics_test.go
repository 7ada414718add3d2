package e2e

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/harness"
)

func scrape(t *testing.T, n *harness.Node) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := n.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestMetrics: /metrics reports the node's standing and the task center.
func TestMetrics(t *testing.T) {
	c := newCluster(t, 1, harness.Options{SessionTimeout: taskTimeout})
	leader := ready(t, c)
	id := create(t, leader, "sleep", `{"duration":"60s"}`)
	waitTask(t, c, id, 10*time.Second, "running", func(tk *taskdv1.Task) bool { return tk.State == "running" })
	var text string
	err := harness.WaitFor(ctxFor(t, 10*time.Second), 20*time.Millisecond, func() bool {
		text = scrape(t, leader)
		return strings.Contains(text, `taskd_tasks{state="running",type="sleep"} 1`)
	})
	if err != nil {
		t.Fatalf("running task not counted:\n%s", text)
	}
	for _, want := range []string{
		"taskd_is_leader 1",
		`taskd_session_state{state="running"} 1`,
		"taskd_ready 1",
		"taskd_dispatch_latency_seconds_count 1",
		"taskd_dispatch_assignments_total 1",
		// Issue 13: present from the start, before any fence.
		`taskd_fences_total{before_expiry="false"} 0`,
		`taskd_fences_total{before_expiry="true"} 0`,
		// Starvation (issue 20): measured, and this node is not starved.
		"taskd_starved 0",
		"taskd_heartbeat_lateness_seconds_bucket",
		"taskd_heartbeat_round_trip_seconds_bucket",
		"taskd_sched_latency_p99_seconds",
		"taskd_cgroup_cpu_throttled_periods_total",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Issue 13: label values are words joined by underscores; an attempt
	// ended by a closed window was counted as outcome="window closed".
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, "#") && regexp.MustCompile(`="[^"]* [^"]*"`).MatchString(line) {
			t.Errorf("/metrics label value with a space: %s", line)
		}
	}
}
