package schedule

import (
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/taskd/taskd/internal/task"
)

func testSchedule(t *testing.T, spec Spec, overlap Overlap, created time.Time) *Schedule {
	t.Helper()
	sc := &Schedule{Name: "nightly", UID: uuid.NewString(), Spec: spec, Overlap: overlap, CatchUp: Duration(time.Hour),
		KeepLast: 10, Since: created, Created: created, Updated: created, Template: Template{Type: "noop"}}
	if err := sc.Validate(); err != nil {
		t.Fatal(err)
	}
	return sc
}

func testView(t *testing.T, sc *Schedule, st *State, open ...*task.Record) view {
	t.Helper()
	tt, err := sc.Timetable()
	if err != nil {
		t.Fatal(err)
	}
	if st == nil {
		st = &State{UID: sc.UID, Name: sc.Name}
	}
	return view{sc: sc, tt: tt, st: st, open: open}
}

func openTask(id string, req task.Request) *task.Record {
	return &task.Record{ID: id, State: task.Running, Request: req, Schedule: "nightly"}
}

func lastRun(t *testing.T, st *State) Run {
	t.Helper()
	r, ok := st.LastRun()
	if !ok {
		t.Fatal("no run recorded")
	}
	return r
}

// TestPlanTicks covers when a tick fires, is caught up or missed, with
// an injected clock and leader start.
func TestPlanTicks(t *testing.T) {
	created := utc("2025-01-01T00:00:00Z")
	hourly := Spec{Cron: "0 * * * *", Zone: "UTC"}
	tick := utc("2025-01-01T05:00:00Z")
	cases := []struct {
		name      string
		catchUp   time.Duration
		lastTick  time.Time
		since     time.Time // leader start
		now       time.Time
		want      Outcome // "" : nothing to do
		wantTick  time.Time
		wantCount int // missed count recorded before the outcome
		wantWake  time.Time
	}{
		{name: "not due yet", catchUp: time.Hour, lastTick: utc("2025-01-01T04:00:00Z"), since: created, now: tick.Add(-time.Millisecond),
			wantWake: tick},
		{name: "on time", catchUp: time.Hour, lastTick: utc("2025-01-01T04:00:00Z"), since: created, now: tick.Add(3 * time.Millisecond),
			want: Fired, wantTick: tick, wantWake: utc("2025-01-01T06:00:00Z")},
		{name: "late but the leader ran at the tick (store slow)", catchUp: time.Hour, lastTick: utc("2025-01-01T04:00:00Z"), since: created,
			now: tick.Add(10 * time.Minute), want: Fired, wantTick: tick},
		{name: "failover at the tick: caught up", catchUp: time.Hour, lastTick: utc("2025-01-01T04:00:00Z"),
			since: tick.Add(5 * time.Second), now: tick.Add(5 * time.Second), want: CaughtUp, wantTick: tick},
		{name: "outage over three ticks: latest caught up, two missed", catchUp: time.Hour, lastTick: utc("2025-01-01T02:00:00Z"),
			since: tick.Add(10 * time.Minute), now: tick.Add(10 * time.Minute), want: CaughtUp, wantTick: tick, wantCount: 2},
		{name: "outage past the catch-up window: all missed", catchUp: 5 * time.Minute, lastTick: utc("2025-01-01T02:00:00Z"),
			since: tick.Add(10 * time.Minute), now: tick.Add(10 * time.Minute), want: Missed, wantTick: tick, wantCount: 3},
		{name: "catch-up 0: a failover at the tick misses it", catchUp: 0, lastTick: utc("2025-01-01T04:00:00Z"),
			since: tick.Add(time.Second), now: tick.Add(time.Second), want: Missed, wantTick: tick, wantCount: 1},
		{name: "first tick after creation", catchUp: time.Hour, lastTick: time.Time{}, since: created, now: utc("2025-01-01T01:00:00.002Z"),
			want: Fired, wantTick: utc("2025-01-01T01:00:00Z")},
		{name: "a decided tick never fires again", catchUp: time.Hour, lastTick: tick, since: created, now: tick.Add(time.Second),
			wantWake: utc("2025-01-01T06:00:00Z")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sc := testSchedule(t, hourly, OverlapSkip, created)
			sc.CatchUp = Duration(c.catchUp)
			st := &State{UID: sc.UID, Name: sc.Name, LastTick: c.lastTick, version: 3}
			a, wake := plan(testView(t, sc, st), c.now, c.since)
			if c.want == "" {
				if a.next != nil {
					t.Fatalf("want nothing, got a write: %+v", a.next.Runs)
				}
				if !wake.Equal(c.wantWake) {
					t.Fatalf("wake %v, want %v", wake, c.wantWake)
				}
				return
			}
			if a.next == nil {
				t.Fatal("want a write, got none")
			}
			r := lastRun(t, a.next)
			if r.Outcome != c.want || !r.Tick.Equal(c.wantTick) {
				t.Fatalf("run %+v, want %s of %v", r, c.want, c.wantTick)
			}
			if !a.next.LastTick.Equal(c.wantTick) {
				t.Fatalf("last tick %v, want %v", a.next.LastTick, c.wantTick)
			}
			switch c.want {
			case Fired, CaughtUp:
				if a.create == nil || a.create.id != TickTaskID(sc.UID, c.wantTick) {
					t.Fatalf("create %+v, want the tick's task", a.create)
				}
				if c.wantCount > 0 {
					m := a.next.Runs[len(a.next.Runs)-2]
					if m.Outcome != Missed || m.Count != c.wantCount {
						t.Fatalf("missed run %+v, want %d missed", m, c.wantCount)
					}
				}
			case Missed:
				if a.create != nil || r.Count != c.wantCount {
					t.Fatalf("missed: create %+v count %d, want none and %d", a.create, r.Count, c.wantCount)
				}
			}
			if !c.wantWake.IsZero() && !wake.Equal(c.wantWake) {
				t.Fatalf("wake %v, want %v", wake, c.wantWake)
			}
			events := ""
			for _, l := range a.logs {
				events += string(l.event) + " "
			}
			wantEvent := map[Outcome]string{Fired: "schedule_fired", CaughtUp: "schedule_caught_up", Missed: "schedule_missed"}[c.want]
			if !strings.Contains(events, wantEvent) || (c.wantCount > 0 && !strings.Contains(events, "schedule_missed")) {
				t.Fatalf("events %q, want %s", events, wantEvent)
			}
		})
	}
}

