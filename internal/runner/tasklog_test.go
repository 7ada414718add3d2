package runner_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/testenv"
)

type taskLogger interface {
	AppendLog(string)
	FlushLog()
	ActiveFor() time.Duration
}

// TestAttemptLog: the lines an attempt adds to the task's log are stored
// with its next record write (a checkpoint, or FlushLog once a write is
// due), in order, numbered, with the attempt; an attempt whose task was
// given to another runner (a stale attempt) stores nothing more, and its
// write is refused. ActiveFor counts down to the local deadline.
func TestAttemptLog(t *testing.T) {
	for _, b := range testenv.Backends(t) {
		forWrites(t, b, func(t *testing.T, batch bool) {
			f := start(t, b, batch)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			texts := func() []string {
				l, err := f.st.ReadLog(ctx, f.id)
				if err != nil {
					t.Fatal(err)
				}
				var out []string
				for i, ln := range l.Lines {
					if ln.Seq != int64(i+1) || ln.Attempt != 1 {
						t.Errorf("line %d: seq %d attempt %d", i, ln.Seq, ln.Attempt)
					}
					out = append(out, ln.Text)
				}
				return out
			}
			var err error
			f.in(t, func(r task.Reporter) {
				l := r.(taskLogger)
				if got := l.ActiveFor(); got != f.deadline.Sub(f.clock.Now()) {
					t.Errorf("ActiveFor %v, want %v", got, f.deadline.Sub(f.clock.Now()))
				}
				l.AppendLog("one")
				l.AppendLog("two")
				l.FlushLog() // due: the attempt has written nothing yet
			})
			if got := texts(); !slices.Equal(got, []string{"one", "two"}) {
				t.Fatalf("after the first FlushLog: log %q", got)
			}
			f.in(t, func(r task.Reporter) {
				r.(taskLogger).AppendLog("three")
				r.(taskLogger).FlushLog() // not due: the last write was just now
			})
			if got := texts(); !slices.Equal(got, []string{"one", "two"}) {
				t.Fatalf("FlushLog wrote before a write was due: log %q", got)
			}
			f.in(t, func(r task.Reporter) { err = r.Checkpoint([]byte("c1"), task.Progress{Done: 1}) })
			if got := texts(); err != nil || !slices.Equal(got, []string{"one", "two", "three"}) {
				t.Fatalf("after a checkpoint: log %q, err %v", got, err)
			}
			// The task goes to another runner while the attempt still
			// runs (it is busy in this function): its lines are stale.
			f.in(t, func(r task.Reporter) {
				rec, gerr := f.st.Get(ctx, f.id)
				if gerr != nil {
					t.Fatal(gerr)
				}
				rec.Assign(task.RunnerInfo{Node: "n2", Session: "other-session", Capacity: 1}, time.Now())
				if perr := f.st.Put(ctx, f.st.Txn, rec); perr != nil {
					t.Fatal(perr)
				}
				r.(taskLogger).AppendLog("stale")
				err = r.Checkpoint([]byte("c2"), task.Progress{Done: 2})
			})
			if got := texts(); !slices.Equal(got, []string{"one", "two", "three"}) {
				t.Fatalf("a stale attempt changed the log: %q", got)
			}
			if !errors.Is(err, task.ErrFenced) {
				t.Fatalf("the stale attempt's checkpoint: %v, want fenced", err)
			}
		})
	}
}
