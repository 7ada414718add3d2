package api_test

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/auth"
)

// TestTaskLogEndsWithFinalState: a follower of a task's log learns the
// state the task ends in, also when the task ends without writing a line
// (cancelled while it waits): the stream's last message says cancelled.
func TestTaskLogEndsWithFinalState(t *testing.T) {
	s := startServer(t, nil)
	cl := s.client(t, s.tokens[auth.Operator], false)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	created, err := cl.Tasks.CreateTask(ctx, connect.NewRequest(&taskdv1.CreateTaskRequest{Type: "sleep", Spec: `{"duration":"1h"}`}))
	if err != nil {
		t.Fatal(err)
	}
	id := created.Msg.Task.Id
	stream, err := cl.Tasks.TaskLog(ctx, connect.NewRequest(&taskdv1.TaskLogRequest{Id: id, Follow: true}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if !stream.Receive() {
		t.Fatalf("no first message: %v", stream.Err())
	}
	if st := stream.Msg().State; st != "waiting" || len(stream.Msg().Lines) != 0 {
		t.Fatalf("first message: state %q, %d lines; want waiting (no runner here), none", st, len(stream.Msg().Lines))
	}
	if _, err := cl.Tasks.CancelTask(ctx, connect.NewRequest(&taskdv1.TaskRef{Id: id})); err != nil {
		t.Fatal(err)
	}
	var last string
	for stream.Receive() {
		last = stream.Msg().State
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("the stream ended with %v; want a clean end", err)
	}
	if last != "cancelled" {
		t.Fatalf("the stream's last message after the cancel says %q; want cancelled", last)
	}
}
