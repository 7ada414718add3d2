package ctl

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/volcopy"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// ExitTaskUnsuccessful: `task wait` saw the task end failed or cancelled.
const ExitTaskUnsuccessful = 7

type taskEndedError struct{ t *taskdv1.Task }

func (e taskEndedError) Error() string {
	msg := fmt.Sprintf("task %s ended %s", e.t.Id, e.t.State)
	if e.t.Error != nil {
		msg += ": " + e.t.Error.Message
	}
	return msg
}

// jsonOut leaves out unset fields: absent, not empty.
var jsonOut = protojson.MarshalOptions{UseProtoNames: true}

func (g *globals) printJSON(m proto.Message) error {
	b, err := toJSON(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(g.out, string(b))
	return err
}

func taskCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "task", Short: "Create, inspect and control tasks"}
	cmd.AddCommand(taskCreateCmd(g), taskListCmd(g), taskShowCmd(g), taskWaitCmd(g), taskLogCmd(g), taskSetWindowCmd(g), taskSetRateCmd(g))
	for _, c := range []struct{ name, short string }{
		{"cancel", "Cancel a task (a running one stops at its next checkpoint)"},
		{"pause", "Pause a task (a running one parks at its next checkpoint); pausing twice is harmless"},
		{"resume", "Resume a paused task"},
	} {
		cmd.AddCommand(&cobra.Command{
			Use: c.name + " ID", Short: c.short, Args: exactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error { return taskControl(cmd, g, c.name, args[0]) },
		})
	}
	return cmd
}

func taskCreateCmd(g *globals) *cobra.Command {
	var spec, node, win, zone, idem string
	var prio, retries int
	var kf keyFlags
	cmd := &cobra.Command{
		Use:   "create TYPE [--spec JSON|@FILE]",
		Short: "Create a task and print its id",
		Long: "Create a task of TYPE (sleep, noop, ...). --spec is the type's JSON spec, inline or @FILE.\n" +
			"--node pins the task to one runner; --window limits it to a daily HH:MM-HH:MM (may cross midnight).",
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if strings.HasPrefix(spec, "@") {
				b, err := os.ReadFile(spec[1:])
				if err != nil {
					return usageError{fmt.Errorf("--spec: %w", err)}
				}
				spec = string(b)
			}
			if err := errors.Join(checkIdempotencyKey(idem), kf.check()); err != nil {
				return err
			}
			req := &taskdv1.CreateTaskRequest{Type: args[0], Spec: spec, Priority: int32(prio), Node: node, Window: win, WindowZone: zone,
				IdempotencyKey: idem}
			kf.set(req)
			if cmd.Flags().Changed("max-retries") {
				n := int32(retries)
				req.MaxRetries = &n
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd)
			defer cancel()
			resp, err := c.Tasks.CreateTask(ctx, connect.NewRequest(req))
			if err != nil {
				return fmt.Errorf("create task: %w", err)
			}
			noteExisting(cmd, resp.Msg)
			if g.output == "json" {
				return g.printJSON(resp.Msg.Task)
			}
			_, err = fmt.Fprintln(g.out, resp.Msg.Task.Id)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&spec, "spec", "", "task spec as JSON, or @FILE")
	f.IntVar(&prio, "priority", 0, "priority -1000..1000; higher runs first")
	f.StringVar(&node, "node", "", "run only on this node")
	f.StringVar(&win, "window", "", "daily run window HH:MM-HH:MM")
	f.StringVar(&zone, "window-zone", "", "time zone of --window (default: the cluster's --time-zone)")
	f.IntVar(&retries, "max-retries", 3, "retries after retryable errors")
	f.StringVar(&idem, "idempotency-key", "", "repeat-safe creation: the same key and request within 24h return the first task instead of a new one")
	kf.add(f)
	return cmd
}

// keyFlags are the scheduling flags of task create and copy: --key,
// --key-limit, --after and --after-policy.
type keyFlags struct {
	key    string
	limit  int
	after  []string
	policy string
}

func (k *keyFlags) add(f *pflag.FlagSet) {
	f.StringVar(&k.key, "key", "", "concurrency key, e.g. volume/vol-7: at most --key-limit tasks with it run at once, cluster-wide")
	f.IntVar(&k.limit, "key-limit", 1, "how many tasks with --key may run at once (1-1000)")
	f.StringSliceVar(&k.after, "after", nil, "start only after these tasks (ID[,ID...]) have succeeded; one that fails or is cancelled fails this task")
	f.StringVar(&k.policy, "after-policy", "succeeded", "succeeded: every --after task must succeed; finished: they only need to end")
}

