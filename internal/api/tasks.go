package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/task"
)

// errNotConnected: the node has no task store yet.
var errNotConnected = fmt.Errorf("node is not connected to the coordinator yet: %w", coord.ErrUnavailable)

type taskService struct{ c Cluster }

// store is the task store of a node with a live store session. Without
// one (quorum lost, store unreachable, rejoining), a request would only
// wait out its deadline: it fails at once, saying why.
func (s *taskService) store() (*task.Store, error) {
	st := s.c.TaskStore()
	if st == nil {
		return nil, toConnect(errNotConnected)
	}
	if err := noSession(s.c); err != nil {
		return nil, toConnect(err)
	}
	return st, nil
}

// hasSession: the view is of a joined node whose session is confirmed.
func hasSession(v quorum.View) bool { return v.Ready && v.Session == coord.StateRunning.String() }

// noSession is nil when the node has a live store session, else an
// ErrUnavailable that says since when it has none and why. A session that
// is reconnecting (no confirmed contact, before the local deadline) counts
// as none: a request would wait for the store as long as the deadline.
func noSession(c Cluster) error {
	v := c.View()
	if c.Ready() && hasSession(v) {
		return nil
	}
	msg := "the node has no store session: " + v.Session
	if !v.SessionSince.IsZero() {
		msg += " since " + v.SessionSince.UTC().Format(time.RFC3339) + " (" + time.Since(v.SessionSince).Round(time.Second).String() + ")"
	}
	if v.JoinError != "" {
		msg += ", last error: " + v.JoinError
	}
	return fmt.Errorf("%s; the store may have lost its quorum (taskctl doctor names unreachable members): %w", msg, coord.ErrUnavailable)
}

// toTask converts a record; reason is why it waits ("" when running or final).
func toTask(r *task.Record, reason string) *taskdv1.Task {
	t := &taskdv1.Task{
		Id: r.ID, Type: r.Type, Spec: string(r.Spec), State: string(r.State), Request: string(r.Request),
		Attempt: int32(r.Attempt), Runner: r.Runner, Priority: int32(r.Priority), Node: r.Node,
		MaxRetries: int32(r.MaxRetries), Retries: int32(r.Retries), Reason: reason,
		Progress: &taskdv1.TaskProgress{Done: r.Progress.Done, Total: r.Progress.Total, Bytes: r.Progress.Bytes,
			Rate: r.Progress.Rate, EtaSeconds: r.Progress.ETASeconds},
		Created: ts(r.Created), Started: ts(r.Started), Finished: ts(r.Finished), Updated: ts(r.Updated),
		NotBefore: ts(r.NotBefore), HasCheckpoint: len(r.Checkpoint) > 0,
		RateLimit: r.RateLimit, RateLimitSet: r.RateLimitSet, Schedule: r.Schedule, Tick: ts(r.Tick), IdempotencyKey: r.IdempotencyKey, Key: r.Key, KeyLimit: int32(r.KeyLimit),
		After: r.After, AfterPolicy: r.AfterPolicy,
	}
	if r.Window != nil {
		t.Window, t.WindowZone = r.Window.Spec, r.Window.Zone
	}
	if r.Error != nil {
		t.Error = &taskdv1.TaskError{Code: r.Error.Code, Message: r.Error.Message}
	}
	for _, a := range r.History {
		t.History = append(t.History, &taskdv1.TaskAttempt{
			N: int32(a.N), Runner: a.Runner, Started: ts(a.Started), Ended: ts(a.Ended), Outcome: a.Outcome,
			Error: a.Error, ResumedFromCheckpoint: a.Resumed, ProgressDone: a.Progress,
		})
	}
	return t
}

// afterReason reads the tasks r waits for to say whether it waits for
// one of them.
func afterReason(ctx context.Context, st *task.Store, r *task.Record) (string, error) {
	deps := map[string]*task.Record{}
	for _, id := range r.After {
		d, err := st.Get(ctx, id)
		if errors.Is(err, task.ErrNotFound) {
			continue
		}
		if err != nil {
			return "", err
		}
		deps[id] = d
	}
	wait, fail := r.AfterReason(deps)
	if fail != nil {
		return "about to fail: " + fail.Message, nil
	}
	return wait, nil
}