// TestPlanOverlap covers the four overlap policies against the
// schedule's own unfinished task.
func TestPlanOverlap(t *testing.T) {
	created := utc("2025-01-01T00:00:00Z")
	tick := utc("2025-01-01T01:00:00Z")
	now := tick.Add(time.Millisecond)
	prev := openTask("11111111-1111-1111-1111-111111111111", task.RequestNone)
	for _, c := range []struct {
		policy      Overlap
		want        Outcome
		wantCreate  bool
		wantCancel  bool
		wantPending bool
	}{
		{OverlapSkip, Skipped, false, false, false},
		{OverlapAllow, Fired, true, false, false},
		{OverlapBufferOne, Buffered, false, false, true},
		{OverlapCancelPrevious, Buffered, false, true, true},
	} {
		t.Run(string(c.policy), func(t *testing.T) {
			sc := testSchedule(t, Spec{Cron: "0 * * * *"}, c.policy, created)
			a, _ := plan(testView(t, sc, nil, prev), now, created)
			r := lastRun(t, a.next)
			if r.Outcome != c.want || (a.create != nil) != c.wantCreate || (len(a.cancel) > 0) != c.wantCancel || (a.next.Pending != nil) != c.wantPending {
				t.Fatalf("run %+v create %v cancel %v pending %v", r, a.create, a.cancel, a.next.Pending)
			}
			if c.want == Skipped && !strings.Contains(r.Reason, prev.ID) {
				t.Fatalf("skip reason %q does not name the previous run", r.Reason)
			}
			if !a.next.LastTick.Equal(tick) {
				t.Fatalf("the tick is not decided: last tick %v", a.next.LastTick)
			}
		})
	}

	t.Run("buffer-one keeps one pending tick", func(t *testing.T) {
		sc := testSchedule(t, Spec{Cron: "0 * * * *"}, OverlapBufferOne, created)
		a, _ := plan(testView(t, sc, nil, prev), now, created)
		st := a.next
		// The next tick comes while the first still waits: skipped.
		a, _ = plan(testView(t, sc, st, prev), tick.Add(time.Hour+time.Millisecond), created)
		if r := lastRun(t, a.next); r.Outcome != Skipped || !a.next.Pending.Tick.Equal(tick) {
			t.Fatalf("second tick: %+v, pending %+v", r, a.next.Pending)
		}
		st = a.next
		// The previous run ends: the pending tick runs, once.
		a, _ = plan(testView(t, sc, st), tick.Add(time.Hour+time.Second), created)
		if a.create == nil || a.create.id != TickTaskID(sc.UID, tick) || a.next.Pending != nil {
			t.Fatalf("pending tick did not run: %+v", a)
		}
		a, _ = plan(testView(t, sc, a.next), tick.Add(time.Hour+2*time.Second), created)
		if a.next != nil {
			t.Fatalf("pending tick ran twice: %+v", lastRun(t, a.next))
		}
	})

	t.Run("cancel-previous cancels once and runs after", func(t *testing.T) {
		sc := testSchedule(t, Spec{Cron: "0 * * * *"}, OverlapCancelPrevious, created)
		a, _ := plan(testView(t, sc, nil, prev), now, created)
		if len(a.cancel) != 1 || a.cancel[0] != prev.ID {
			t.Fatalf("cancel %v", a.cancel)
		}
		st := a.next
		cancelling := openTask(prev.ID, task.RequestCancel)
		if a, _ := plan(testView(t, sc, st, cancelling), now.Add(time.Second), created); a.next != nil || len(a.cancel) != 0 {
			t.Fatalf("asked again: %+v", a)
		}
		a, _ = plan(testView(t, sc, st), now.Add(2*time.Second), created)
		if a.create == nil || a.create.tick != tick {
			t.Fatalf("tick did not run after the previous ended: %+v", a)
		}
	})
}

