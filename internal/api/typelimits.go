package api

import (
	"context"
	"fmt"
	"slices"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/task"
)

// SetTypeLimit sets or removes a type's cluster-wide limit and answers
// with every limit.
func (s *taskService) SetTypeLimit(ctx context.Context, req *connect.Request[taskdv1.SetTypeLimitRequest]) (*connect.Response[taskdv1.TypeLimitsResponse], error) {
	m := req.Msg
	st, err := s.store()
	if err != nil {
		return nil, err
	}
	switch {
	case m.Unset && m.Limit != 0:
		return nil, toConnect(fmt.Errorf("%w: unset takes no limit (got %d)", task.ErrInvalid, m.Limit))
	case m.Unset:
		err = st.UnsetTypeLimit(ctx, m.Type)
	default:
		err = st.SetTypeLimit(ctx, m.Type, int(m.Limit))
	}
	if err != nil {
		return nil, toConnect(err)
	}
	return s.typeLimits(ctx, st)
}

// ListTypeLimits lists the limits with the running tasks of each type.
func (s *taskService) ListTypeLimits(ctx context.Context, _ *connect.Request[taskdv1.ListTypeLimitsRequest]) (*connect.Response[taskdv1.TypeLimitsResponse], error) {
	st, err := s.store()
	if err != nil {
		return nil, err
	}
	return s.typeLimits(ctx, st)
}

func (s *taskService) typeLimits(ctx context.Context, st *task.Store) (*connect.Response[taskdv1.TypeLimitsResponse], error) {
	limits, err := st.ReadTypeLimits(ctx)
	if err != nil {
		return nil, toConnect(err)
	}
	running := map[string]int{}
	if len(limits) > 0 {
		rs, err := st.List(ctx, task.Filter{Status: string(task.Running)})
		if err != nil {
			return nil, toConnect(err)
		}
		for _, r := range rs {
			running[r.Type]++
		}
	}
	out := &taskdv1.TypeLimitsResponse{}
	for typ, n := range limits {
		out.Limits = append(out.Limits, &taskdv1.TypeLimit{Type: typ, Limit: int32(n), Running: int32(running[typ])})
	}
	slices.SortFunc(out.Limits, func(a, b *taskdv1.TypeLimit) int {
		if a.Type < b.Type {
			return -1
		}
		if a.Type > b.Type {
			return 1
		}
		return 0
	})
	return connect.NewResponse(out), nil
}