// keyReason reads the running tasks to say whether r waits for its
// concurrency key.
func keyReason(ctx context.Context, st *task.Store, r *task.Record) (string, error) {
	rs, err := st.List(ctx, task.Filter{Status: string(task.Running)})
	if err != nil {
		return "", err
	}
	use := task.KeyUse{}
	for _, o := range rs {
		use.Add(o)
	}
	return r.KeyReason(use), nil
}

// typeLimitReason says whether r waits for its type's cluster-wide
// limit, reading the running tasks only when its type has one.
func typeLimitReason(ctx context.Context, st *task.Store, r *task.Record) (string, error) {
	limits, err := st.ReadTypeLimits(ctx)
	if err != nil {
		return "", err
	}
	if _, ok := limits[r.Type]; !ok {
		return "", nil
	}
	rs, err := st.List(ctx, task.Filter{Status: string(task.Running), Type: r.Type})
	if err != nil {
		return "", err
	}
	use := task.TypeUse{}
	for _, o := range rs {
		use.Add(o)
	}
	return r.TypeLimitReason(limits, use), nil
}

// explain computes why r waits, reading the runners when it matters.
func explain(ctx context.Context, st *task.Store, r *task.Record) (string, error) {
	if r.State != task.Waiting && r.State != task.Paused {
		return "", nil
	}
	runners, err := st.Runners(ctx)
	if err != nil {
		return "", err
	}
	why, _ := r.Ready(st.Now())
	if why == "" && r.State == task.Waiting && len(r.After) > 0 {
		why, err = afterReason(ctx, st, r)
		if err != nil {
			return "", err
		}
	}
	if why == "" && r.State == task.Waiting && r.Key != "" {
		why, err = keyReason(ctx, st, r)
		if err != nil {
			return "", err
		}
	}
	if why == "" && r.State == task.Waiting {
		why, err = typeLimitReason(ctx, st, r)
		if err != nil {
			return "", err
		}
	}
	if why == "" {
		why, _ = r.WaitReason(runners, st.Now())
	}
	if why == "" {
		why = "ready to run; waiting for the dispatcher"
	}
	if r.Parked != "" {
		why += " (" + r.Parked + ")"
	}
	return why, nil
}

func (s *taskService) reply(ctx context.Context, st *task.Store, r *task.Record) (*connect.Response[taskdv1.GetTaskResponse], error) {
	why, err := explain(ctx, st, r)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&taskdv1.GetTaskResponse{Task: toTask(r, why)}), nil
}

func (s *taskService) CreateTask(ctx context.Context, req *connect.Request[taskdv1.CreateTaskRequest]) (*connect.Response[taskdv1.CreateTaskResponse], error) {
	m := req.Msg
	if err := keys.ValidTaskType(m.Type); err != nil {
		return nil, toConnect(err)
	}
	if m.Node != "" {
		if err := keys.ValidName(m.Node); err != nil {
			return nil, toConnect(err)
		}
	}
	st, err := s.store()
	if err != nil {
		return nil, err
	}
	cr := task.CreateRequest{Type: m.Type, Spec: json.RawMessage(m.Spec), Priority: int(m.Priority), Node: m.Node,
		Window: m.Window, Zone: m.WindowZone, IdempotencyKey: m.IdempotencyKey, Key: m.Key, KeyLimit: int(m.KeyLimit),
		After: m.After, AfterPolicy: m.AfterPolicy}
	if m.MaxRetries != nil {
		n := int(*m.MaxRetries)
		cr.MaxRetries = &n
	}
	// Bad input is refused before a record exists: the type checks the
	// spec against this node's resources when the task is pinned here
	// (a copy's files), and what holds on every node otherwise. A retry
	// with an idempotency key that answers with its first task is not
	// checked again.
	r, existing, err := st.CreateOnceChecked(ctx, cr, func() error { return st.Preflight(ctx, cr, s.c.View().Self) })
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&taskdv1.CreateTaskResponse{Task: toTask(r, ""), Existing: existing}), nil
}

