package ctl

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"github.com/spf13/cobra"
	"github.com/taskd/taskd/api/taskdv1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func scheduleCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "schedule", Short: "Recurring tasks: create, list, show, pause, resume, trigger, delete"}
	cmd.AddCommand(scheduleCreateCmd(g), scheduleListCmd(g), scheduleShowCmd(g), schedulePauseCmd(g),
		scheduleRefCmd(g, "resume", "Resume a paused schedule; ticks while it was paused do not run"),
		scheduleTriggerCmd(g),
		scheduleRefCmd(g, "delete", "Delete a schedule; the tasks it made stay"))
	return cmd
}

func scheduleCreateCmd(g *globals) *cobra.Command {
	var cron, zone, every, spec, overlap, node, win, winZone, note string
	var catchUp, jitter time.Duration
	var keep, prio, retries, preview int
	var paused, dry bool
	cmd := &cobra.Command{
		Use:   "create NAME (--cron EXPR [--zone ZONE] | --every DURATION) TYPE [--spec JSON|@FILE] [flags]",
		Short: "Create a schedule and preview its next runs",
		Long: "Create a schedule NAME that makes a task of TYPE at every tick: --cron with five fields\n" +
			"(minute hour day-of-month month day-of-week, or @daily, @hourly, @weekly, @monthly, @yearly)\n" +
			"in --zone (an IANA zone, default UTC), or --every DURATION in absolute time.\n" +
			"--overlap says what a tick does while the previous task is unfinished: skip (default),\n" +
			"buffer-one (run when it ends; at most one waits), cancel-previous, allow.\n" +
			"--catch-up: how late a tick missed while no leader ran may still run (default 1h; 0 never).\n" +
			"The task flags (--spec, --priority, --node, --window, --window-zone, --max-retries) are those of task create.",
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (cron == "") == (every == "") {
				return usageError{fmt.Errorf("give --cron EXPR or --every DURATION (one of them); usage: %s", cmd.UseLine())}
			}
			if zone != "" && every != "" {
				return usageError{fmt.Errorf("--zone goes with --cron; --every runs in absolute time")}
			}
			if strings.HasPrefix(spec, "@") {
				b, err := os.ReadFile(spec[1:])
				if err != nil {
					return usageError{fmt.Errorf("--spec: %w", err)}
				}
				spec = string(b)
			}
			if preview < 1 || preview > 100 {
				return usageError{fmt.Errorf("--preview %d: use 1-100", preview)}
			}
			req := &taskdv1.CreateScheduleRequest{
				Name: args[0], Cron: cron, Zone: zone, Every: every, Overlap: overlap,
				JitterMs: jitter.Milliseconds(), KeepLast: int32(keep), Paused: paused, Note: note, DryRun: dry, Preview: int32(preview),
				Template: &taskdv1.ScheduleTemplate{Type: args[1], Spec: spec, Priority: int32(prio), Node: node, Window: win, WindowZone: winZone},
			}
			if cmd.Flags().Changed("catch-up") {
				ms := catchUp.Milliseconds()
				req.CatchUpMs = &ms
			}
			if cmd.Flags().Changed("max-retries") {
				n := int32(retries)
				req.Template.MaxRetries = &n
			}
			if cmd.Flags().Changed("keep-last") && keep == 0 {
				return usageError{fmt.Errorf("--keep-last 0: use 1-1000")}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd)
			defer cancel()
			resp, err := c.Schedules.CreateSchedule(ctx, connect.NewRequest(req))
			if err != nil {
				return fmt.Errorf("create schedule: %w", err)
			}
			s := resp.Msg.Schedule
			if g.output == "json" {
				return g.printJSON(s)
			}
			verb := "created"
			if dry {
				verb = "is valid (dry run, nothing stored)"
			}
			fmt.Fprintf(g.out, "schedule %s %s: %s\n", s.Name, verb, specText(s))
			if s.Paused {
				fmt.Fprintln(g.out, "paused: no runs until `taskctl schedule resume "+s.Name+"`")
			}
			for _, n := range s.NextRuns {
				fmt.Fprintf(g.out, "next run: %s\n", atZone(n, s))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cron, "cron", "", "cron expression: minute hour day-of-month month day-of-week, or @daily etc.")
	f.StringVar(&zone, "zone", "", "IANA time zone of --cron (default UTC)")
	f.StringVar(&every, "every", "", "interval instead of --cron, e.g. 6h (absolute time; whole seconds, at least 1s)")
	f.StringVar(&overlap, "overlap", "skip", "skip, buffer-one, cancel-previous or allow")
	f.DurationVar(&catchUp, "catch-up", time.Hour, "run the latest tick missed while no leader ran if it is at most this late (0: never)")
	f.DurationVar(&jitter, "jitter", 0, "delay every tick by a fixed pseudo-random amount below this (at most 1h)")
	f.IntVar(&keep, "keep-last", 10, "keep this many finished tasks of the schedule; older ones are deleted (1-1000)")
	f.BoolVar(&paused, "paused", false, "create it paused")
	f.StringVar(&note, "note", "", "why it is paused (with --paused)")
	f.BoolVar(&dry, "dry-run", false, "validate and preview; store nothing")
	f.IntVar(&preview, "preview", 5, "how many next runs to show")
	f.StringVar(&spec, "spec", "", "task spec as JSON, or @FILE")
	f.IntVar(&prio, "priority", 0, "task priority -1000..1000; higher runs first")
	f.StringVar(&node, "node", "", "run the tasks only on this node")
	f.StringVar(&win, "window", "", "daily run window HH:MM-HH:MM of the tasks: a tick outside it waits for it")
	f.StringVar(&winZone, "window-zone", "", "time zone of --window (default: the cluster's --time-zone)")
	f.IntVar(&retries, "max-retries", 3, "retries of each task after retryable errors")
	return cmd
}

// specText says when a schedule ticks.
func specText(s *taskdv1.Schedule) string {
	if s.Every != "" {
		return "every " + s.Every
	}
	return fmt.Sprintf("cron %q in %s", s.Cron, s.Zone)
}

// atZone shows a time in the schedule's zone (cron) or locally.
func atZone(t *timestamppb.Timestamp, s *taskdv1.Schedule) string {
	if t == nil {
		return "-"
	}
	loc := time.Local
	if s.Zone != "" {
		if l, err := time.LoadLocation(s.Zone); err == nil {
			loc = l
		}
	}
	return t.AsTime().In(loc).Format("2006-01-02 15:04:05 MST")
}

func runText(r *taskdv1.ScheduleRun) string {
	if r == nil {
		return "-"
	}
	s := r.Outcome
	if r.TaskState != "" {
		s += " (task " + r.TaskState + ")"
	}
	return s
}

func scheduleListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List schedules with their next run, last run and its outcome",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd)
			defer cancel()
			resp, err := c.Schedules.ListSchedules(ctx, connect.NewRequest(&taskdv1.ListSchedulesRequest{}))
			if err != nil {
				return fmt.Errorf("list schedules: %w", err)
			}
			if g.output == "json" {
				return g.printJSON(resp.Msg)
			}
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tWHEN\tTYPE\tOVERLAP\tNEXT RUN\tLAST RUN\tOUTCOME")
			for _, s := range resp.Msg.Schedules {
				next := "-"
				if s.Paused {
					next = "paused"
					if s.Note != "" {
						next += ": " + s.Note
					}
				} else if len(s.NextRuns) > 0 {
					next = atZone(s.NextRuns[0], s)
				}
				last := "-"
				if s.LastRun != nil {
					last = atZone(s.LastRun.Tick, s)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, specText(s), s.Template.GetType(), s.Overlap, next, last, runText(s.LastRun))
			}
			return tw.Flush()
		},
	}
}

func scheduleShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Show a schedule, its next runs and its recent runs",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd)
			defer cancel()
			resp, err := c.Schedules.GetSchedule(ctx, connect.NewRequest(&taskdv1.ScheduleRef{Name: args[0]}))
			if err != nil {
				return fmt.Errorf("show schedule %s: %w", args[0], err)
			}
			return g.showSchedule(resp.Msg.Schedule)
		},
	}
}

func (g *globals) showSchedule(s *taskdv1.Schedule) error {
	if g.output == "json" {
		return g.printJSON(s)
	}
	tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	t := s.Template
	row("name", s.Name)
	row("when", specText(s))
	row("task", fmt.Sprintf("%s %s priority %d", t.GetType(), t.GetSpec(), t.GetPriority()))
	row("node", t.GetNode())
	if t.GetWindow() != "" {
		row("window", t.GetWindow()+" "+t.GetWindowZone())
	}
	row("overlap", s.Overlap)
	row("catch-up", (time.Duration(s.CatchUpMs) * time.Millisecond).String())
	if s.JitterMs > 0 {
		row("jitter", (time.Duration(s.JitterMs) * time.Millisecond).String())
	}
	row("keep-last", fmt.Sprint(s.KeepLast))
	if s.Paused {
		row("paused", "yes "+s.Note)
	}
	if s.Pending != nil {
		row("waiting tick", atZone(s.Pending, s)+" (runs when the previous run ends)")
	}
	for _, n := range s.NextRuns {
		row("next run", atZone(n, s))
	}
	row("created", when(s.Created))
	for _, r := range s.Runs {
		line := fmt.Sprintf("%s %s", atZone(r.Tick, s), runText(r))
		if r.Count > 1 {
			line += fmt.Sprintf(" x%d", r.Count)
		}
		if r.Task != "" {
			line += " task " + r.Task
		}
		if r.Trigger != "" {
			line += " trigger " + r.Trigger
		}
		if r.Reason != "" {
			line += ": " + r.Reason
		}
		row("run", line)
	}
	return tw.Flush()
}

