package api

import (
	"context"
	"fmt"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/task"
)

// TaskLog sends the task's output log after AfterSeq and, with Follow,
// the lines its runner stores next, until the task is final; its last
// message carries the final state. The runner
// stores log lines in the same transaction as a write of the task's
// record, so the watch of the unfinished records says when to read the
// log again: no polling.
func (s *taskService) TaskLog(ctx context.Context, req *connect.Request[taskdv1.TaskLogRequest], stream *connect.ServerStream[taskdv1.TaskLogResponse]) error {
	m := req.Msg
	if err := keys.ValidTaskID(m.Id); err != nil {
		return toConnect(err)
	}
	if m.AfterSeq < 0 {
		return toConnect(fmt.Errorf("%w: after_seq %d is negative", task.ErrInvalid, m.AfterSeq))
	}
	st, err := s.store()
	if err != nil {
		return err
	}
	key, err := st.Layout().ActiveKey(m.Id)
	if err != nil {
		return toConnect(err)
	}
	var w *coord.Watcher
	if m.Follow {
		// Watch before the first read, so no write falls in between.
		w = st.WatchActive(ctx)
		defer w.Close()
	}
	after := m.AfterSeq
	first := true
	// send reads the record and the log and sends the new lines; it
	// reports whether the task is final.
	send := func() (bool, error) {
		r, err := st.Get(ctx, m.Id)
		if err != nil {
			return false, toConnect(err)
		}
		l, err := st.ReadLog(ctx, m.Id)
		if err != nil {
			return false, toConnect(err)
		}
		lines := l.After(after)
		// The first message, and the last (the task final), go out even
		// without lines: a follower learns the state it ends on.
		if len(lines) > 0 || first || r.State.Final() {
			msg := &taskdv1.TaskLogResponse{Dropped: l.Dropped, State: string(r.State)}
			for _, ln := range lines {
				msg.Lines = append(msg.Lines, &taskdv1.TaskLogLine{Seq: ln.Seq, At: ts(ln.At), Attempt: int32(ln.Attempt), Text: ln.Text})
				after = ln.Seq
			}
			first = false
			if err := stream.Send(msg); err != nil {
				return false, err
			}
		}
		return r.State.Final(), nil
	}
	done, err := send()
	if err != nil || done || !m.Follow {
		return err
	}
	for ev := range w.Events() {
		if ev.KV.Key != key && ev.Type != coord.EventSynced {
			continue
		}
		if done, err := send(); err != nil || done {
			return err
		}
	}
	if ctx.Err() != nil {
		return toConnect(ctx.Err())
	}
	return toConnect(fmt.Errorf("task log watch ended: %w", coord.ErrUnavailable))
}