func (s *taskService) GetTask(ctx context.Context, req *connect.Request[taskdv1.GetTaskRequest]) (*connect.Response[taskdv1.GetTaskResponse], error) {
	if err := keys.ValidTaskID(req.Msg.Id); err != nil {
		return nil, toConnect(err)
	}
	st, err := s.store()
	if err != nil {
		return nil, err
	}
	r, err := st.Get(ctx, req.Msg.Id)
	if err != nil {
		return nil, toConnect(err)
	}
	return s.reply(ctx, st, r)
}

// control runs one of the store's control operations.
func (s *taskService) control(ctx context.Context, id string, op func(*task.Store, context.Context, string) (*task.Record, error)) (*connect.Response[taskdv1.GetTaskResponse], error) {
	if err := keys.ValidTaskID(id); err != nil {
		return nil, toConnect(err)
	}
	st, err := s.store()
	if err != nil {
		return nil, err
	}
	r, err := op(st, ctx, id)
	if err != nil {
		return nil, toConnect(err)
	}
	return s.reply(ctx, st, r)
}

func (s *taskService) CancelTask(ctx context.Context, req *connect.Request[taskdv1.TaskRef]) (*connect.Response[taskdv1.GetTaskResponse], error) {
	return s.control(ctx, req.Msg.Id, (*task.Store).Cancel)
}

func (s *taskService) PauseTask(ctx context.Context, req *connect.Request[taskdv1.TaskRef]) (*connect.Response[taskdv1.GetTaskResponse], error) {
	return s.control(ctx, req.Msg.Id, (*task.Store).Pause)
}

func (s *taskService) ResumeTask(ctx context.Context, req *connect.Request[taskdv1.TaskRef]) (*connect.Response[taskdv1.GetTaskResponse], error) {
	return s.control(ctx, req.Msg.Id, (*task.Store).Resume)
}

func (s *taskService) SetTaskWindow(ctx context.Context, req *connect.Request[taskdv1.SetTaskWindowRequest]) (*connect.Response[taskdv1.GetTaskResponse], error) {
	m := req.Msg
	if m.Clear == (m.Window != "") {
		return nil, toConnect(fmt.Errorf("%w: give a window HH:MM-HH:MM or clear, not both or neither", task.ErrInvalid))
	}
	return s.control(ctx, m.Id, func(st *task.Store, ctx context.Context, id string) (*task.Record, error) {
		return st.SetWindow(ctx, id, m.Window, m.WindowZone)
	})
}

// SetTaskRate sets or clears the task's rate limit.
func (s *taskService) SetTaskRate(ctx context.Context, req *connect.Request[taskdv1.SetTaskRateRequest]) (*connect.Response[taskdv1.GetTaskResponse], error) {
	m := req.Msg
	if m.Clear && m.BytesPerSecond != 0 {
		return nil, toConnect(fmt.Errorf("%w: give a rate or clear, not both", task.ErrInvalid))
	}
	return s.control(ctx, m.Id, func(st *task.Store, ctx context.Context, id string) (*task.Record, error) {
		return st.SetRate(ctx, id, m.BytesPerSecond, m.Clear)
	})
}

