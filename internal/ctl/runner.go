package ctl

import (
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"github.com/taskd/taskd/api/taskdv1"
)

func runnerCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "runner", Short: "List runners; cordon, uncordon or drain them"}
	cmd.AddCommand(&cobra.Command{
		Use: "list", Short: "List runners with their load and marks", Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd)
			defer cancel()
			resp, err := c.Runners.ListRunners(ctx, connect.NewRequest(&taskdv1.ListRunnersRequest{}))
			if err != nil {
				return fmt.Errorf("list runners: %w", err)
			}
			if g.output == "json" {
				return g.printJSON(resp.Msg)
			}
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NODE\tLIVE\tRUNNING\tCAPACITY\tMARKS\tTYPES")
			for _, r := range resp.Msg.Runners {
				fmt.Fprintf(tw, "%s\t%v\t%d\t%d\t%s\t%s\n", r.Node, r.Live, r.Running, r.Capacity, marks(r), strings.Join(r.Types, ","))
			}
			return tw.Flush()
		},
	})
	for _, a := range []struct{ name, short string }{
		{"cordon", "Take no new tasks on NODE; running ones continue"},
		{"uncordon", "Let NODE take tasks again (also ends a drain)"},
		{"drain", "Cordon NODE and move its running tasks elsewhere at their next checkpoint"},
	} {
		var force bool
		c := &cobra.Command{
			Use: a.name + " NODE", Short: a.short, Args: exactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := g.client()
				if err != nil {
					return err
				}
				ctx, cancel := g.ctx(cmd)
				defer cancel()
				resp, err := c.Runners.SetRunnerMarks(ctx, connect.NewRequest(&taskdv1.SetRunnerMarksRequest{Node: args[0], Action: a.name, Force: force}))
				if err != nil {
					return fmt.Errorf("%s runner %s: %w", a.name, args[0], err)
				}
				if g.output == "json" {
					return g.printJSON(resp.Msg)
				}
				_, err = fmt.Fprintf(g.out, "runner %s: %s\n", args[0], marks(resp.Msg.Runner))
				return err
			},
		}
		c.Flags().BoolVar(&force, "force", false, "mark the runner even if it is not live")
		cmd.AddCommand(c)
	}
	return cmd
}

func marks(r *taskdv1.RunnerInfo) string {
	var m []string
	if r.GetDraining() {
		m = append(m, "draining")
	} else if r.GetCordoned() {
		m = append(m, "cordoned")
	}
	if len(m) == 0 {
		return "-"
	}
	sort.Strings(m)
	return strings.Join(m, ",")
}
