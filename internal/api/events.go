package api

import (
	"context"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/internal/api/gen/taskdv1"
	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/quorum"
	"google.golang.org/protobuf/types/known/timestamppb"
)

type eventService struct{ c Cluster }

// ListEvents merges the local journal with the store's rings.
func (s *eventService) ListEvents(ctx context.Context, req *connect.Request[taskdv1.ListEventsRequest]) (*connect.Response[taskdv1.ListEventsResponse], error) {
	m := req.Msg
	rec := s.c.Events()
	out := &taskdv1.ListEventsResponse{}
	var lists [][]events.Event
	if rec != nil {
		local, err := rec.Local()
		if err != nil {
			return nil, toConnect(err)
		}
		lists = append(lists, local)
	}
	if st := s.c.TaskStore(); !m.LocalOnly && st != nil {
		v := s.c.View()
		names := []string{v.Self}
		for _, mb := range v.Members {
			if mb.Name != v.Self {
				names = append(names, mb.Name)
			}
		}
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		ring, err := events.FromStore(rctx, st.KV(), quorum.DefaultConfig().Root, names)
		cancel()
		if err != nil {
			out.Partial = "the store's event rings could not be read: " + err.Error()
		}
		lists = append(lists, ring)
	}
	var since time.Time
	if m.Since != nil {
		since = m.Since.AsTime()
	}
	for _, e := range events.Merge(lists...) {
		if e.Time.Before(since) || (m.Node != "" && e.Node != m.Node) || (m.Type != "" && e.Type != m.Type) {
			continue
		}
		out.Events = append(out.Events, &taskdv1.Event{Time: timestamppb.New(e.Time), Node: e.Node, Seq: e.Seq,
			Type: e.Type, Message: e.Message, Attrs: e.Attrs})
	}
	return connect.NewResponse(out), nil
}
