package runner_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/runner"
	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/testenv"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// fakeClock is the runner's clock in these tests: Now is what the test
// sets, and every retry wait is recorded and ends at once.
type fakeClock struct {
	mu    sync.Mutex
	now   time.Time
	asked []time.Duration
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

func (c *fakeClock) After(d time.Duration) (<-chan time.Time, func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.asked = append(c.asked, d)
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch, func() {}
}

func (c *fakeClock) waits() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.asked...)
}

// flakyKV is a real store whose transactions on one task's keys fail as
// unavailable a given number of times (a ZooKeeper server lost, an etcd
// election), as the store reports it.
type flakyKV struct {
	coord.Store
	mu    sync.Mutex
	task  string
	fails int
}

func (f *flakyKV) failNext(id string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.task, f.fails = id, n
}

func (f *flakyKV) Txn(ctx context.Context, conds []coord.Cond, ops []coord.Op) ([]int64, error) {
	f.mu.Lock()
	fail := false
	for _, op := range ops {
		if f.fails > 0 && f.task != "" && strings.HasSuffix(op.Key, "/"+f.task) {
			fail = true
		}
	}
	if fail {
		f.fails--
	}
	f.mu.Unlock()
	if fail {
		return nil, fmt.Errorf("injected outage: %w", coord.ErrUnavailable)
	}
	return f.Store.Txn(ctx, conds, ops)
}

// remote is a task type the test drives: each request is run inside the
// attempt, with its Reporter.
type remote struct {
	started chan struct{}
	do      chan func(task.Reporter)
}

func (remote) Validate(json.RawMessage) error { return nil }

func (p remote) Run(ctx context.Context, _ json.RawMessage, _ []byte, r task.Reporter) error {
	p.started <- struct{}{}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case f := <-p.do:
			f(r)
		}
	}
}

// fixture is one runner on a real store, running one task of type remote.
type fixture struct {
	kv    *flakyKV
	st    *task.Store
	clock *fakeClock
	typ   remote
	id    string
	// deadline is the local deadline of the runner's session.
	deadline time.Time
}

// in runs f inside the attempt and returns once it has.
func (f *fixture) in(t *testing.T, do func(task.Reporter)) {
	t.Helper()
	done := make(chan struct{})
	select {
	case f.typ.do <- func(r task.Reporter) { defer close(done); do(r) }:
	case <-time.After(30 * time.Second):
		t.Fatal("the attempt does not take requests")
	}
	<-done
}

// forWrites runs test on b with the attempts' writes alone and batched
// (Config.BatchWrites).
func forWrites(t *testing.T, b testenv.Backend, test func(t *testing.T, batch bool)) {
	for _, batch := range []bool{false, true} {
		name := b.Name
		if batch {
			name += "/batched"
		}
		t.Run(name, func(t *testing.T) { test(t, batch) })
	}
}

func start(t *testing.T, b testenv.Backend, batch bool) *fixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	base := b.Open(t)
	f := &fixture{kv: &flakyKV{Store: base}, clock: &fakeClock{now: time.Now()}, typ: remote{started: make(chan struct{}, 1), do: make(chan func(task.Reporter))}}
	f.deadline = f.clock.Now().Add(time.Hour)
	st, err := task.NewStore(f.kv, "/taskd", task.Registry{"remote": f.typ}, "UTC", nil)
	if err != nil {
		t.Fatal(err)
	}
	f.st = st
	sess, err := base.NewSession(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close(context.Background()) })
	cfg := runner.Config{Node: "n1", Capacity: 1, ProgressInterval: time.Hour, Clock: f.clock, BatchWrites: batch,
		Deadline: func(coord.Session) time.Time { return f.deadline }}
	run, err := runner.New(cfg, st, quiet)
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run.Run(rctx, sess) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("runner: %v", err)
		}
	})
	rec, err := st.Create(ctx, task.CreateRequest{Type: "remote"})
	if err != nil {
		t.Fatal(err)
	}
	f.id = rec.ID
	rec.Assign(task.RunnerInfo{Node: "n1", Session: sess.ID(), Capacity: 1}, time.Now())
	if err := st.Put(ctx, base.Txn, rec); err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.typ.started:
	case <-ctx.Done():
		t.Fatal("the assigned attempt never started")
	}
	return f
}

// TestAttemptWriteBacksOff: a checkpoint that meets an unavailable store
// waits it out with the capped doubling backoff (100 ms to 2 s) on the
// runner's clock, and succeeds once the store answers; the next write
// starts again from the first delay.
func TestAttemptWriteBacksOff(t *testing.T) {
	for _, b := range testenv.Backends(t) {
		forWrites(t, b, func(t *testing.T, batch bool) {
			f := start(t, b, batch)
			ms := time.Millisecond
			f.kv.failNext(f.id, 7)
			var err error
			f.in(t, func(r task.Reporter) { err = r.Checkpoint([]byte("one"), task.Progress{Done: 1}) })
			if err != nil {
				t.Fatalf("checkpoint through a 7-try outage: %v", err)
			}
			want := []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, 1600 * ms, 2000 * ms, 2000 * ms}
			if got := f.clock.waits(); !equal(got, want) {
				t.Fatalf("waits %v, want %v", got, want)
			}
			f.kv.failNext(f.id, 1)
			f.in(t, func(r task.Reporter) { err = r.Checkpoint([]byte("two"), task.Progress{Done: 2}) })
			if err != nil {
				t.Fatal(err)
			}
			if got := f.clock.waits(); !equal(got, append(want, 100*ms)) {
				t.Fatalf("waits %v, want %v then 100ms", got, want)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			rec, err := f.st.Get(ctx, f.id)
			if err != nil {
				t.Fatal(err)
			}
			if string(rec.Checkpoint) != "two" || rec.Progress.Done != 2 {
				t.Fatalf("stored checkpoint %q progress %+v, want the second", rec.Checkpoint, rec.Progress)
			}
		})
	}
}

// TestActiveUntilDeadline: an attempt counts itself active while the
// runner's clock is before the session's local deadline, not from it on;
// and not once a cancel request has stopped it, which ends the task
// cancelled.
func TestActiveUntilDeadline(t *testing.T) {
	for _, b := range testenv.Backends(t) {
		forWrites(t, b, func(t *testing.T, batch bool) {
			f := start(t, b, batch)
			active := func() (a bool) {
				f.in(t, func(r task.Reporter) { a = r.Active() })
				return a
			}
			f.clock.set(f.deadline.Add(-time.Nanosecond))
			if !active() {
				t.Fatal("inactive before the deadline")
			}
			f.clock.set(f.deadline)
			if active() {
				t.Fatal("active at the deadline")
			}
			f.clock.set(f.deadline.Add(-time.Second))
			if !active() {
				t.Fatal("inactive with the clock back before the deadline")
			}
			// A cancel request stops the attempt: from then on it is not
			// active, whatever the clock says.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			seen := make(chan bool, 1)
			if _, err := f.st.Cancel(ctx, f.id); err != nil {
				t.Fatal(err)
			}
			// The attempt may already have ended; then nobody takes the
			// request and the final state says it all.
			err := testenv.WaitFor(ctx, 10*time.Millisecond, func() bool {
				select {
				case f.typ.do <- func(r task.Reporter) { seen <- r.Active() }:
					if <-seen {
						return false
					}
				default:
				}
				r, err := f.st.Get(ctx, f.id)
				return err == nil && r.State == task.Cancelled
			})
			if err != nil {
				r, gerr := f.st.Get(ctx, f.id)
				t.Fatalf("task not cancelled: %v (record %+v, %v)", err, r, gerr)
			}
		})
	}
}

func equal(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
