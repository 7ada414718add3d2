package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/schedule"
	"github.com/taskd/taskd/internal/task"
)

type scheduleService struct{ c Cluster }

func (s *scheduleService) store() (*schedule.Store, error) {
	if st := s.c.Schedules(); st != nil {
		return st, nil
	}
	return nil, toConnect(errNotConnected)
}

// previewRuns is how many next runs a schedule shows by default.
const previewRuns = 5

func (s *scheduleService) CreateSchedule(ctx context.Context, req *connect.Request[taskdv1.CreateScheduleRequest]) (*connect.Response[taskdv1.CreateScheduleResponse], error) {
	st, err := s.store()
	if err != nil {
		return nil, err
	}
	m := req.Msg
	preview := int(m.Preview)
	if preview == 0 {
		preview = previewRuns
	}
	if preview < 0 || preview > 100 {
		return nil, toConnect(fmt.Errorf("%w: preview %d: use 1-100", schedule.ErrInvalid, preview))
	}
	t := m.GetTemplate()
	cr := schedule.CreateRequest{
		Name: m.Name, Spec: schedule.Spec{Cron: m.Cron, Zone: m.Zone, Every: m.Every},
		Template: schedule.Template{Type: t.GetType(), Spec: json.RawMessage(t.GetSpec()), Priority: int(t.GetPriority()),
			Node: t.GetNode(), Window: t.GetWindow(), WindowZone: t.GetWindowZone()},
		Overlap: m.Overlap, Jitter: time.Duration(m.JitterMs) * time.Millisecond, KeepLast: int(m.KeepLast),
		Paused: m.Paused, Note: m.Note, DryRun: m.DryRun,
	}
	if t != nil && t.MaxRetries != nil {
		n := int(*t.MaxRetries)
		cr.Template.MaxRetries = &n
	}
	if m.CatchUpMs != nil {
		d := time.Duration(*m.CatchUpMs) * time.Millisecond
		cr.CatchUp = &d
	}
	sc, err := st.Create(ctx, cr)
	if err != nil {
		return nil, toConnect(err)
	}
	out, err := toSchedule(sc, nil, st.Now(), preview)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&taskdv1.CreateScheduleResponse{Schedule: out}), nil
}

func (s *scheduleService) ListSchedules(ctx context.Context, _ *connect.Request[taskdv1.ListSchedulesRequest]) (*connect.Response[taskdv1.ListSchedulesResponse], error) {
	st, err := s.store()
	if err != nil {
		return nil, err
	}
	all, err := st.List(ctx)
	if err != nil {
		return nil, toConnect(err)
	}
	now := st.Now()
	out := &taskdv1.ListSchedulesResponse{Schedules: make([]*taskdv1.Schedule, 0, len(all))}
	for _, a := range all {
		p, err := toSchedule(a.Schedule, a.State, now, 1)
		if err != nil {
			return nil, toConnect(err)
		}
		p.Runs = nil
		if p.LastRun != nil && p.LastRun.Task != "" {
			p.LastRun.TaskState = taskState(ctx, s.c.TaskStore(), p.LastRun.Task)
		}
		out.Schedules = append(out.Schedules, p)
	}
	return connect.NewResponse(out), nil
}

func (s *scheduleService) GetSchedule(ctx context.Context, req *connect.Request[taskdv1.ScheduleRef]) (*connect.Response[taskdv1.GetScheduleResponse], error) {
	st, err := s.store()
	if err != nil {
		return nil, err
	}
	sc, state, err := st.Get(ctx, req.Msg.Name)
	if err != nil {
		return nil, toConnect(err)
	}
	return s.reply(ctx, st, sc, state)
}

func (s *scheduleService) reply(ctx context.Context, st *schedule.Store, sc *schedule.Schedule, state *schedule.State) (*connect.Response[taskdv1.GetScheduleResponse], error) {
	p, err := toSchedule(sc, state, st.Now(), previewRuns)
	if err != nil {
		return nil, toConnect(err)
	}
	for _, r := range p.Runs {
		if r.Task != "" {
			r.TaskState = taskState(ctx, s.c.TaskStore(), r.Task)
		}
	}
	if n := len(p.Runs); n > 0 {
		p.LastRun = p.Runs[n-1]
	}
	return connect.NewResponse(&taskdv1.GetScheduleResponse{Schedule: p}), nil
}

// taskState is a made task's state, "deleted" once it is gone, "" when
// the store could not say.
func taskState(ctx context.Context, ts *task.Store, id string) string {
	if ts == nil {
		return ""
	}
	r, err := ts.Get(ctx, id)
	switch {
	case errors.Is(err, task.ErrNotFound):
		return "deleted"
	case err != nil:
		return ""
	}
	return string(r.State)
}

