package dispatch_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/testenv"
	"golang.org/x/sync/errgroup"
)

// attempts records every run of every task in the process, across all
// members: a task assigned to two attempts at once runs twice, and the
// runs overlap.
type attempts struct {
	task.Type
	mu      sync.Mutex
	runs    map[string][]int // attempt numbers run, by task
	running map[string]int   // runs in progress, by task
	overlap []string
}

func (a *attempts) Run(ctx context.Context, spec json.RawMessage, cp []byte, r task.Reporter) error {
	a.mu.Lock()
	a.runs[r.TaskID()] = append(a.runs[r.TaskID()], r.Attempt())
	if a.running[r.TaskID()]++; a.running[r.TaskID()] > 1 {
		a.overlap = append(a.overlap, fmt.Sprintf("%s attempt %d", r.TaskID(), r.Attempt()))
	}
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.running[r.TaskID()]--
		a.mu.Unlock()
	}()
	return a.Type.Run(ctx, spec, cp, r)
}

// TestConcurrentPassesAssignOnce: a pass writes its assignment batches
// together, and here two dispatchers of one leadership race over the same
// waiting tasks as well. Every task still runs one attempt at a time, each
// attempt once, and an attempt is replaced only when its runner lost its
// session: the record version each assignment is conditional on admits one
// writer per version.
func TestConcurrentPassesAssignOnce(t *testing.T) {
	for _, b := range testenv.Backends(t) {
		t.Run(b.Name, func(t *testing.T) { testConcurrentPassesAssignOnce(t, b.Open(t)) })
	}
}

func testConcurrentPassesAssignOnce(t *testing.T, kv coord.Store) {
	const n, capacity = 300, 60
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	types := builtin()
	rec := &attempts{Type: types["sleep"], runs: map[string][]int{}, running: map[string]int{}}
	types["sleep"] = rec
	st := newStore(t, kv, types)
	// The tasks wait before any runner exists, so that the first passes
	// each fill a runner's capacity: several batches of one pass at once.
	ids := make([]string, n)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i := range n {
		g.Go(func() error {
			r, err := st.Create(gctx, task.CreateRequest{Type: "sleep", Spec: json.RawMessage(`{"duration":"10ms"}`)})
			if err == nil {
				ids[i] = r.ID
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"n1", "n2", "n3"} {
		startMemberN(t, kv, newStore(t, kv, types), name, capacity, 2)
	}
	final := waitFinal(t, st, ids, 90*time.Second)

	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.overlap) > 0 {
		t.Errorf("%d runs overlapped another run of their task: %v", len(rec.overlap), rec.overlap)
	}
	for _, id := range ids {
		r := final[id]
		if r.State != task.Succeeded {
			t.Errorf("task %s ended %s: %+v", id, r.State, r.Error)
			continue
		}
		runs := rec.runs[id]
		seen := map[int]bool{}
		for _, a := range runs {
			if seen[a] {
				t.Errorf("task %s: attempt %d ran twice (runs %v)", id, a, runs)
			}
			seen[a] = true
		}
		// The last attempt ran (the task succeeded); an earlier one was
		// replaced only because its runner lost its session, which may
		// have happened before it started (under load, CI saw a runner
		// lose its 2 s session before it ran attempt 1).
		if !seen[r.Attempt] || len(runs) > r.Attempt {
			t.Errorf("task %s: runs %v for %d attempts", id, runs, r.Attempt)
		}
		for _, h := range r.History {
			if h.N < r.Attempt && h.Outcome != "runner lost" {
				t.Errorf("task %s: attempt %d of %d replaced with outcome %q, want only runner lost: %+v", id, h.N, r.Attempt, h.Outcome, r.History)
			}
		}
		for a := 1; a < r.Attempt; a++ {
			if !seen[a] && !slices.ContainsFunc(r.History, func(h task.Attempt) bool { return h.N == a && h.Outcome == "runner lost" }) {
				t.Errorf("task %s: attempt %d never ran and its runner did not lose its session: %+v", id, a, r.History)
			}
		}
	}
}
