package api

import (
	"context"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/keys"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Member states in ListMembers.
const (
	stateUp      = "up"
	stateDown    = "down"
	stateUnknown = "unknown"
)

// ListMembers answers with the live members and, as down, every member
// that was part of the cluster and is not live: nodes that joined (their
// known records), embedded etcd members and specified members. When this
// node has no store session, the other members' state is unknown.
func (s *clusterService) ListMembers(context.Context, *connect.Request[taskdv1.ListMembersRequest]) (*connect.Response[taskdv1.ListMembersResponse], error) {
	v := s.c.View()
	out := &taskdv1.ListMembersResponse{
		Leader: v.Leader, Epoch: v.Epoch, ElectedAt: ts(v.ElectedAt), Self: v.Self,
		SelfSession: v.Session, SelfReady: v.Ready, SelfError: v.JoinError, Coordinator: s.c.Coordinator(),
		SpecifiedMembers: v.Specified, ServerTime: timestamppb.Now(),
		SessionTimeoutMs: v.Timeout.Milliseconds(), DeadlineFraction: v.DeadlineFraction,
		SelfSessionSince: ts(v.SessionSince), SelfStarved: v.SelfStarved, SelfStarvedReason: v.SelfStarvedReason,
	}
	for _, m := range v.Members {
		pm := &taskdv1.Member{
			Name: m.Name, Address: m.Address, Priority: int32(m.Priority), CurrentPriority: int32(m.CurrentPriority),
			Session: m.Session, Health: m.Health, HealthReason: m.HealthReason, Leader: m.Name == v.Leader,
			Version: m.Version, NodeId: m.NodeID, StartedAt: ts(m.StartedAt), JoinedAt: ts(m.JoinedAt),
			State: stateUp, Starved: m.Starved, StarvedReason: m.StarvedReason,
		}
		switch {
		case m.Name == v.Self:
			pm.Session = v.Session
			pm.Starved, pm.StarvedReason = v.SelfStarved, v.SelfStarvedReason
			if !hasSession(v) {
				pm.State, pm.Since = stateUnknown, ts(v.SessionSince)
			}
		case !hasSession(v):
			// The record is what this node read before it lost its
			// session: the member may have died since.
			pm.State, pm.Since = stateUnknown, ts(v.SessionSince)
		}
		out.Members = append(out.Members, pm)
	}
	for _, d := range v.Down(s.c.EtcdMembers()) {
		out.Members = append(out.Members, &taskdv1.Member{
			Name: d.Name, Address: d.Address, State: stateDown, Since: ts(d.LastSeen), Sources: d.Sources,
			Session: "none", Health: "down",
		})
	}
	if f := v.LastFence; f != nil {
		out.LastFence = &taskdv1.FenceReport{
			Reason: f.Reason, Started: ts(f.Started), Finished: ts(f.Finished), DurationMs: f.Duration.Milliseconds(),
			EarliestExpiry: ts(f.EarliestExpiry), BeforeExpiry: f.BeforeExpiry,
		}
	}
	return connect.NewResponse(out), nil
}

// ForgetMember removes a decommissioned node that is down.
func (s *clusterService) ForgetMember(ctx context.Context, req *connect.Request[taskdv1.ForgetMemberRequest]) (*connect.Response[taskdv1.ForgetMemberResponse], error) {
	if err := keys.ValidName(req.Msg.Node); err != nil {
		return nil, toConnect(err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	f, err := s.c.Forget(ctx, req.Msg.Node)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&taskdv1.ForgetMemberResponse{KnownRecordRemoved: f.Known, EtcdMemberRemoved: f.Etcd}), nil
}
