package dispatch_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/dispatch"
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/runner"
	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/tasktype"
	"github.com/taskd/taskd/internal/testenv"
	"go.uber.org/goleak"
	"golang.org/x/sync/errgroup"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// member is one in-process node: a quorum whose leader role dispatches and
// whose member role runs a runner, as in taskd.
type member struct {
	q      *quorum.Quorum
	cancel context.CancelFunc
	done   chan error
}

func startMember(t *testing.T, kv coord.Store, st *task.Store, name string, capacity int) *member {
	return startMemberN(t, kv, st, name, capacity, 1)
}

// startMemberN is startMember whose leader role runs n dispatchers at once
// on its one leadership (n > 1: as if passes overlapped).
func startMemberN(t *testing.T, kv coord.Store, st *task.Store, name string, capacity, n int) *member {
	cfg := quorum.DefaultConfig()
	cfg.Name, cfg.NodeID, cfg.Address, cfg.Root = name, "id-"+name, name+":1", "/taskd"
	cfg.SessionTimeout = 2 * time.Second
	rc := runner.DefaultConfig()
	rc.Node, rc.Capacity, rc.Deadline = name, capacity, cfg.DeadlineOf
	run, err := runner.New(rc, st, quiet.With("node", name))
	if err != nil {
		t.Fatal(err)
	}
	var disps []*dispatch.Dispatcher
	for range n {
		d, err := dispatch.New(dispatch.DefaultConfig(), st, quiet.With("node", name))
		if err != nil {
			t.Fatal(err)
		}
		disps = append(disps, d)
	}
	var q *quorum.Quorum
	roles := quorum.Roles{
		Leader: func(ctx context.Context, l *quorum.Leadership) error {
			g, gctx := errgroup.WithContext(ctx)
			for _, d := range disps {
				g.Go(func() error { return d.Run(gctx, l, q.View) })
			}
			return g.Wait()
		},
		Member: run.Run,
	}
	q, err = quorum.New(cfg, kv, roles, quiet)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &member{q: q, cancel: cancel, done: make(chan error, 1)}
	go func() { m.done <- q.Run(ctx) }()
	t.Cleanup(m.stop)
	return m
}

func (m *member) stop() {
	m.cancel()
	<-m.done
}

// waitFinal waits for every id to reach a final state.
func waitFinal(t *testing.T, st *task.Store, ids []string, limit time.Duration) map[string]*task.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	out := map[string]*task.Record{}
	for _, id := range ids {
		var last *task.Record
		var lastErr error
		err := testenv.WaitFor(ctx, 20*time.Millisecond, func() bool {
			last, lastErr = st.Get(ctx, id)
			return lastErr == nil && last.State.Final()
		})
		if err != nil {
			t.Fatalf("task %s not final after %v: %v %v", id, limit, last, lastErr)
		}
		out[id] = last
	}
	return out
}

// TestDispatchAndRun runs tasks on two in-process members under the race
// detector, on both backends: all succeed, capacity is respected, priorities
// go first, a cancel reaches a running task, and a failing task retries
// then fails.
func TestDispatchAndRun(t *testing.T) {
	for _, b := range testenv.Backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			testDispatchAndRun(ctx, t, b.Open(t))
		})
	}
}

func newStore(t *testing.T, kv coord.Store, types task.Registry) *task.Store {
	st, err := task.NewStore(kv, "/taskd", types, "UTC", nil)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func builtin() task.Registry { return tasktype.Builtin(tasktype.Copy{}, nil, nil) }

// concurrency wraps a task type and counts the runs in progress in the
// process: unlike a watch of the records, it cannot miss an overlap.
type concurrency struct {
	task.Type
	mu       sync.Mutex
	cur, max int
}

func (c *concurrency) Run(ctx context.Context, spec json.RawMessage, cp []byte, r task.Reporter) error {
	c.mu.Lock()
	c.cur++
	c.max = max(c.max, c.cur)
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.cur--
		c.mu.Unlock()
	}()
	return c.Type.Run(ctx, spec, cp, r)
}

func (c *concurrency) most() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.max
}

