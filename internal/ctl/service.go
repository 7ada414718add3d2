package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/quorum"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func serviceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "service", Short: "Cluster membership and leader election"}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List members, the leader and the epoch",
		Args:  exactArgs(0),
		RunE:  func(cmd *cobra.Command, _ []string) error { return serviceList(cmd, g) },
	})
	var force bool
	sp := &cobra.Command{
		Use:   "set-priority NODE PRIORITY",
		Short: "Set a node's election priority (0-255, higher wins)",
		Long: "Set a node's election priority (0-255, higher wins). The leader hands over to a member with a\n" +
			"strictly higher priority once it has been stable for the yield grace period.\n" +
			"--force stores the priority even if NODE is not a live member (e.g. before it first starts).",
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := strconv.Atoi(args[1])
			if err != nil {
				return usageError{fmt.Errorf("priority %q is not a number: use 0-255", args[1])}
			}
			if err := quorum.ValidatePriority(p); err != nil {
				return usageError{err}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd)
			defer cancel()
			_, err = c.Cluster.SetPriority(ctx, connect.NewRequest(&taskdv1.SetPriorityRequest{Node: args[0], Priority: int32(p), Force: force}))
			if err != nil {
				return fmt.Errorf("set priority of %s: %w", args[0], err)
			}
			if g.output == "json" {
				return json.NewEncoder(g.out).Encode(map[string]any{"node": args[0], "priority": p})
			}
			fmt.Fprintf(g.out, "priority of %s set to %d\n", args[0], p)
			return nil
		},
	}
	sp.Flags().BoolVar(&force, "force", false, "store the priority even if NODE is not a live member")
	cmd.AddCommand(sp)
	var clearList, forceList bool
	ss := &cobra.Command{
		Use:   "set-specified-members NODE... | --clear",
		Short: "Restrict leadership to the named members (the original's \"specified members\")",
		Long: "Only the named members may lead. A leader not on the list resigns at once. Without --force at\n" +
			"least one named node must be a live member. --clear lets every member lead again.",
		RunE: func(cmd *cobra.Command, args []string) error {
			if clearList == (len(args) > 0) {
				return usageError{fmt.Errorf("give either node names or --clear; usage: %s", cmd.UseLine())}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd)
			defer cancel()
			_, err = c.Cluster.SetSpecifiedMembers(ctx, connect.NewRequest(&taskdv1.SetSpecifiedMembersRequest{Members: args, Force: forceList}))
			if err != nil {
				return fmt.Errorf("set specified members: %w", err)
			}
			if g.output == "json" {
				return json.NewEncoder(g.out).Encode(map[string]any{"specified_members": append([]string{}, args...)})
			}
			if len(args) == 0 {
				fmt.Fprintln(g.out, "every member may lead")
			} else {
				fmt.Fprintf(g.out, "only %v may lead\n", args)
			}
			return nil
		},
	}
	ss.Flags().BoolVar(&clearList, "clear", false, "let every member lead")
	ss.Flags().BoolVar(&forceList, "force", false, "store the list even if none of the names is a live member")
	cmd.AddCommand(ss)
	cmd.AddCommand(forgetCmd(g))
	return cmd
}

// serviceListJSON is the stable JSON of `service list`.
type serviceListJSON struct {
	Leader      string     `json:"leader"`
	Epoch       int64      `json:"epoch"`
	ElectedAt   *time.Time `json:"elected_at,omitempty"`
	Self        string     `json:"self"`
	SelfSession string     `json:"self_session"`
	// SelfSessionSince is when the answering node's session state changed.
	SelfSessionSince *time.Time   `json:"self_session_since,omitempty"`
	SelfReady        bool         `json:"self_ready"`
	SelfError        string       `json:"self_error,omitempty"`
	Coordinator      string       `json:"coordinator"`
	Members          []memberJSON `json:"members"`
	// SpecifiedMembers restricts who may lead; empty: everyone.
	SpecifiedMembers []string   `json:"specified_members"`
	LastFence        *fenceJSON `json:"last_fence,omitempty"`
}

type memberJSON struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	// State is up, down (it was part of the cluster and has no live
	// session) or unknown (the answering node has no session itself).
	State string `json:"state"`
	// Since: for down, when it was last seen alive (absent if never);
	// for unknown, since when the answering node has had no session.
	Since *time.Time `json:"since,omitempty"`
	// Sources: for down, why it counts as a member (known, etcd, specified).
	Sources         []string   `json:"sources,omitempty"`
	Priority        int32      `json:"priority"`
	CurrentPriority int32      `json:"current_priority"`
	Session         string     `json:"session"`
	Health          string     `json:"health"`
	HealthReason    string     `json:"health_reason,omitempty"`
	Starved         bool       `json:"starved"`
	StarvedReason   string     `json:"starved_reason,omitempty"`
	Leader          bool       `json:"leader"`
	Version         string     `json:"version"`
	NodeID          string     `json:"node_id"`
	StartedAt       *time.Time `json:"started_at,omitempty"`
	JoinedAt        *time.Time `json:"joined_at,omitempty"`
	UptimeSeconds   float64    `json:"uptime_seconds"`
}

