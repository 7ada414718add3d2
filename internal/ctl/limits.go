package ctl

import (
	"fmt"
	"strconv"
	"text/tabwriter"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"github.com/taskd/taskd/api/taskdv1"
)

func limitsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "limits", Short: "Cluster-wide limits of running tasks per task type"}
	cmd.AddCommand(&cobra.Command{
		Use:   "set TYPE N",
		Short: "At most N tasks of TYPE run at once cluster-wide (1-100000; admin)",
		Args:  exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := strconv.ParseInt(args[1], 10, 32)
			if err != nil || n < 1 {
				return usageError{fmt.Errorf("limit %q: give a whole number from 1 to 100000", args[1])}
			}
			return setTypeLimit(cmd, g, &taskdv1.SetTypeLimitRequest{Type: args[0], Limit: int32(n)})
		},
	}, &cobra.Command{
		Use:   "unset TYPE",
		Short: "Remove the limit of TYPE (admin)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return setTypeLimit(cmd, g, &taskdv1.SetTypeLimitRequest{Type: args[0], Unset: true})
		},
	}, &cobra.Command{
		Use:   "list",
		Short: "List the limits per type and how many tasks of each type run",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd)
			defer cancel()
			resp, err := c.Tasks.ListTypeLimits(ctx, connect.NewRequest(&taskdv1.ListTypeLimitsRequest{}))
			if err != nil {
				return fmt.Errorf("list type limits: %w", err)
			}
			return printTypeLimits(g, resp.Msg)
		},
	})
	return cmd
}

func setTypeLimit(cmd *cobra.Command, g *globals, req *taskdv1.SetTypeLimitRequest) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	ctx, cancel := g.ctx(cmd)
	defer cancel()
	resp, err := c.Tasks.SetTypeLimit(ctx, connect.NewRequest(req))
	if err != nil {
		return fmt.Errorf("limit of type %s: %w", req.Type, err)
	}
	return printTypeLimits(g, resp.Msg)
}

func printTypeLimits(g *globals, m *taskdv1.TypeLimitsResponse) error {
	if g.output == "json" {
		return g.printJSON(m)
	}
	tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TYPE\tLIMIT\tRUNNING")
	for _, l := range m.Limits {
		fmt.Fprintf(tw, "%s\t%d\t%d\n", l.Type, l.Limit, l.Running)
	}
	return tw.Flush()
}
