package api

import (
	"context"
	"fmt"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/vips"
)

type vipService struct{ c Cluster }

func (s *vipService) registry() (*vips.Registry, error) {
	if r := s.c.VIPs(); r != nil {
		return r, nil
	}
	return nil, toConnect(fmt.Errorf("node is not connected to the coordinator yet: %w", coord.ErrUnavailable))
}

func (s *vipService) SetVIP(ctx context.Context, req *connect.Request[taskdv1.SetVIPRequest]) (*connect.Response[taskdv1.SetVIPResponse], error) {
	m := req.Msg
	if err := keys.ValidService(m.Service); err != nil {
		return nil, toConnect(err)
	}
	r, err := s.registry()
	if err != nil {
		return nil, err
	}
	c, err := r.Set(ctx, vips.ServiceVIP{Service: m.Service, Address: m.Address, Interface: m.Interface})
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&taskdv1.SetVIPResponse{Vip: toVIP(vips.Status{VIP: c})}), nil
}

func (s *vipService) ListVIPs(ctx context.Context, _ *connect.Request[taskdv1.ListVIPsRequest]) (*connect.Response[taskdv1.ListVIPsResponse], error) {
	r, err := s.registry()
	if err != nil {
		return nil, err
	}
	st, err := r.List(ctx)
	if err != nil {
		return nil, toConnect(err)
	}
	out := &taskdv1.ListVIPsResponse{}
	for _, v := range st {
		out.Vips = append(out.Vips, toVIP(v))
	}
	return connect.NewResponse(out), nil
}

func (s *vipService) DeleteVIP(ctx context.Context, req *connect.Request[taskdv1.DeleteVIPRequest]) (*connect.Response[taskdv1.DeleteVIPResponse], error) {
	if err := keys.ValidService(req.Msg.Service); err != nil {
		return nil, toConnect(err)
	}
	r, err := s.registry()
	if err != nil {
		return nil, err
	}
	if err := r.Delete(ctx, req.Msg.Service); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&taskdv1.DeleteVIPResponse{}), nil
}

func (s *vipService) DrainVIP(ctx context.Context, req *connect.Request[taskdv1.DrainVIPRequest]) (*connect.Response[taskdv1.DrainVIPResponse], error) {
	if err := validDrain(req.Msg); err != nil {
		return nil, toConnect(err)
	}
	r, err := s.registry()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	to, err := r.Drain(ctx, req.Msg.Service, req.Msg.To)
	if err != nil {
		return nil, toConnect(err)
	}
	out := &taskdv1.DrainVIPResponse{To: to}
	if req.Msg.Wait {
		limit := time.Duration(req.Msg.WaitTimeoutMs) * time.Millisecond
		if limit <= 0 {
			limit = 30 * time.Second
		}
		wctx, cancel := context.WithTimeout(ctx, limit)
		defer cancel()
		if err := r.WaitHeld(wctx, req.Msg.Service, to); err != nil {
			return nil, toConnect(err)
		}
		out.TookMs = time.Since(start).Milliseconds()
	}
	return connect.NewResponse(out), nil
}

// validDrain checks the names of a drain request before anything is read.
func validDrain(m *taskdv1.DrainVIPRequest) error {
	if err := keys.ValidService(m.Service); err != nil {
		return err
	}
	if m.To != "" {
		return keys.ValidName(m.To)
	}
	return nil
}

func toVIP(s vips.Status) *taskdv1.VIP {
	v := &taskdv1.VIP{Service: s.VIP.Service, Address: s.VIP.Address, Interface: s.VIP.Interface, Preferred: s.VIP.Preferred,
		Refused: s.Refused}
	if a := s.Assigned; a != nil {
		v.Assigned, v.AssignedSince, v.AssignedReason = a.Node, ts(a.Since), a.Reason
	}
	if h := s.Held; h != nil {
		v.Holder, v.HeldSince, v.Up, v.Error, v.HolderHealth = h.Node, ts(h.Since), h.Up, h.Error, s.HolderHealth
	}
	return v
}
