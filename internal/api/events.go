package api

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/quorum"
	"google.golang.org/protobuf/types/known/timestamppb"
)

type eventService struct{ c Cluster }

// ListEvents merges the local journal with the store's rings.
func (s *eventService) ListEvents(ctx context.Context, req *connect.Request[taskdv1.ListEventsRequest]) (*connect.Response[taskdv1.ListEventsResponse], error) {
	m := req.Msg
	if err := events.ValidType(m.Type); err != nil {
		return nil, toConnect(err)
	}
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
	if rings := s.c.EventRings(); !m.LocalOnly && rings != nil {
		names := ringNodes(s.c.View(), s.c.EtcdMembers())
		if m.Node != "" {
			names = slices.DeleteFunc(names, func(n string) bool { return n != m.Node })
		}
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		ring, err := rings.Read(rctx, names)
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
		if e.Time.Before(since) || (m.Node != "" && e.Node != m.Node) || (m.Type != "" && string(e.Type) != m.Type) {
			continue
		}
		out.Events = append(out.Events, toEventPB(e))
	}
	return connect.NewResponse(out), nil
}

// WatchEvents follows every member's ring in the store: one watch per
// member known when the stream starts. It sends what the rings hold after
// since, then each new event.
func (s *eventService) WatchEvents(ctx context.Context, req *connect.Request[taskdv1.ListEventsRequest], stream *connect.ServerStream[taskdv1.Event]) error {
	if err := events.ValidType(req.Msg.Type); err != nil {
		return toConnect(err)
	}
	rings := s.c.EventRings()
	if rings == nil {
		return toConnect(errNotConnected)
	}
	m := req.Msg
	names := ringNodes(s.c.View(), s.c.EtcdMembers())
	wctx, cancel := context.WithCancel(ctx)
	merged := make(chan coord.Event)
	var wg sync.WaitGroup
	for _, n := range names {
		if m.Node != "" && n != m.Node {
			continue
		}
		w, err := rings.Watch(wctx, n)
		if err != nil {
			continue // not a member taskd named: no key is built from it
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer w.Close()
			for ev := range w.Events() {
				select {
				case merged <- ev:
				case <-wctx.Done():
				}
			}
		}()
	}
	defer wg.Wait()
	defer cancel()
	var since time.Time
	if m.Since != nil {
		since = m.Since.AsTime()
	}
	seen := map[string]uint64{} // newest seq sent per node
	for {
		var ev coord.Event
		select {
		case <-ctx.Done():
			return nil
		case ev = <-merged:
		}
		if ev.Type != coord.EventPut {
			continue
		}
		var e events.Event
		if json.Unmarshal(ev.KV.Value, &e) != nil || e.Seq <= seen[e.Node] || e.Time.Before(since) || (m.Type != "" && string(e.Type) != m.Type) {
			continue
		}
		seen[e.Node] = e.Seq
		if err := stream.Send(toEventPB(e)); err != nil {
			return err
		}
	}
}

// ringNodes are the nodes whose rings the store may hold: this node, the
// live members and every member that is down (it joined and has not been
// forgotten). A dead member's ring is its last word, and the timeline
// matters most exactly then.
func ringNodes(v quorum.View, etcdMembers []string) []string {
	names := []string{v.Self}
	for _, mb := range v.Members {
		if mb.Name != v.Self {
			names = append(names, mb.Name)
		}
	}
	for _, d := range v.Down(etcdMembers) {
		names = append(names, d.Name)
	}
	return names
}

func toEventPB(e events.Event) *taskdv1.Event {
	return &taskdv1.Event{Time: timestamppb.New(e.Time), Node: e.Node, Seq: e.Seq, Type: string(e.Type), Message: e.Message, Attrs: e.Attrs}
}