// WatchTask sends the record now and after each change, until it is final.
// It follows the store's watch: no polling.
func (s *taskService) WatchTask(ctx context.Context, req *connect.Request[taskdv1.TaskRef], stream *connect.ServerStream[taskdv1.GetTaskResponse]) error {
	id := req.Msg.Id
	if err := keys.ValidTaskID(id); err != nil {
		return toConnect(err)
	}
	st, err := s.store()
	if err != nil {
		return err
	}
	key, err := st.Layout().ActiveKey(id)
	if err != nil {
		return toConnect(err)
	}
	// sent is the store version of the record last sent: a watch's first
	// contents may be older than the Get that opened the stream, and a
	// task's state must not be shown going back.
	var sent int64
	send := func(r *task.Record) (bool, error) {
		why, err := explain(ctx, st, r)
		if err != nil {
			return false, toConnect(err)
		}
		if err := stream.Send(&taskdv1.GetTaskResponse{Task: toTask(r, why)}); err != nil {
			return false, err
		}
		sent = r.Version()
		return r.State.Final(), nil
	}
	w := st.WatchActive(ctx)
	defer w.Close()
	r, err := st.Get(ctx, id)
	if err != nil {
		return toConnect(err)
	}
	if done, err := send(r); done || err != nil {
		return err
	}
	for ev := range w.Events() {
		switch {
		case ev.Type == coord.EventPut && ev.KV.Key == key && ev.KV.Version > sent:
			r, err := task.Decode(ev.KV.Key, ev.KV.Value, ev.KV.Version)
			if err != nil {
				return toConnect(err)
			}
			if done, err := send(r); done || err != nil {
				return err
			}
		case ev.Type == coord.EventDelete && ev.KV.Key == key, ev.Type == coord.EventSynced:
			r, err := st.Get(ctx, id)
			if err != nil {
				return toConnect(err)
			}
			if r.State.Final() {
				_, err := send(r)
				return err
			}
		}
	}
	if ctx.Err() != nil {
		return toConnect(ctx.Err())
	}
	// The store's watch ended (its session is gone): a passing state that
	// a client waits out by reconnecting, not an internal error.
	return toConnect(fmt.Errorf("task watch ended: %w", coord.ErrUnavailable))
}

type runnerService struct{ c Cluster }

func toRunner(r task.Runner) *taskdv1.RunnerInfo {
	out := &taskdv1.RunnerInfo{
		Node: r.Info.Node, Live: r.Live, Session: r.Info.Session, Capacity: int32(r.Info.Capacity),
		Running: int32(r.Running), Cordoned: r.Marks.Cordoned, Draining: r.Marks.Draining, Types: r.Info.Types,
		Started: ts(r.Info.Started), RunningByType: map[string]int32{}, TypeCapacity: map[string]int32{},
	}
	for k, v := range r.RunningByType {
		out.RunningByType[k] = int32(v)
	}
	for k, v := range r.Info.TypeCapacity {
		out.TypeCapacity[k] = int32(v)
	}
	return out
}

func (s *runnerService) ListRunners(ctx context.Context, _ *connect.Request[taskdv1.ListRunnersRequest]) (*connect.Response[taskdv1.ListRunnersResponse], error) {
	st := s.c.TaskStore()
	if st == nil {
		return nil, toConnect(errNotConnected)
	}
	rs, err := st.Runners(ctx)
	if err != nil {
		return nil, toConnect(err)
	}
	out := &taskdv1.ListRunnersResponse{}
	for _, r := range rs {
		out.Runners = append(out.Runners, toRunner(r))
	}
	return connect.NewResponse(out), nil
}

func (s *runnerService) SetRunnerMarks(ctx context.Context, req *connect.Request[taskdv1.SetRunnerMarksRequest]) (*connect.Response[taskdv1.SetRunnerMarksResponse], error) {
	st := s.c.TaskStore()
	if st == nil {
		return nil, toConnect(errNotConnected)
	}
	m := req.Msg
	if err := keys.ValidName(m.Node); err != nil {
		return nil, toConnect(err)
	}
	var f func(*task.Marks)
	switch m.Action {
	case "cordon":
		f = func(mk *task.Marks) { mk.Cordoned = true }
	case "uncordon":
		f = func(mk *task.Marks) { mk.Cordoned, mk.Draining = false, false }
	case "drain":
		f = func(mk *task.Marks) { mk.Cordoned, mk.Draining = true, true }
	default:
		return nil, toConnect(fmt.Errorf("%w: runner action %q: use cordon, uncordon or drain", task.ErrInvalid, m.Action))
	}
	if _, err := st.SetMarks(ctx, m.Node, m.Force, f); err != nil {
		return nil, toConnect(err)
	}
	rs, err := st.Runners(ctx)
	if err != nil {
		return nil, toConnect(err)
	}
	for _, r := range rs {
		if r.Info.Node == m.Node {
			return connect.NewResponse(&taskdv1.SetRunnerMarksResponse{Runner: toRunner(r)}), nil
		}
	}
	return connect.NewResponse(&taskdv1.SetRunnerMarksResponse{}), nil
}
