package e2e

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/harness"
)

// TestScheduleKillLeaderAtTick kills -9 the leader at the tick instant,
// several times, on a three-node cluster of each backend, and restarts it:
// every tick from the first to the last has exactly one task (0 missed, 0
// doubled), and the schedule recorded no missed or skipped run.
func TestScheduleKillLeaderAtTick(t *testing.T) {
	const (
		every  = 10 * time.Second
		trials = 3
	)
	backends(t, func(t *testing.T, c *harness.Cluster) {
		leader := ready(t, c)
		code, out := runTaskctl(t, leader.CtlEnv(), "schedule", "create", "tick", "--every", every.String(),
			"noop", "--overlap", "allow", "-o", "json")
		if code != 0 {
			t.Fatalf("schedule create: exit %d: %s", code, out)
		}
		var sc struct {
			Created time.Time `json:"created"`
		}
		if err := json.Unmarshal([]byte(out), &sc); err != nil {
			t.Fatalf("schedule create -o json: %v: %s", err, out)
		}
		anchor := sc.Created.Truncate(time.Second)
		first := harness.NextTick(anchor, every, 0, anchor)
		rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 2))
		var epoch int64
		for trial := range trials {
			st, err := harness.WaitAgreed(ctxFor(t, 60*time.Second), c.Nodes, epoch)
			if err != nil {
				t.Fatalf("trial %d: no leader: %v", trial+1, err)
			}
			epoch = st.Epoch
			victim := c.Node(st.Leader)
			tick := harness.NextTick(anchor, every, 2*time.Second, time.Now())
			// Mostly just before the tick (the successor fires it), some
			// just after (the old leader may have written it).
			at := tick.Add(time.Duration(rng.IntN(41)-30) * time.Millisecond)
			timer := time.NewTimer(time.Until(at))
			<-timer.C
			victim.Kill()
			nst, err := harness.WaitAgreed(ctxFor(t, 60*time.Second), others(c, victim.Name), epoch)
			if err != nil {
				t.Fatalf("trial %d: no successor: %v", trial+1, err)
			}
			t.Logf("trial %d: kill -9 of leader %s at tick %s%+v; %s leads (epoch %d)", trial+1, victim.Name,
				tick.Format(time.TimeOnly), at.Sub(tick).Round(time.Millisecond), nst.Leader, nst.Epoch)
			if err := victim.Start(); err != nil {
				t.Fatal(err)
			}
			epoch = nst.Epoch - 1
		}
		asker := c.Running()[0]
		last := harness.NextTick(anchor, every, 0, time.Now())
		var made map[int64]int
		err := harness.WaitFor(ctxFor(t, 40*time.Second), 100*time.Millisecond, func() bool {
			m, err := harness.TicksMade(context.Background(), asker, "tick")
			made = m
			return err == nil && m[last.UnixNano()] > 0
		})
		if err != nil {
			t.Fatalf("tick %s never fired: %v", last.Format(time.TimeOnly), err)
		}
		got := harness.CountTicks(made, anchor, every, first, last)
		if got.Missed != 0 || got.Doubled != 0 || got.Fired < trials {
			t.Fatalf("ticks: %+v", got)
		}
		resp, err := asker.Client().Schedules.GetSchedule(ctxFor(t, 10*time.Second), connect.NewRequest(&taskdv1.ScheduleRef{Name: "tick"}))
		if err != nil {
			t.Fatal(err)
		}
		caught := 0
		for _, r := range resp.Msg.Schedule.Runs {
			switch r.Outcome {
			case "missed", "skipped":
				t.Errorf("run %v", r)
			case "caught_up":
				caught++
			}
		}
		t.Logf("%d ticks fired exactly once (%d caught up by a new leader) over %d kills at the tick", got.Fired, caught, trials)
	})
}