func schedulePauseCmd(g *globals) *cobra.Command {
	var note string
	cmd := &cobra.Command{
		Use:   "pause NAME [--note S]",
		Short: "Pause a schedule: no ticks until resume (ticks meanwhile never run)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd)
			defer cancel()
			resp, err := c.Schedules.PauseSchedule(ctx, connect.NewRequest(&taskdv1.PauseScheduleRequest{Name: args[0], Note: note}))
			if err != nil {
				return fmt.Errorf("pause schedule %s: %w", args[0], err)
			}
			if g.output == "json" {
				return g.printJSON(resp.Msg.Schedule)
			}
			_, err = fmt.Fprintf(g.out, "%s: paused\n", args[0])
			return err
		},
	}
	cmd.Flags().StringVar(&note, "note", "", "why (shown by list and show)")
	return cmd
}

// scheduleRefCmd is resume or delete.
func scheduleRefCmd(g *globals, op, short string) *cobra.Command {
	return &cobra.Command{
		Use: op + " NAME", Short: short, Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd)
			defer cancel()
			ref := connect.NewRequest(&taskdv1.ScheduleRef{Name: args[0]})
			if op == "delete" {
				if _, err := c.Schedules.DeleteSchedule(ctx, ref); err != nil {
					return fmt.Errorf("delete schedule %s: %w", args[0], err)
				}
				if g.output == "json" {
					return g.printJSON(&taskdv1.DeleteScheduleResponse{})
				}
				_, err = fmt.Fprintf(g.out, "%s: deleted\n", args[0])
				return err
			}
			resp, err := c.Schedules.ResumeSchedule(ctx, ref)
			if err != nil {
				return fmt.Errorf("resume schedule %s: %w", args[0], err)
			}
			if g.output == "json" {
				return g.printJSON(resp.Msg.Schedule)
			}
			next := "no next run"
			if n := resp.Msg.Schedule.NextRuns; len(n) > 0 {
				next = "next run " + atZone(n[0], resp.Msg.Schedule)
			}
			_, err = fmt.Fprintf(g.out, "%s: resumed; %s\n", args[0], next)
			return err
		},
	}
}

func scheduleTriggerCmd(g *globals) *cobra.Command {
	var reqID string
	cmd := &cobra.Command{
		Use:   "trigger NAME [--request-id UUID]",
		Short: "Run a schedule now, once (under its overlap policy, even while paused)",
		Long: "Run a schedule now. The request has an id (a new UUID unless --request-id gives one):\n" +
			"the same id runs once however often it is sent, so a retry after a timeout is safe.",
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if reqID == "" {
				reqID = uuid.NewString()
			} else if u, err := uuid.Parse(reqID); err != nil || u.String() != reqID {
				return usageError{fmt.Errorf("--request-id %q is not a lower-case UUID", reqID)}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd)
			defer cancel()
			wait := max(g.timeout-time.Second, time.Second)
			resp, err := c.Schedules.TriggerSchedule(ctx, connect.NewRequest(&taskdv1.TriggerScheduleRequest{
				Name: args[0], RequestId: reqID, WaitMs: wait.Milliseconds()}))
			if err != nil {
				return fmt.Errorf("trigger schedule %s: %w", args[0], err)
			}
			m := resp.Msg
			if g.output == "json" {
				return g.printJSON(m)
			}
			switch r := m.Run; {
			case r == nil:
				_, err = fmt.Fprintf(g.out, "%s: trigger %s queued (no leader handled it yet); task %s when it runs\n", args[0], m.RequestId, m.Task)
			case r.Task != "":
				_, err = fmt.Fprintf(g.out, "%s\n", r.Task)
			default:
				_, err = fmt.Fprintf(g.out, "%s: trigger %s %s: %s\n", args[0], m.RequestId, r.Outcome, r.Reason)
			}
			return err
		},
	}
	cmd.Flags().StringVar(&reqID, "request-id", "", "id of this request (a UUID); a retry with the same id runs once")
	return cmd
}
