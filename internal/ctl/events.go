package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/api"
	"github.com/taskd/taskd/internal/events"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// eventsCmd prints the cluster timeline: the answering node's journal and
// the store's rings, plus every other member's local journal, so that the
// story survives a coordinator outage.
func eventsCmd(g *globals) *cobra.Command {
	var since, node, typ string
	var follow bool
	cmd := &cobra.Command{
		Use:   "events [--since DURATION|TIME] [--node N] [--type T] [--follow]",
		Short: "The cluster's lifecycle timeline, merged from every member, in time order",
		Long: "Session changes, elections, fences, process starts with the previous exit, health and\n" +
			"priority changes, VIP takes and releases, task reassignments and parkings. --since takes a\n" +
			"duration (1h) or a time (RFC 3339).",
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := events.ValidType(typ); err != nil {
				return usageError{fmt.Errorf("--type: %w", err)}
			}
			req := &taskdv1.ListEventsRequest{Node: node, Type: typ}
			if since != "" {
				t, err := parseSince(since)
				if err != nil {
					return usageError{err}
				}
				req.Since = timestamppb.New(t)
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd)
			defer cancel()
			resp, err := c.Events.ListEvents(ctx, connect.NewRequest(req))
			if err != nil {
				return fmt.Errorf("list events: %w", err)
			}
			all := resp.Msg.Events
			if resp.Msg.Partial != "" {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", resp.Msg.Partial)
			}
			all = append(all, g.memberJournals(ctx, cmd, c, req)...)
			all = events.MergeFunc(all, func(e *taskdv1.Event) (string, uint64, time.Time) { return e.Node, e.Seq, e.Time.AsTime() })
			if follow {
				return g.follow(cmd, c, req, all)
			}
			if g.output == "json" {
				return g.printEventsJSON(all, resp.Msg.Partial)
			}
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME\tNODE\tTYPE\tEVENT\tDETAILS")
			for _, e := range all {
				fmt.Fprintln(tw, eventRow(e))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "after the timeline, print new events as they reach the store, until interrupted (-o json: one object per line)")
	f := cmd.Flags()
	f.StringVar(&since, "since", "", "only events after this: a duration back from now (30m) or an RFC 3339 time")
	f.StringVar(&node, "node", "", "only this node's events")
	f.StringVar(&typ, "type", "", "only this type: session, election, fence_started, start, health, vip_take, vip_duplicate, task_parked, ... (every type: docs/operations.md)")
	return cmd
}

// printEventsJSON prints the timeline as {"events": [...], "partial":
// bool, "partial_reason": "..."}: partial says whether parts of the
// timeline could not be read, the reason says which.
func (g *globals) printEventsJSON(all []*taskdv1.Event, partial string) error {
	out := struct {
		Events        []json.RawMessage `json:"events"`
		Partial       bool              `json:"partial"`
		PartialReason string            `json:"partial_reason,omitempty"`
	}{Events: []json.RawMessage{}, Partial: partial != "", PartialReason: partial}
	for _, e := range all {
		b, err := toJSON(e)
		if err != nil {
			return err
		}
		out.Events = append(out.Events, b)
	}
	b, err := encodeJSON(out)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(g.out, string(b))
	return err
}

func eventRow(e *taskdv1.Event) string {
	return fmt.Sprintf("%s\t%s\t%s\t%s\t%s", e.Time.AsTime().Local().Format("2006-01-02 15:04:05.000 MST"),
		e.Node, e.Type, e.Message, details(e.Attrs))
}

// follow prints the timeline so far, then new events from the stream,
// skipping those already printed.
func (g *globals) follow(cmd *cobra.Command, c *api.Client, req *taskdv1.ListEventsRequest, past []*taskdv1.Event) error {
	printed := map[string]bool{}
	show := func(e *taskdv1.Event) error {
		k := fmt.Sprintf("%s/%d", e.Node, e.Seq)
		if printed[k] {
			return nil
		}
		printed[k] = true
		if g.output == "json" {
			return g.printJSON(e)
		}
		_, err := fmt.Fprintln(g.out, strings.ReplaceAll(eventRow(e), "\t", "  "))
		return err
	}
	for _, e := range past {
		if err := show(e); err != nil {
			return err
		}
	}
	stream, err := c.Events.WatchEvents(cmd.Context(), connect.NewRequest(req))
	if err != nil {
		return fmt.Errorf("follow events: %w", err)
	}
	defer stream.Close()
	for stream.Receive() {
		if err := show(stream.Msg()); err != nil {
			return err
		}
	}
	if cmd.Context().Err() != nil {
		return nil
	}
	return fmt.Errorf("follow events: %w", stream.Err())
}

// memberJournals asks every other member for its local journal; members
// that do not answer are named on stderr and skipped.
func (g *globals) memberJournals(ctx context.Context, cmd *cobra.Command, c *api.Client, req *taskdv1.ListEventsRequest) []*taskdv1.Event {
	m, err := c.Cluster.ListMembers(ctx, connect.NewRequest(&taskdv1.ListMembersRequest{}))
	if err != nil {
		fmt.Fprintln(cmd.ErrOrStderr(), "warning: cannot list members:", err)
		return nil
	}
	local := &taskdv1.ListEventsRequest{Since: req.Since, Node: req.Node, Type: req.Type, LocalOnly: true}
	var out []*taskdv1.Event
	for _, mb := range m.Msg.Members {
		if mb.Name == m.Msg.Self || mb.Address == "" || (req.Node != "" && mb.Name != req.Node) {
			continue
		}
		if mb.State == "down" {
			// It cannot answer; its events come from its ring in the store.
			continue
		}
		mc, err := g.clientAt(g.memberEndpoint(mb.Address), mb.Name)
		if err != nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s (%s): %v\n", mb.Name, mb.Address, err)
			continue
		}
		mctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		r, err := mc.Events.ListEvents(mctx, connect.NewRequest(local))
		cancel()
		if err != nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s (%s) did not answer; its journal is missing: %s\n", mb.Name, mb.Address, explain(err))
			continue
		}
		out = append(out, r.Msg.Events...)
	}
	return out
}

func details(attrs map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(attrs)) {
		parts = append(parts, k+"="+attrs[k])
	}
	return strings.Join(parts, " ")
}

func parseSince(s string) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return time.Now().Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("--since %q: use a duration (30m) or an RFC 3339 time", s)
}