func (s *scheduleService) PauseSchedule(ctx context.Context, req *connect.Request[taskdv1.PauseScheduleRequest]) (*connect.Response[taskdv1.GetScheduleResponse], error) {
	st, err := s.store()
	if err != nil {
		return nil, err
	}
	if _, err := st.Pause(ctx, req.Msg.Name, req.Msg.Note); err != nil {
		return nil, toConnect(err)
	}
	return s.GetSchedule(ctx, connect.NewRequest(&taskdv1.ScheduleRef{Name: req.Msg.Name}))
}

func (s *scheduleService) ResumeSchedule(ctx context.Context, req *connect.Request[taskdv1.ScheduleRef]) (*connect.Response[taskdv1.GetScheduleResponse], error) {
	st, err := s.store()
	if err != nil {
		return nil, err
	}
	if _, err := st.Resume(ctx, req.Msg.Name); err != nil {
		return nil, toConnect(err)
	}
	return s.GetSchedule(ctx, req)
}

// triggerWait bounds how long TriggerSchedule waits for the leader.
const triggerWait = 10 * time.Second

func (s *scheduleService) TriggerSchedule(ctx context.Context, req *connect.Request[taskdv1.TriggerScheduleRequest]) (*connect.Response[taskdv1.TriggerScheduleResponse], error) {
	st, err := s.store()
	if err != nil {
		return nil, err
	}
	m := req.Msg
	id := m.RequestId
	if id == "" {
		id = uuid.NewString()
	}
	wait := time.Duration(m.WaitMs) * time.Millisecond
	if wait <= 0 || wait > time.Minute {
		wait = triggerWait
	}
	taskID, err := st.Trigger(ctx, m.Name, id)
	if err != nil {
		return nil, toConnect(err)
	}
	out := &taskdv1.TriggerScheduleResponse{Task: taskID, RequestId: id}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	run, err := st.WaitTrigger(wctx, m.Name, id)
	switch {
	case err == nil:
		out.Run = toRun(run)
		if run.Task != "" {
			out.Run.TaskState = taskState(ctx, s.c.TaskStore(), run.Task)
		}
	case wctx.Err() != nil && ctx.Err() == nil:
		// Queued: no leader handled it in time; it runs when one does.
	default:
		return nil, toConnect(err)
	}
	return connect.NewResponse(out), nil
}

func (s *scheduleService) DeleteSchedule(ctx context.Context, req *connect.Request[taskdv1.ScheduleRef]) (*connect.Response[taskdv1.DeleteScheduleResponse], error) {
	st, err := s.store()
	if err != nil {
		return nil, err
	}
	if err := st.Delete(ctx, req.Msg.Name); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&taskdv1.DeleteScheduleResponse{}), nil
}

func toRun(r schedule.Run) *taskdv1.ScheduleRun {
	return &taskdv1.ScheduleRun{Tick: ts(r.Tick), At: ts(r.At), Outcome: string(r.Outcome), Task: r.Task, Reason: r.Reason,
		Count: int32(r.Count), Trigger: r.Trigger}
}

// toSchedule converts a schedule and its state, with preview next runs
// from now (none while paused).
func toSchedule(sc *schedule.Schedule, st *schedule.State, now time.Time, preview int) (*taskdv1.Schedule, error) {
	t := sc.Template
	p := &taskdv1.Schedule{
		Name: sc.Name, Uid: sc.UID, Cron: sc.Spec.Cron, Zone: sc.Spec.Zone, Every: sc.Spec.Every,
		Template: &taskdv1.ScheduleTemplate{Type: t.Type, Spec: string(t.Spec), Priority: int32(t.Priority), Node: t.Node,
			Window: t.Window, WindowZone: t.WindowZone},
		Overlap: string(sc.Overlap), CatchUpMs: time.Duration(sc.CatchUp).Milliseconds(), JitterMs: time.Duration(sc.Jitter).Milliseconds(),
		KeepLast: int32(sc.KeepLast), Paused: sc.Paused, Note: sc.Note, Created: ts(sc.Created), Updated: ts(sc.Updated),
	}
	if t.MaxRetries != nil {
		n := int32(*t.MaxRetries)
		p.Template.MaxRetries = &n
	}
	if cron := sc.Spec.Cron; cron != "" && p.Zone == "" {
		p.Zone = "UTC"
	}
	if !sc.Paused {
		next, err := schedule.NextRuns(sc, st, now, preview)
		if err != nil {
			return nil, err
		}
		for _, n := range next {
			p.NextRuns = append(p.NextRuns, ts(n))
		}
	}
	if st != nil {
		for _, r := range st.Runs {
			p.Runs = append(p.Runs, toRun(r))
		}
		if n := len(p.Runs); n > 0 {
			p.LastRun = p.Runs[n-1]
		}
		if st.Pending != nil {
			p.Pending = ts(st.Pending.Tick)
		}
	}
	return p, nil
}