type fenceJSON struct {
	Reason         string     `json:"reason"`
	Started        *time.Time `json:"started,omitempty"`
	Finished       *time.Time `json:"finished,omitempty"`
	DurationMS     int64      `json:"duration_ms"`
	EarliestExpiry *time.Time `json:"earliest_expiry,omitempty"`
	BeforeExpiry   bool       `json:"before_expiry"`
}

func tp(t *timestamppb.Timestamp) *time.Time {
	if t == nil {
		return nil
	}
	v := t.AsTime()
	return &v
}

func toServiceListJSON(r *taskdv1.ListMembersResponse, now time.Time) serviceListJSON {
	out := serviceListJSON{
		Leader: r.Leader, Epoch: r.Epoch, ElectedAt: tp(r.ElectedAt), Self: r.Self, SelfSession: r.SelfSession,
		SelfSessionSince: tp(r.SelfSessionSince), SelfReady: r.SelfReady, SelfError: r.SelfError, Coordinator: r.Coordinator, Members: []memberJSON{},
		SpecifiedMembers: append([]string{}, r.SpecifiedMembers...),
	}
	for _, m := range r.Members {
		mj := memberJSON{
			Name: m.Name, Address: m.Address, State: m.State, Since: tp(m.Since), Sources: m.Sources, Priority: m.Priority, CurrentPriority: m.CurrentPriority, Session: m.Session,
			Health: m.Health, HealthReason: m.HealthReason, Starved: m.Starved, StarvedReason: m.StarvedReason,
			Leader: m.Leader, Version: m.Version, NodeID: m.NodeId,
			StartedAt: tp(m.StartedAt), JoinedAt: tp(m.JoinedAt),
		}
		if mj.StartedAt != nil {
			mj.UptimeSeconds = now.Sub(*mj.StartedAt).Seconds()
		}
		out.Members = append(out.Members, mj)
	}
	if f := r.LastFence; f != nil {
		out.LastFence = &fenceJSON{Reason: f.Reason, Started: tp(f.Started), Finished: tp(f.Finished), DurationMS: f.DurationMs,
			EarliestExpiry: tp(f.EarliestExpiry), BeforeExpiry: f.BeforeExpiry}
	}
	return out
}

// askDown asks each down member that has an address whether it is
// starved of CPU: a starved node loses its session, so its record is gone
// and only the node itself can say why. Each question is bounded to 1 s.
func askDown(ctx context.Context, g *globals, v *serviceListJSON) {
	for i := range v.Members {
		m := &v.Members[i]
		if m.State != "down" || m.Address == "" {
			continue
		}
		actx, cancel := context.WithTimeout(ctx, time.Second)
		r, _, err := ask(actx, g, g.memberEndpoint(m.Address), m.Name)
		cancel()
		if err == nil && r.Self == m.Name && r.SelfStarved {
			m.Starved, m.StarvedReason = true, r.SelfStarvedReason
		}
	}
}