func testDispatchAndRun(ctx context.Context, t *testing.T, kv coord.Store) {
	// Each member runs sleep tasks through its own counter.
	st := newStore(t, kv, builtin())
	counters := map[string]*concurrency{}
	for _, n := range []string{"n1", "n2"} {
		types := builtin()
		counters[n] = &concurrency{Type: types["sleep"]}
		types["sleep"] = counters[n]
		startMember(t, kv, newStore(t, kv, types), n, 2)
	}

	var ids []string
	for i := range 20 {
		r, err := st.Create(ctx, task.CreateRequest{Type: "sleep", Spec: json.RawMessage(`{"duration":"100ms","checkpoint_interval":"20ms"}`), Priority: i % 3})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.ID)
	}
	long, err := st.Create(ctx, task.CreateRequest{Type: "sleep", Spec: json.RawMessage(`{"duration":"1h","checkpoint_interval":"50ms"}`), Priority: 100})
	if err != nil {
		t.Fatal(err)
	}
	zero := 1
	failing, err := st.Create(ctx, task.CreateRequest{Type: "sleep", Spec: json.RawMessage(`{"duration":"1s","fail_after":"10ms"}`), MaxRetries: &zero})
	if err != nil {
		t.Fatal(err)
	}
	waitRunning(ctx, t, st, long.ID)
	if _, err := st.Cancel(ctx, long.ID); err != nil {
		t.Fatal(err)
	}
	final := waitFinal(t, st, append(ids, long.ID, failing.ID), 40*time.Second)
	for _, id := range ids {
		if final[id].State != task.Succeeded {
			t.Errorf("task %s ended %s: %+v", id, final[id].State, final[id].Error)
		}
	}
	if r := final[long.ID]; r.State != task.Cancelled {
		t.Errorf("cancelled task ended %s", r.State)
	}
	if r := final[failing.ID]; r.State != task.Failed || r.Attempt != 2 || r.Error == nil || r.Error.Code != "retryable" {
		t.Errorf("failing task: %s attempt %d error %+v; want failed after 1 retry", r.State, r.Attempt, r.Error)
	}
	for n, c := range counters {
		if m := c.most(); m > 2 {
			t.Errorf("runner %s ran %d tasks at once; capacity is 2", n, m)
		} else if m == 0 {
			t.Errorf("runner %s ran no task; want both runners", n)
		}
	}
}

// TestPriorityOrder: with one free slot, the higher priority goes first,
// and FIFO holds within a priority.
func TestPriorityOrder(t *testing.T) {
	for _, b := range testenv.Backends(t) {
		t.Run(b.Name, func(t *testing.T) { testPriorityOrder(t, b.Open(t)) })
	}
}

func testPriorityOrder(t *testing.T, kv coord.Store) {
	st := newStore(t, kv, builtin())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	startMember(t, kv, st, "n1", 1)
	blocker, err := st.Create(ctx, task.CreateRequest{Type: "sleep", Spec: json.RawMessage(`{"duration":"1h"}`)})
	if err != nil {
		t.Fatal(err)
	}
	waitRunning(ctx, t, st, blocker.ID)
	var ids []string
	for _, p := range []int{0, 5, 0, 5} {
		r, err := st.Create(ctx, task.CreateRequest{Type: "noop", Priority: p})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.ID)
	}
	if _, err := st.Cancel(ctx, blocker.ID); err != nil {
		t.Fatal(err)
	}
	final := waitFinal(t, st, ids, 20*time.Second)
	order := []string{ids[1], ids[3], ids[0], ids[2]} // priority 5 first, each priority in creation order
	for i := 1; i < len(order); i++ {
		if !final[order[i-1]].Started.Before(final[order[i]].Started) {
			t.Fatalf("task %d started at %v, not before task %d at %v", i-1, final[order[i-1]].Started, i, final[order[i]].Started)
		}
	}
}

func waitRunning(ctx context.Context, t *testing.T, st *task.Store, id string) {
	t.Helper()
	var last *task.Record
	var lastErr error
	err := testenv.WaitFor(ctx, 10*time.Millisecond, func() bool {
		last, lastErr = st.Get(ctx, id)
		return lastErr == nil && last.State == task.Running
	})
	if err != nil {
		t.Fatalf("task %s never ran: %v %v", id, last, lastErr)
	}
}

// TestStarvedRunnerLast: a runner whose node is starved of CPU (its member
// record says so, as the node's starvation monitor sets it) gets a task
// only when no other runner takes it. With a starved, the tasks go to b
// although a wins a tie by name; once b is full, the next goes to a.
func TestStarvedRunnerLast(t *testing.T) {
	for _, b := range testenv.Backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			kv := b.Open(t)
			st := newStore(t, kv, builtin())
			ma := startMember(t, kv, st, "a", 3)
			mb := startMember(t, kv, st, "b", 3)
			if err := testenv.WaitFor(ctx, 20*time.Millisecond, func() bool {
				rs, err := st.Runners(ctx)
				return err == nil && len(rs) == 2 && rs[0].Live && rs[1].Live
			}); err != nil {
				t.Fatalf("two live runners: %v", err)
			}
			ma.q.SetStarved(true, "test: starved")
			if err := testenv.WaitFor(ctx, 20*time.Millisecond, func() bool {
				for _, m := range []*member{ma, mb} {
					v, _ := m.q.View()
					if v.Leader == "" || !dispatch.StarvedOf(v)["a"] {
						return false
					}
				}
				return true
			}); err != nil {
				t.Fatalf("the members never saw a starved: %v", err)
			}
			long := json.RawMessage(`{"duration":"1h","checkpoint_interval":"50ms"}`)
			var ids []string
			for i := range 4 {
				r, err := st.Create(ctx, task.CreateRequest{Type: "sleep", Spec: long})
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, r.ID)
				waitRunning(ctx, t, st, r.ID)
				got, err := st.Get(ctx, r.ID)
				if err != nil {
					t.Fatal(err)
				}
				want := "b"
				if i == 3 {
					want = "a" // b runs 3, its capacity
				}
				if got.Runner != want {
					t.Fatalf("task %d ran on %s, want %s (a starved)", i, got.Runner, want)
				}
			}
			for _, id := range ids {
				if _, err := st.Cancel(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
			waitFinal(t, st, ids, 30*time.Second)
		})
	}
}
