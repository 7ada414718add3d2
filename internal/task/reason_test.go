package task

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func runner(node string, running, capacity int, marks Marks) Runner {
	return Runner{Info: RunnerInfo{Node: node, Session: "s-" + node, Capacity: capacity, Types: []string{"sleep", "noop"}},
		Marks: marks, Live: true, Running: running, RunningByType: map[string]int{"sleep": running}}
}

func TestWaitReason(t *testing.T) {
	now := time.Date(2026, 3, 29, 0, 30, 0, 0, time.UTC) // the night Europe/Berlin moves to summer time
	backoff := now.Add(time.Minute)
	cases := []struct {
		name    string
		rec     Record
		runners []Runner
		want    string // substring; "" means dispatchable
		wake    time.Time
	}{
		{"dispatchable", Record{State: Waiting, Type: "sleep"}, []Runner{runner("n1", 0, 1, Marks{})}, "", time.Time{}},
		{"paused", Record{State: Paused, Type: "sleep"}, []Runner{runner("n1", 0, 1, Marks{})}, "paused by a user", time.Time{}},
		{"no runner for node", Record{State: Waiting, Type: "sleep", Node: "n9"}, []Runner{runner("n1", 0, 1, Marks{})},
			"no live runner matches constraint node=n9", time.Time{}},
		{"all full", Record{State: Waiting, Type: "sleep"}, []Runner{runner("n1", 1, 1, Marks{}), runner("n2", 2, 2, Marks{})},
			"every matching runner is full (2 full", time.Time{}},
		{"all cordoned", Record{State: Waiting, Type: "sleep"}, []Runner{runner("n1", 0, 1, Marks{Cordoned: true})},
			"cordoned", time.Time{}},
		{"no runners", Record{State: Waiting, Type: "sleep"}, nil, "no live runner runs type sleep", time.Time{}},
		{"backing off", Record{State: Waiting, Type: "sleep", NotBefore: backoff, Retries: 1, MaxRetries: 3,
			Error: &TaskError{Message: "disk on fire"}}, []Runner{runner("n1", 0, 1, Marks{})},
			"backing off after error: disk on fire; retry 1 of 3 at 2026-03-29T00:31:00Z", backoff},
		// 00:30 UTC is 01:30 in Berlin: outside 22:00-01:00, which crosses midnight.
		{"outside window crossing midnight", Record{State: Waiting, Type: "sleep", Window: &Window{Spec: "22:00-01:00", Zone: "Europe/Berlin"}},
			[]Runner{runner("n1", 0, 1, Marks{})}, "outside its run window 22:00-01:00 (Europe/Berlin); opens at 2026-03-29T20:00:00Z",
			time.Date(2026, 3, 29, 20, 0, 0, 0, time.UTC)}, // 22:00 CEST, after the DST change
		{"inside window crossing midnight", Record{State: Waiting, Type: "sleep", Window: &Window{Spec: "23:00-02:00", Zone: "Europe/Berlin"}},
			[]Runner{runner("n1", 0, 1, Marks{})}, "", time.Time{}},
		{"running", Record{State: Running, Type: "sleep"}, nil, "", time.Time{}},
	}
	for _, c := range cases {
		got, wake := c.rec.WaitReason(c.runners, now)
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("%s: reason %q, want %q", c.name, got, c.want)
		}
		if !wake.Equal(c.wake) {
			t.Errorf("%s: wake %v, want %v", c.name, wake, c.wake)
		}
	}
}

func TestAccepts(t *testing.T) {
	rn := runner("n1", 1, 4, Marks{})
	rn.Info.TypeCapacity = map[string]int{"sleep": 1}
	if ok, why := rn.Accepts(&Record{Type: "sleep"}); ok || !strings.Contains(why, "full for type sleep") {
		t.Errorf("per-type capacity not applied: %v %q", ok, why)
	}
	if ok, _ := rn.Accepts(&Record{Type: "noop"}); !ok {
		t.Error("noop refused though the runner has room")
	}
	if ok, _ := rn.Accepts(&Record{Type: "copy"}); ok {
		t.Error("a type the runner does not run was accepted")
	}
}

func TestTransitions(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	info := RunnerInfo{Node: "n1", Session: "s1"}
	r := &Record{State: Waiting, MaxRetries: 2}
	boom := errors.New("boom")
	for i, wantFinal := range []bool{false, false, true} {
		r.Assign(info, now)
		if !r.Owns("n1", "s1", i+1) {
			t.Fatalf("attempt %d not owned after Assign", i+1)
		}
		if final := r.Fail(now, boom, false, Backoff); final != wantFinal {
			t.Fatalf("retry %d: final %v", i, final)
		}
	}
	if r.State != Failed || r.Error.Code != "retryable" || !strings.Contains(r.Error.Message, "gave up after 2 retries") {
		t.Fatalf("after retries: %s %+v", r.State, r.Error)
	}
	if len(r.History) != 3 || r.History[2].Outcome != "failed" {
		t.Fatalf("history %+v", r.History)
	}

	p := &Record{State: Waiting, MaxRetries: 5}
	p.Assign(info, now)
	if !p.Fail(now, boom, true, Backoff) || p.State != Failed || p.Error.Code != "permanent" {
		t.Fatalf("permanent error: %s %+v", p.State, p.Error)
	}

	c := &Record{State: Waiting}
	c.Assign(info, now)
	c.Request = RequestPause
	if c.Park(now, "stopped", "") || c.State != Paused || c.Request != RequestNone {
		t.Fatalf("pause request: %s %q", c.State, c.Request)
	}
	c.State = Waiting
	c.Assign(info, now)
	c.Request = RequestCancel
	if !c.Park(now, "stopped", "") || c.State != Cancelled {
		t.Fatalf("cancel request: %s", c.State)
	}

	h := &Record{State: Waiting}
	for range 3 * historyLen {
		h.Assign(info, now)
		h.Park(now, "window closed", "")
	}
	if len(h.History) != historyLen || h.History[0].N != 1 || h.History[historyLen-1].N != 3*historyLen {
		t.Fatalf("history kept %d entries from %d to %d", len(h.History), h.History[0].N, h.History[len(h.History)-1].N)
	}
}

func TestBackoff(t *testing.T) {
	for retry, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 4: 8 * time.Second, 30: 5 * time.Minute} {
		if got := Backoff(retry); got != want {
			t.Errorf("Backoff(%d) = %v, want %v", retry, got, want)
		}
	}
}