func serviceList(cmd *cobra.Command, g *globals) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	ctx, cancel := g.ctx(cmd)
	defer cancel()
	resp, err := c.Cluster.ListMembers(ctx, connect.NewRequest(&taskdv1.ListMembersRequest{}))
	if err != nil {
		return fmt.Errorf("list members from %s: %w", g.endpoint, err)
	}
	v := toServiceListJSON(resp.Msg, time.Now())
	askDown(ctx, g, &v)
	if g.output == "json" {
		enc := json.NewEncoder(g.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	leader := v.Leader
	if leader == "" {
		leader = "(none)"
	}
	fmt.Fprintf(g.out, "service taskd  coordinator %s  leader %s  epoch %d", v.Coordinator, leader, v.Epoch)
	if v.ElectedAt != nil {
		fmt.Fprintf(g.out, "  elected %s (%s ago)", v.ElectedAt.Local().Format(time.RFC3339), human(time.Since(*v.ElectedAt)))
	}
	fmt.Fprintln(g.out)
	if len(v.SpecifiedMembers) > 0 {
		fmt.Fprintf(g.out, "only these may lead (specified members): %s\n", strings.Join(v.SpecifiedMembers, ", "))
	}
	fmt.Fprintf(g.out, "answered by %s: session %s", v.Self, v.SelfSession)
	if v.SelfSessionSince != nil && !v.SelfReady {
		fmt.Fprintf(g.out, " since %s (%s ago)", v.SelfSessionSince.Local().Format(time.RFC3339), human(time.Since(*v.SelfSessionSince)))
	}
	if v.SelfError != "" {
		fmt.Fprintf(g.out, " (%s)", v.SelfError)
	}
	fmt.Fprintln(g.out)
	tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tADDRESS\tSTATE\tSINCE\tROLE\tPRIORITY\tCURRENT\tSESSION\tHEALTH\tCPU\tSTARTED\tUPTIME\tVERSION")
	var starved []string
	var down []string
	for _, m := range v.Members {
		since := "-"
		if m.Since != nil {
			since = m.Since.Local().Format(time.RFC3339) + " (" + human(time.Since(*m.Since)) + " ago)"
		}
		if m.State == "down" {
			down = append(down, m.Name)
			if m.Since == nil {
				since = "never seen (" + strings.Join(m.Sources, ",") + ")"
			}
			cpu := "-"
			if m.Starved { // it answered: down because starved of CPU
				cpu = "starved"
				starved = append(starved, m.Name+": "+m.StarvedReason)
			}
			fmt.Fprintf(tw, "%s\t%s\tdown\t%s\t-\t-\t-\t-\t-\t%s\t-\t-\t-\n", m.Name, orDash(m.Address), since, cpu)
			continue
		}
		role := "follower"
		if m.Leader {
			role = "leader"
		}
		started, uptime := "-", "-"
		if m.StartedAt != nil {
			started = m.StartedAt.Local().Format(time.RFC3339)
			uptime = human(time.Duration(m.UptimeSeconds * float64(time.Second)))
		}
		health := m.Health
		if m.HealthReason != "" {
			health += " (" + m.HealthReason + ")"
		}
		cpu := "ok"
		if m.Starved {
			cpu = "starved"
			starved = append(starved, m.Name+": "+m.StarvedReason)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, m.Address, orDash(m.State), since, role, m.Priority, m.CurrentPriority,
			m.Session, health, cpu, started, uptime, m.Version)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, s := range starved {
		fmt.Fprintf(g.out, "starved of CPU (current priority 0 until it recovers): %s\n", s)
	}
	if len(down) > 0 {
		fmt.Fprintf(g.out, "down: %s (start them again, or forget a decommissioned node: taskctl service forget NODE)\n", strings.Join(down, ", "))
	}
	if f := v.LastFence; f != nil && f.Finished != nil {
		fmt.Fprintf(g.out, "last fence on %s: %s at %s, took %dms, before expiry: %v\n", v.Self, f.Reason,
			f.Finished.Local().Format(time.RFC3339), f.DurationMS, f.BeforeExpiry)
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// forgetCmd removes a decommissioned node that is down.
func forgetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "forget NODE",
		Short: "Forget a decommissioned node that is down, so it no longer shows as down (admin)",
		Long: "Removes NODE's known-member record and, on the embedded store, its etcd member (which\n" +
			"shrinks the etcd cluster: do it only for a node that will not come back with its data).\n" +
			"Refused while NODE has a live session, and while it is one of the specified members.",
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd)
			defer cancel()
			r, err := c.Cluster.ForgetMember(ctx, connect.NewRequest(&taskdv1.ForgetMemberRequest{Node: args[0]}))
			if err != nil {
				return fmt.Errorf("forget %s: %w", args[0], err)
			}
			if g.output == "json" {
				return json.NewEncoder(g.out).Encode(map[string]any{"node": args[0],
					"known_record_removed": r.Msg.KnownRecordRemoved, "etcd_member_removed": r.Msg.EtcdMemberRemoved})
			}
			what := []string{}
			if r.Msg.KnownRecordRemoved {
				what = append(what, "its known-member record")
			}
			if r.Msg.EtcdMemberRemoved {
				what = append(what, "its etcd member")
			}
			fmt.Fprintf(g.out, "forgot %s: removed %s\n", args[0], strings.Join(what, " and "))
			return nil
		},
	}
}

// human prints a duration as 1d21h3m, 5m3s or 850ms.
func human(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	case d < 24*time.Hour:
		return d.Round(time.Minute).String()
	}
	days := int(d / (24 * time.Hour))
	rest := (d % (24 * time.Hour)).Round(time.Minute)
	return fmt.Sprintf("%dd%s", days, rest)
}
