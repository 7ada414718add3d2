package api_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/auth"
)

// TestTaskCallsFailFastWithoutSession plays issue 13 bug 6: with the
// quorum lost, task list/show/create waited their whole deadline and said
// deadline_exceeded. A node without a store session answers them at once
// with Unavailable, saying since when it has had none and why, and a
// refused create writes nothing.
func TestTaskCallsFailFastWithoutSession(t *testing.T) {
	s := startServer(t, nil)
	op := s.client(t, s.tokens[auth.Operator], false)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := op.Tasks.ListTasks(ctx, connect.NewRequest(&taskdv1.ListTasksRequest{})); err != nil {
		t.Fatalf("list with a session: %v", err)
	}
	const id = "0f8fad5b-d9cb-469f-a165-70867728950e"

	s.node.ready.Store(false) // the session is lost: connecting since lostSession
	before := s.snapshot(t)
	calls := map[string]func(context.Context) error{
		"ListTasks": func(ctx context.Context) error {
			_, err := op.Tasks.ListTasks(ctx, connect.NewRequest(&taskdv1.ListTasksRequest{}))
			return err
		},
		"GetTask": func(ctx context.Context) error {
			_, err := op.Tasks.GetTask(ctx, connect.NewRequest(&taskdv1.GetTaskRequest{Id: id}))
			return err
		},
		"CreateTask": func(ctx context.Context) error {
			_, err := op.Tasks.CreateTask(ctx, connect.NewRequest(&taskdv1.CreateTaskRequest{Type: "noop"}))
			return err
		},
		"CancelTask": func(ctx context.Context) error {
			_, err := op.Tasks.CancelTask(ctx, connect.NewRequest(&taskdv1.TaskRef{Id: id}))
			return err
		},
	}
	want := "no store session: connecting since " + lostSession.Format(time.RFC3339)
	for name, call := range calls {
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		start := time.Now()
		err := call(cctx)
		took := time.Since(start)
		ccancel()
		if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), want) {
			t.Errorf("%s without a session: %v; want unavailable saying %q", name, err, want)
		}
		// Far below the 10 s deadline: nothing waited for the store.
		if took > 2*time.Second {
			t.Errorf("%s without a session took %v", name, took)
		}
	}
	if after := s.snapshot(t); after != before {
		t.Errorf("calls refused for want of a session changed the store:\nbefore %s\nafter  %s", before, after)
	}
}