func TestPlanPauseTriggerJitter(t *testing.T) {
	created := utc("2025-01-01T00:00:00Z")
	t.Run("paused: no tick, trigger still runs", func(t *testing.T) {
		sc := testSchedule(t, Spec{Cron: "0 * * * *"}, OverlapSkip, created)
		sc.Paused = true
		a, wake := plan(testView(t, sc, nil), utc("2025-01-01T03:00:01Z"), created)
		if a.next != nil || !wake.IsZero() {
			t.Fatalf("paused schedule acted: %+v wake %v", a, wake)
		}
		v := testView(t, sc, nil)
		id := uuid.NewString()
		v.triggers = []trigger{{key: "k", id: id, version: 1, requested: utc("2025-01-01T03:00:00Z")}}
		a, _ = plan(v, utc("2025-01-01T03:00:01Z"), created)
		if a.create == nil || a.create.id != TriggerTaskID(sc.UID, id) || a.dropTrigger == nil || !a.next.LastTick.IsZero() {
			t.Fatalf("trigger: %+v", a)
		}
		// The same request again (a client's retry): consumed, not run.
		v = testView(t, sc, a.next)
		v.triggers = []trigger{{key: "k", id: id, version: 1, requested: utc("2025-01-01T03:00:02Z")}}
		a, _ = plan(v, utc("2025-01-01T03:00:03Z"), created)
		if a.create != nil || a.dropTrigger == nil || len(a.next.Runs) != 1 {
			t.Fatalf("repeated trigger ran again: %+v", a)
		}
	})
	t.Run("resume: ticks while paused are not run", func(t *testing.T) {
		sc := testSchedule(t, Spec{Cron: "0 * * * *"}, OverlapSkip, created)
		sc.Since = utc("2025-01-01T05:30:00Z") // resumed
		a, wake := plan(testView(t, sc, &State{UID: sc.UID, LastTick: utc("2025-01-01T01:00:00Z")}), utc("2025-01-01T05:30:01Z"), created)
		if a.next != nil || !wake.Equal(utc("2025-01-01T06:00:00Z")) {
			t.Fatalf("ran a tick from the pause: %+v wake %v", a, wake)
		}
	})
	t.Run("jitter delays the same on every leader", func(t *testing.T) {
		sc := testSchedule(t, Spec{Cron: "0 * * * *"}, OverlapSkip, created)
		sc.Jitter = Duration(10 * time.Minute)
		tick := utc("2025-01-01T01:00:00Z")
		j := sc.JitterOf(tick)
		if j < 0 || j >= 10*time.Minute || j != sc.JitterOf(tick) {
			t.Fatalf("jitter %v", j)
		}
		if a, wake := plan(testView(t, sc, nil), tick.Add(j-time.Millisecond), created); a.next != nil || !wake.Equal(tick.Add(j)) {
			t.Fatalf("fired before its jitter: %+v wake %v", a, wake)
		}
		if a, _ := plan(testView(t, sc, nil), tick.Add(j), created); a.create == nil || a.create.tick != tick {
			t.Fatalf("did not fire at tick+jitter: %+v", a)
		}
	})
	t.Run("dst gap tick fires once at the gap's end", func(t *testing.T) {
		sc := testSchedule(t, Spec{Cron: "30 2 * * *", Zone: "America/New_York"}, OverlapSkip, utc("2025-03-08T12:00:00Z"))
		gapEnd := utc("2025-03-09T07:00:00Z")
		a, wake := plan(testView(t, sc, nil), gapEnd.Add(-time.Millisecond), sc.Created)
		if a.next != nil || !wake.Equal(gapEnd) {
			t.Fatalf("before the gap's end: %+v wake %v", a, wake)
		}
		a, wake = plan(testView(t, sc, nil), gapEnd.Add(time.Millisecond), sc.Created)
		if a.create == nil || !a.create.tick.Equal(gapEnd) || !wake.Equal(utc("2025-03-10T06:30:00Z")) {
			t.Fatalf("at the gap's end: %+v wake %v", a, wake)
		}
	})
}