// TestScheduleCLI covers the commands and their bad input on one node:
// a refused create exits 2 and stores nothing.
func TestScheduleCLI(t *testing.T) {
	c := newCluster(t, 1, harness.Options{SessionTimeout: taskTimeout})
	n := ready(t, c)
	ctl := func(args ...string) (int, string) {
		return runTaskctl(t, n.CtlEnv(), args...)
	}
	for _, bad := range [][]string{
		{"create", "x", "noop"}, // neither --cron nor --every
		{"create", "x", "--cron", "* * * * *", "--every", "1h", "noop"}, // both
		{"create", "x", "--cron", "61 * * * *", "noop"},
		{"create", "x", "--cron", "0 2 * * *", "--zone", "Mars/Base", "noop"},
		{"create", "x", "--every", "100ms", "noop"},
		{"create", "../../election/epoch", "--every", "1h", "noop"},
		{"create", "a\x01b", "--every", "1h", "noop"},
		{"create", strings.Repeat("n", 64), "--every", "1h", "noop"},
		{"create", "x", "--every", "1h", "nosuchtype"},
		{"create", "x", "--every", "1h", "sleep", "--spec", `{"duration":"x"}`},
		{"create", "x", "--every", "1h", "noop", "--overlap", "sometimes"},
		{"create", "x", "--every", "1h", "noop", "--window", "25:00-01:00"},
		{"create", "x", "--every", "1h", "noop", "--jitter", "2h"},
		{"create", "x", "--every", "1h", "noop", "--keep-last", "0"},
		{"pause", "../x"},
		{"trigger", "x", "--request-id", "not-a-uuid"},
	} {
		if code, out := ctl(append([]string{"schedule"}, bad...)...); code != 2 {
			t.Errorf("schedule %q: exit %d, want 2: %s", bad, code, out)
		}
	}
	if code, out := ctl("schedule", "list", "-o", "json"); code != 0 || strings.Contains(out, `"name"`) {
		t.Fatalf("after refused creates: exit %d, %s", code, out)
	}
	if code, out := ctl("schedule", "show", "nosuch"); code != 4 {
		t.Fatalf("show of an unknown schedule: exit %d: %s", code, out)
	}
	code, out := ctl("schedule", "create", "nightly", "--cron", "30 2 * * *", "--zone", "Europe/Berlin", "sleep", "--spec", `{"duration":"1s"}`)
	if code != 0 || strings.Count(out, "next run:") != 5 {
		t.Fatalf("create: exit %d: %s", code, out)
	}
	if code, out := ctl("schedule", "create", "nightly", "--every", "1h", "noop"); code != 6 {
		t.Fatalf("create of a taken name: exit %d, want 6: %s", code, out)
	}
	id := "7b2fcaee-27fd-452f-b1fd-6e71302e3c26"
	code, out = ctl("schedule", "trigger", "nightly", "--request-id", id)
	if code != 0 {
		t.Fatalf("trigger: exit %d: %s", code, out)
	}
	taskID := strings.TrimSpace(out)
	// The same request again runs nothing more.
	if code, out := ctl("schedule", "trigger", "nightly", "--request-id", id, "-o", "json"); code != 0 || !strings.Contains(out, taskID) {
		t.Fatalf("repeated trigger: exit %d: %s", code, out)
	}
	made, err := harness.TicksMade(context.Background(), n, "nightly")
	if err != nil || len(made) != 1 {
		t.Fatalf("tasks of nightly after two identical triggers: %v %v", made, err)
	}
	if code, out := ctl("schedule", "pause", "nightly", "--note", "disk swap"); code != 0 {
		t.Fatalf("pause: %d %s", code, out)
	}
	if code, out := ctl("schedule", "list"); code != 0 || !strings.Contains(out, "paused: disk swap") || !strings.Contains(out, "triggered") {
		t.Fatalf("list: %d %s", code, out)
	}
	if code, out := ctl("schedule", "resume", "nightly"); code != 0 || !strings.Contains(out, "next run") {
		t.Fatalf("resume: %d %s", code, out)
	}
	if code, out := ctl("schedule", "show", "nightly", "-o", "json"); code != 0 || !strings.Contains(out, `"outcome":"triggered"`) {
		t.Fatalf("show: %d %s", code, out)
	}
	if code, out := ctl("schedule", "delete", "nightly"); code != 0 {
		t.Fatalf("delete: %d %s", code, out)
	}
	if code, _ := ctl("schedule", "delete", "nightly"); code != 4 {
		t.Fatalf("second delete: exit %d, want 4", code)
	}
}
