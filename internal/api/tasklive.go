package api

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/task"
)

// maxPage bounds a page of ListTasks: a client that wants every task asks
// with limit 0 (taskctl), a browser pages.
const maxPage = 1000

// ListTasks filters, orders and pages the tasks. A page of the newest
// (limit > 0, newest first: the console) is the store's ListPage, a bounded
// read of the finished-task index and of the page's records; every other
// request (taskctl's limit 0, oldest first), and any while the index is not
// complete, reads every match and pages it here.
func (s *taskService) ListTasks(ctx context.Context, req *connect.Request[taskdv1.ListTasksRequest]) (*connect.Response[taskdv1.ListTasksResponse], error) {
	m := req.Msg
	if m.Type != "" {
		if err := keys.ValidTaskType(m.Type); err != nil {
			return nil, toConnect(err)
		}
	}
	if m.Node != "" {
		if err := keys.ValidName(m.Node); err != nil {
			return nil, toConnect(err)
		}
	}
	if m.Limit < 0 || m.Offset < 0 || m.Limit > maxPage {
		return nil, toConnect(fmt.Errorf("%w: page limit %d offset %d: limit is 0 (all) to %d, offset at least 0", task.ErrInvalid, m.Limit, m.Offset, maxPage))
	}
	if len(m.Key) > 128 {
		return nil, toConnect(fmt.Errorf("%w: key filter longer than 128 bytes", task.ErrInvalid))
	}
	st, err := s.store()
	if err != nil {
		return nil, err
	}
	rs, total, atLeast, err := listTasks(ctx, st, m)
	if err != nil {
		return nil, toConnect(err)
	}
	var runners []task.Runner
	if m.Explain && slices.ContainsFunc(rs, waits) {
		if runners, err = st.Runners(ctx); err != nil {
			return nil, toConnect(err)
		}
	}
	out := &taskdv1.ListTasksResponse{Tasks: make([]*taskdv1.Task, 0, len(rs)), Total: int32(total), TotalAtLeast: atLeast}
	for _, r := range rs {
		why := ""
		if m.Explain && waits(r) {
			why = reasonWith(r, runners, st.Now())
		}
		out.Tasks = append(out.Tasks, toTask(r, why))
	}
	return connect.NewResponse(out), nil
}

// listTasks is the page m asks for, the number of matches, and whether
// that number is a lower bound (see ListTasksResponse.total).
func listTasks(ctx context.Context, st *task.Store, m *taskdv1.ListTasksRequest) ([]*task.Record, int, bool, error) {
	f := task.Filter{Status: m.Status, Type: m.Type}
	if m.Limit > 0 && m.NewestFirst {
		p, err := st.ListPage(ctx, task.PageQuery{Filter: f, Node: m.Node, Key: m.Key, Offset: int(m.Offset), Limit: int(m.Limit)})
		if err == nil {
			return p.Records, p.Total, !p.TotalExact, nil
		}
		if !errors.Is(err, task.ErrIndexNotReady) {
			return nil, 0, false, err
		}
	}
	rs, err := st.List(ctx, f)
	if err != nil {
		return nil, 0, false, err
	}
	if m.Node != "" || m.Key != "" {
		rs = slices.DeleteFunc(rs, func(r *task.Record) bool {
			return (m.Node != "" && r.Runner != m.Node && r.Node != m.Node) || (m.Key != "" && !strings.Contains(r.ID, m.Key) && !strings.Contains(r.Key, m.Key))
		})
	}
	if m.NewestFirst {
		slices.Reverse(rs)
	}
	total := len(rs)
	rs = rs[min(int(m.Offset), total):]
	if m.Limit > 0 && len(rs) > int(m.Limit) {
		rs = rs[:m.Limit]
	}
	return rs, total, false, nil
}

func waits(r *task.Record) bool { return r.State == task.Waiting || r.State == task.Paused }

// reasonWith is explain with the runners already read.
func reasonWith(r *task.Record, runners []task.Runner, now time.Time) string {
	why, _ := r.WaitReason(runners, now)
	if why == "" {
		why = "ready to run; waiting for the dispatcher"
	}
	if r.Parked != "" {
		why += " (" + r.Parked + ")"
	}
	return why
}

// watchBatch is how long WatchTasks gathers changes into one message: a
// busy cluster sends a few messages a second, not one per write.
const watchBatch = 200 * time.Millisecond

// WatchTasks follows the directory of unfinished tasks. The first message
// (and one after every resync of the store's watch) is the whole set; then
// each message holds what changed within watchBatch.
func (s *taskService) WatchTasks(ctx context.Context, _ *connect.Request[taskdv1.WatchTasksRequest], stream *connect.ServerStream[taskdv1.WatchTasksResponse]) error {
	st, err := s.store()
	if err != nil {
		return err
	}
	w := st.WatchActive(ctx)
	defer w.Close()
	var (
		changed  = map[string]*task.Record{}
		removed  = map[string]bool{}
		snapshot = true // until the first EventSynced, the watch lists the set
		synced   = false
		flush    <-chan time.Time
	)
	send := func() error {
		msg := &taskdv1.WatchTasksResponse{Snapshot: snapshot}
		var runners []task.Runner
		ids := make([]string, 0, len(changed))
		for id := range changed {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			r := changed[id]
			why := ""
			if waits(r) {
				if runners == nil {
					if runners, err = st.Runners(ctx); err != nil {
						return toConnect(err)
					}
				}
				why = reasonWith(r, runners, st.Now())
			}
			msg.Tasks = append(msg.Tasks, toTask(r, why))
		}
		for id := range removed {
			msg.Removed = append(msg.Removed, id)
		}
		slices.Sort(msg.Removed)
		clear(changed)
		clear(removed)
		snapshot, flush = false, nil
		return stream.Send(msg)
	}
	events := w.Events()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-flush:
			if err := send(); err != nil {
				return err
			}
		case ev, ok := <-events:
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return toConnect(fmt.Errorf("task watch ended: %w", coord.ErrUnavailable))
			}
			switch ev.Type {
			case coord.EventSynced:
				if !synced || snapshot {
					synced = true
					if err := send(); err != nil {
						return err
					}
					continue
				}
			case coord.EventPut:
				r, err := task.Decode(ev.KV.Key, ev.KV.Value, ev.KV.Version)
				if err != nil {
					continue // written around taskd: not a task
				}
				delete(removed, r.ID)
				changed[r.ID] = r
			case coord.EventDelete:
				id := ev.KV.Key[strings.LastIndexByte(ev.KV.Key, '/')+1:]
				delete(changed, id)
				removed[id] = true
			}
			if synced && flush == nil && (len(changed) > 0 || len(removed) > 0) {
				flush = time.After(watchBatch)
			}
		}
	}
}