// check refuses bad values before anything is sent.
func (k *keyFlags) check() error {
	for _, id := range k.after {
		if err := keys.ValidTaskID(id); err != nil {
			return usageError{fmt.Errorf("--after: %w", err)}
		}
	}
	if k.policy != "succeeded" && k.policy != "finished" {
		return usageError{fmt.Errorf("--after-policy %q: use succeeded or finished", k.policy)}
	}
	if k.key == "" {
		return nil
	}
	if err := keys.ValidConcurrencyKey(k.key); err != nil {
		return usageError{fmt.Errorf("--key: %w", err)}
	}
	if k.limit < 1 || k.limit > 1000 {
		return usageError{fmt.Errorf("--key-limit %d: use 1-1000", k.limit)}
	}
	return nil
}

// set puts the checked flags on req.
func (k *keyFlags) set(req *taskdv1.CreateTaskRequest) {
	if k.key != "" {
		req.Key, req.KeyLimit = k.key, int32(k.limit)
	}
	if len(k.after) > 0 {
		req.After, req.AfterPolicy = k.after, k.policy
	}
}

// checkIdempotencyKey refuses a malformed --idempotency-key before
// anything is sent.
func checkIdempotencyKey(k string) error {
	if k == "" {
		return nil
	}
	if err := keys.ValidIdempotencyKey(k); err != nil {
		return usageError{fmt.Errorf("--idempotency-key: %w", err)}
	}
	return nil
}

// noteExisting tells on stderr that a creation returned the task an
// earlier call with the same idempotency key made.
func noteExisting(cmd *cobra.Command, resp *taskdv1.CreateTaskResponse) {
	if !resp.Existing {
		return
	}
	t := resp.Task
	fmt.Fprintf(cmd.ErrOrStderr(), "task %s was already created with idempotency key %q at %s (%s); not created again\n",
		t.Id, t.IdempotencyKey, t.Created.AsTime().Format(time.RFC3339), t.State)
}

func taskListCmd(g *globals) *cobra.Command {
	var status, typ string
	cmd := &cobra.Command{
		Use:   "list [--status unfinished|finished|all|STATE] [--type T]",
		Short: "List tasks, oldest first",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd)
			defer cancel()
			resp, err := c.Tasks.ListTasks(ctx, connect.NewRequest(&taskdv1.ListTasksRequest{Status: status, Type: typ}))
			if err != nil {
				return fmt.Errorf("list tasks: %w", err)
			}
			if g.output == "json" {
				return g.printJSON(resp.Msg)
			}
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tTYPE\tSTATE\tATTEMPT\tRUNNER\tPROGRESS\tPRIORITY\tCREATED")
			for _, t := range resp.Msg.Tasks {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%d\t%s\n", t.Id, t.Type, stateText(t), t.Attempt, dash(t.Runner),
					percentText(t.Progress), t.Priority, t.Created.AsTime().Local().Format(tableTime))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&status, "status", "unfinished", "unfinished, finished, all, or a state (waiting, running, paused, succeeded, failed, cancelled)")
	cmd.Flags().StringVar(&typ, "type", "", "only tasks of this type")
	return cmd
}

func stateText(t *taskdv1.Task) string {
	if t.Request != "" {
		return t.State + " (" + t.Request + " requested)"
	}
	return t.State
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func taskShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Show a task, and why it is not running if it waits",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd)
			defer cancel()
			resp, err := c.Tasks.GetTask(ctx, connect.NewRequest(&taskdv1.GetTaskRequest{Id: args[0]}))
			if err != nil {
				return fmt.Errorf("show task: %w", err)
			}
			return g.showTask(resp.Msg.Task)
		},
	}
}

func (g *globals) showTask(t *taskdv1.Task) error {
	if g.output == "json" {
		return g.printJSON(t)
	}
	tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	row("id", t.Id)
	row("type", t.Type)
	row("state", stateText(t))
	row("reason", t.Reason)
	row("attempt", fmt.Sprint(t.Attempt))
	row("runner", t.Runner)
	if pl := progressLine(t); pl != "-" {
		row("progress", pl)
	}
	row("priority", fmt.Sprint(t.Priority))
	row("node", t.Node)
	if t.RateLimitSet {
		r := "unlimited"
		if t.RateLimit > 0 {
			r = humanRate(float64(t.RateLimit))
		}
		row("rate limit", r+" (set on the task; overrides the spec)")
	}
	if t.Window != "" {
		row("window", t.Window+" "+t.WindowZone)
	}
	if t.Key != "" {
		row("key", fmt.Sprintf("%s (at most %d running)", t.Key, t.KeyLimit))
	}
	if len(t.After) > 0 {
		p := "each must succeed"
		if t.AfterPolicy == "finished" {
			p = "each must end"
		}
		row("after", strings.Join(t.After, ", ")+" ("+p+")")
	}
	if t.IdempotencyKey != "" {
		row("idempotency key", t.IdempotencyKey)
	}
	if t.Error != nil {
		row("error", t.Error.Code+": "+t.Error.Message)
	}
	row("retries", fmt.Sprintf("%d of %d", t.Retries, t.MaxRetries))
	row("created", when(t.Created))
	row("started", when(t.Started))
	row("finished", when(t.Finished))
	row("spec", t.Spec)
	for _, a := range t.History {
		line := fmt.Sprintf("#%d on %s from %s", a.N, a.Runner, a.Started.AsTime().Local().Format(clockTime))
		if a.Outcome != "" {
			line += " -> " + a.Outcome
		}
		if a.Error != "" {
			line += ": " + a.Error
		}
		row("attempt", line)
	}
	return tw.Flush()
}

