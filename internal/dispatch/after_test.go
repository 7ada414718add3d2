package dispatch_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/task"
)

// TestAfter: a task with --after starts only once the tasks it waits for
// succeeded; one that is cancelled or fails fails it (dependency_failed),
// unless its policy is "finished"; a task that does not exist is refused
// at creation. On a real etcd and a real ZooKeeper.
func TestAfter(t *testing.T) {
	eachStore(t, func(t *testing.T, kv coord.Store, st *task.Store) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		startMember(t, kv, st, "n1", 8)
		create := func(req task.CreateRequest) *task.Record {
			t.Helper()
			r, err := st.Create(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			return r
		}
		long := json.RawMessage(`{"duration":"1h"}`)

		a := create(task.CreateRequest{Type: "sleep", Spec: long})
		b := create(task.CreateRequest{Type: "noop", After: []string{a.ID}})
		waitRunning(ctx, t, st, a.ID)
		// A task created after b finishing shows that the dispatcher made a
		// pass over b meanwhile.
		marker := create(task.CreateRequest{Type: "noop"})
		waitFinal(t, st, []string{marker.ID}, 20*time.Second)
		if r, _ := st.Get(ctx, b.ID); r.State != task.Waiting {
			t.Fatalf("b is %s while a runs; want waiting", r.State)
		}
		if _, err := st.Cancel(ctx, a.ID); err != nil {
			t.Fatal(err)
		}
		got := waitFinal(t, st, []string{b.ID}, 20*time.Second)[b.ID]
		if got.State != task.Failed || got.Error == nil || got.Error.Code != task.CodeDependency ||
			!strings.Contains(got.Error.Message, a.ID) || !strings.Contains(got.Error.Message, "cancelled") {
			t.Fatalf("b after a cancelled: %s %+v; want failed, %s, naming a", got.State, got.Error, task.CodeDependency)
		}
		if len(got.History) != 0 {
			t.Fatalf("b ran: %+v", got.History)
		}

		// A chain runs in order.
		c := create(task.CreateRequest{Type: "sleep", Spec: json.RawMessage(`{"duration":"300ms"}`)})
		d := create(task.CreateRequest{Type: "noop", After: []string{c.ID}})
		fin := waitFinal(t, st, []string{c.ID, d.ID}, 20*time.Second)
		if fin[d.ID].State != task.Succeeded || fin[d.ID].Started.Before(fin[c.ID].Finished) {
			t.Fatalf("d %s started %v, c finished %v; want d after c", fin[d.ID].State, fin[d.ID].Started, fin[c.ID].Finished)
		}

		// Policy finished: runs after a failure.
		e := create(task.CreateRequest{Type: "sleep", Spec: json.RawMessage(`{"duration":"5s","fail_after":"100ms","permanent":true}`)})
		f := create(task.CreateRequest{Type: "noop", After: []string{e.ID}, AfterPolicy: task.AfterFinished})
		fin = waitFinal(t, st, []string{e.ID, f.ID}, 20*time.Second)
		if fin[e.ID].State != task.Failed || fin[f.ID].State != task.Succeeded {
			t.Fatalf("e %s, f %s; want failed, then succeeded", fin[e.ID].State, fin[f.ID].State)
		}

		// Refused at creation, nothing written.
		before, err := st.List(ctx, task.Filter{Status: "all"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Create(ctx, task.CreateRequest{Type: "noop", After: []string{uuid.NewString()}}); !errors.Is(err, task.ErrNotFound) {
			t.Fatalf("after an unknown task: %v, want ErrNotFound", err)
		}
		for _, bad := range []task.CreateRequest{
			{Type: "noop", After: []string{c.ID, c.ID}},
			{Type: "noop", After: []string{"not-a-uuid"}},
			{Type: "noop", After: []string{c.ID}, AfterPolicy: "whenever"},
			{Type: "noop", AfterPolicy: task.AfterFinished},
		} {
			if _, err := st.Create(ctx, bad); !errors.Is(err, task.ErrInvalid) {
				t.Fatalf("%+v: %v, want ErrInvalid", bad, err)
			}
		}
		after, err := st.List(ctx, task.Filter{Status: "all"})
		if err != nil {
			t.Fatal(err)
		}
		if len(after) != len(before) {
			t.Fatalf("refused creations wrote %d tasks", len(after)-len(before))
		}
	})
}
