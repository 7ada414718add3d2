package ctl

import (
	"context"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/events"
)

// Dynamic shell completion: `taskctl __complete ...` (what the scripts of
// `taskctl completion bash|zsh|fish` call) asks the node for task ids,
// node names, task types, VIP services and schedule names. A node that
// does not answer within completeTimeout completes nothing; completion
// never prints an error into the shell.
const completeTimeout = 2 * time.Second

// Static values of flags.
var (
	outputValues = []string{"table\tfor people", "json\tstable JSON for scripts"}
	statusValues = []string{"unfinished", "finished", "all", "waiting", "running", "paused", "succeeded", "failed", "cancelled"}
)

// lister asks the node for names to complete.
type lister func(ctx context.Context, g *globals) ([]string, error)

// complete makes a completion function: the first n positional arguments
// (0: any number) complete from list, later ones from nothing; values
// already given are not offered again.
func complete(g *globals, n int, list lister) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if n > 0 && len(args) >= n {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return g.ask(cmd, list, toComplete, args), cobra.ShellCompDirectiveNoFileComp
	}
}

// flagValues completes a flag from list.
func flagValues(g *globals, list lister) cobra.CompletionFunc {
	return func(cmd *cobra.Command, _ []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		return g.ask(cmd, list, toComplete, nil), cobra.ShellCompDirectiveNoFileComp
	}
}

// fixed completes from a fixed list, by prefix.
func fixed(values []string) cobra.CompletionFunc {
	return func(_ *cobra.Command, _ []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		var out []string
		for _, v := range values {
			if strings.HasPrefix(v, toComplete) {
				out = append(out, v)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

func (g *globals) ask(cmd *cobra.Command, list lister, prefix string, given []string) []string {
	ctx, cancel := context.WithTimeout(cmd.Context(), min(g.timeout, completeTimeout))
	defer cancel()
	names, err := list(ctx, g)
	if err != nil {
		cobra.CompDebugln("taskctl: "+err.Error(), false)
		return nil
	}
	var out []string
	for _, n := range names {
		name, _, _ := strings.Cut(n, "\t")
		if strings.HasPrefix(name, prefix) && !slices.Contains(given, name) {
			out = append(out, n)
		}
	}
	return out
}

// tasksIn lists task ids (with type and state as the description) of the
// tasks a status filter selects.
func tasksIn(status string) lister {
	return func(ctx context.Context, g *globals) ([]string, error) {
		c, err := g.client()
		if err != nil {
			return nil, err
		}
		r, err := c.Tasks.ListTasks(ctx, connect.NewRequest(&taskdv1.ListTasksRequest{Status: status}))
		if err != nil {
			return nil, err
		}
		var out []string
		for _, t := range r.Msg.Tasks {
			out = append(out, t.Id+"\t"+t.Type+" "+t.State)
		}
		return out, nil
	}
}

func nodeNames(ctx context.Context, g *globals) ([]string, error) {
	c, err := g.client()
	if err != nil {
		return nil, err
	}
	r, err := c.Cluster.ListMembers(ctx, connect.NewRequest(&taskdv1.ListMembersRequest{}))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range r.Msg.Members {
		out = append(out, m.Name)
	}
	return out, nil
}

// taskTypes are the types some runner takes.
func taskTypes(ctx context.Context, g *globals) ([]string, error) {
	c, err := g.client()
	if err != nil {
		return nil, err
	}
	r, err := c.Runners.ListRunners(ctx, connect.NewRequest(&taskdv1.ListRunnersRequest{}))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rn := range r.Msg.Runners {
		for _, t := range rn.Types {
			if !slices.Contains(out, t) {
				out = append(out, t)
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

func vipServices(ctx context.Context, g *globals) ([]string, error) {
	c, err := g.client()
	if err != nil {
		return nil, err
	}
	r, err := c.VIPs.ListVIPs(ctx, connect.NewRequest(&taskdv1.ListVIPsRequest{}))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, v := range r.Msg.Vips {
		out = append(out, v.Service+"\t"+v.Address)
	}
	return out, nil
}

func scheduleNames(ctx context.Context, g *globals) ([]string, error) {
	c, err := g.client()
	if err != nil {
		return nil, err
	}
	r, err := c.Schedules.ListSchedules(ctx, connect.NewRequest(&taskdv1.ListSchedulesRequest{}))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range r.Msg.Schedules {
		out = append(out, s.Name)
	}
	return out, nil
}

// addCompletions attaches the completion functions to the commands by
// their path, so that the commands' own files stay as they are.
func addCompletions(root *cobra.Command, g *globals) {
	_ = root.RegisterFlagCompletionFunc("output", fixed(outputValues))
	args := map[string]cobra.CompletionFunc{
		"task show":                     complete(g, 1, tasksIn("all")),
		"task wait":                     complete(g, 1, tasksIn("all")),
		"task cancel":                   complete(g, 1, tasksIn("unfinished")),
		"task pause":                    complete(g, 1, tasksIn("unfinished")),
		"task resume":                   complete(g, 1, tasksIn("paused")),
		"task set-window":               complete(g, 1, tasksIn("unfinished")),
		"task set-rate":                 complete(g, 1, tasksIn("unfinished")),
		"task create":                   complete(g, 1, taskTypes),
		"runner cordon":                 complete(g, 1, nodeNames),
		"runner uncordon":               complete(g, 1, nodeNames),
		"runner drain":                  complete(g, 1, nodeNames),
		"service set-priority":          complete(g, 1, nodeNames),
		"service set-specified-members": complete(g, 0, nodeNames),
		"service forget":                complete(g, 1, nodeNames),
		"vip delete":                    complete(g, 1, vipServices),
		"vip drain":                     complete(g, 1, vipServices),
		"schedule show":                 complete(g, 1, scheduleNames),
		"schedule pause":                complete(g, 1, scheduleNames),
		"schedule resume":               complete(g, 1, scheduleNames),
		"schedule trigger":              complete(g, 1, scheduleNames),
		"schedule delete":               complete(g, 1, scheduleNames),
	}
	flags := map[string]map[string]cobra.CompletionFunc{
		"task list":   {"status": fixed(statusValues), "type": flagValues(g, taskTypes)},
		"task create": {"node": flagValues(g, nodeNames)},
		"events":      {"node": flagValues(g, nodeNames), "type": fixed(events.TypeNames())},
		"vip drain":   {"to": flagValues(g, nodeNames)},
		"copy":        {"node": flagValues(g, nodeNames)},
	}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		path := strings.TrimPrefix(c.CommandPath(), root.Name()+" ")
		if f, ok := args[path]; ok {
			c.ValidArgsFunction = f
		}
		for name, f := range flags[path] {
			if c.Flags().Lookup(name) != nil {
				_ = c.RegisterFlagCompletionFunc(name, f)
			}
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(root)
}