func when(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return ts.AsTime().Local().Format(time.RFC3339)
}

func taskControl(cmd *cobra.Command, g *globals, op, id string) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	ctx, cancel := g.ctx(cmd)
	defer cancel()
	req := connect.NewRequest(&taskdv1.TaskRef{Id: id})
	var resp *connect.Response[taskdv1.GetTaskResponse]
	switch op {
	case "cancel":
		resp, err = c.Tasks.CancelTask(ctx, req)
	case "pause":
		resp, err = c.Tasks.PauseTask(ctx, req)
	case "resume":
		resp, err = c.Tasks.ResumeTask(ctx, req)
	}
	if err != nil {
		return fmt.Errorf("%s task %s: %w", op, id, err)
	}
	if g.output == "json" {
		return g.printJSON(resp.Msg.Task)
	}
	_, err = fmt.Fprintf(g.out, "%s: %s\n", id, stateText(resp.Msg.Task))
	return err
}

func taskSetWindowCmd(g *globals) *cobra.Command {
	var clear bool
	var zone string
	cmd := &cobra.Command{
		Use:   "set-window ID HH:MM-HH:MM | --clear",
		Short: "Set or clear a task's daily run window (applies to a running task too)",
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 || len(args) > 2 || clear == (len(args) == 2) {
				return usageError{fmt.Errorf("give a window or --clear; usage: %s", cmd.UseLine())}
			}
			req := &taskdv1.SetTaskWindowRequest{Id: args[0], Clear: clear, WindowZone: zone}
			if len(args) == 2 {
				req.Window = args[1]
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd)
			defer cancel()
			resp, err := c.Tasks.SetTaskWindow(ctx, connect.NewRequest(req))
			if err != nil {
				return fmt.Errorf("set window of task %s: %w", args[0], err)
			}
			return g.showTask(resp.Msg.Task)
		},
	}
	cmd.Flags().BoolVar(&clear, "clear", false, "remove the window")
	cmd.Flags().StringVar(&zone, "window-zone", "", "time zone of the window (default: the cluster's --time-zone)")
	return cmd
}

func taskSetRateCmd(g *globals) *cobra.Command {
	var clear bool
	cmd := &cobra.Command{
		Use:   "set-rate ID BYTES | --clear",
		Short: "Set a copy task's rate limit in bytes per second (K/M/G suffixes, 0 unlimited); a running copy applies it at once (other types have no rate)",
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 || len(args) > 2 || clear == (len(args) == 2) {
				return usageError{fmt.Errorf("give a rate or --clear; usage: %s", cmd.UseLine())}
			}
			req := &taskdv1.SetTaskRateRequest{Id: args[0], Clear: clear}
			if len(args) == 2 {
				r, err := volcopy.ParseBytes(args[1])
				if err != nil {
					return usageError{fmt.Errorf("rate %q: %w", args[1], err)}
				}
				req.BytesPerSecond = r
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd)
			defer cancel()
			resp, err := c.Tasks.SetTaskRate(ctx, connect.NewRequest(req))
			if err != nil {
				return fmt.Errorf("set rate of task %s: %w", args[0], err)
			}
			return g.showTask(resp.Msg.Task)
		},
	}
	cmd.Flags().BoolVar(&clear, "clear", false, "go back to the rate in the task's spec")
	return cmd
}

func taskWaitCmd(g *globals) *cobra.Command {
	var maxWait time.Duration
	cmd := &cobra.Command{
		Use:   "wait ID",
		Short: "Wait until a task ends; exit 0 if it succeeded, 7 if it failed or was cancelled, 9 if --max-wait expired first",
		Args:  exactArgs(1),
		RunE:  func(cmd *cobra.Command, args []string) error { return waitFor(cmd, g, args[0], maxWait) },
	}
	cmd.Flags().DurationVar(&maxWait, "max-wait", 0, "give up after this long, with exit 9; the task goes on (0: wait as long as it takes)")
	return cmd
}