func TestScheduleValidate(t *testing.T) {
	created := utc("2025-01-01T00:00:00Z")
	good := func() *Schedule {
		return &Schedule{Name: "n", UID: "0f8fad5b-d9cb-469f-a165-70867728950e", Spec: Spec{Every: "1h"}, Overlap: OverlapSkip,
			CatchUp: Duration(time.Hour), KeepLast: 10, Since: created, Created: created, Template: Template{Type: "noop"}}
	}
	if err := good().Validate(); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		edit func(*Schedule)
		want string
	}{
		{"name", func(s *Schedule) { s.Name = "../x" }, "schedule name"},
		{"uid", func(s *Schedule) { s.UID = "../x" }, "lower-case UUID"},
		{"upper-case uid", func(s *Schedule) { s.UID = "0F8FAD5B-D9CB-469F-A165-70867728950E" }, "lower-case UUID"},
		{"overlap", func(s *Schedule) { s.Overlap = "sometimes" }, "overlap policy"},
		{"empty overlap", func(s *Schedule) { s.Overlap = "" }, "overlap policy"},
		{"negative catch-up", func(s *Schedule) { s.CatchUp = Duration(-time.Second) }, "catch-up"},
		{"catch-up over a year", func(s *Schedule) { s.CatchUp = Duration(400 * 24 * time.Hour) }, "catch-up"},
		{"negative jitter", func(s *Schedule) { s.Jitter = Duration(-time.Second) }, "jitter"},
		{"jitter over an hour", func(s *Schedule) { s.Jitter = Duration(2 * time.Hour); s.Spec = Spec{Cron: "@daily"} }, "jitter"},
		{"jitter not below the interval", func(s *Schedule) { s.Jitter = Duration(time.Hour) }, "shorter than the interval"},
		{"keep-last 0", func(s *Schedule) { s.KeepLast = 0 }, "keep-last"},
		{"keep-last over 1000", func(s *Schedule) { s.KeepLast = 1001 }, "keep-last"},
		{"note with a newline", func(s *Schedule) { s.Note = "a\nb" }, "control character"},
		{"long note", func(s *Schedule) { s.Note = strings.Repeat("n", 201) }, "note"},
		{"no type", func(s *Schedule) { s.Template.Type = "" }, "type"},
		{"no creation", func(s *Schedule) { s.Created = time.Time{} }, "creation"},
	}
	for _, c := range cases {
		s := good()
		c.edit(s)
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error with %q", c.name, err, c.want)
		}
	}
}
