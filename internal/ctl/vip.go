package ctl

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"github.com/taskd/taskd/api/taskdv1"
)

func vipCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "vip", Short: "Configure the cluster's virtual IPs and move them between nodes"}

	var iface string
	set := &cobra.Command{
		Use:   "set SERVICE IP[/PREFIX] --interface IF",
		Short: "Create or change the VIP of a service (a bare IP is a /32)",
		Long: "Create or change the VIP of SERVICE, kept in the coordination store. The leader holds\n" +
			"every VIP unless a drain moved it. The address must be unicast IPv4 outside 0/8, 127/8,\n" +
			"169.254/16, 224/4 and 240/4, with a prefix of /16 or longer, neither the network nor the\n" +
			"broadcast address of its prefix, and unused by members, other VIPs and the answering\n" +
			"node's own addresses; the interface cannot be lo; the label IF:SERVICE must fit 15\n" +
			"characters; at least one live member's allowlist (--vip-allow-interface,\n" +
			"--vip-allow-cidr) must allow it. Bad input changes nothing.",
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd)
			defer cancel()
			resp, err := c.VIPs.SetVIP(ctx, connect.NewRequest(&taskdv1.SetVIPRequest{Service: args[0], Address: args[1], Interface: iface}))
			if err != nil {
				return fmt.Errorf("set vip %s: %w", args[0], err)
			}
			if g.output == "json" {
				return g.printJSON(resp.Msg)
			}
			v := resp.Msg.Vip
			_, err = fmt.Fprintf(g.out, "vip %s: %s on %s\n", v.Service, v.Address, v.Interface)
			return err
		},
	}
	set.Flags().StringVar(&iface, "interface", "", "interface to add the address to on the holder, e.g. eth0 (required)")
	_ = set.MarkFlagRequired("interface")

	list := &cobra.Command{
		Use: "list", Short: "List VIPs with their holder, since when, and its health", Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd)
			defer cancel()
			resp, err := c.VIPs.ListVIPs(ctx, connect.NewRequest(&taskdv1.ListVIPsRequest{}))
			if err != nil {
				return fmt.Errorf("list vips: %w", err)
			}
			if g.output == "json" {
				return g.printJSON(resp.Msg)
			}
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SERVICE\tADDRESS\tINTERFACE\tHOLDER\tSINCE\tSTATE\tHEALTH\tASSIGNED\tPREFERRED\tREFUSED BY")
			for _, v := range resp.Msg.Vips {
				holder, since, state, health := "-", "-", "unheld", "-"
				if v.Holder != "" {
					holder, health = v.Holder, v.HolderHealth
					since = v.HeldSince.AsTime().Local().Format(tableTime)
					state = "acquiring"
					if v.Up {
						state = "up"
					}
					if v.Error != "" {
						state = "error: " + v.Error
					}
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Service, v.Address, v.Interface, holder, since, state, health,
					dash(v.Assigned), dash(v.Preferred), dash(strings.Join(slices.Sorted(maps.Keys(v.Refused)), ",")))
			}
			return tw.Flush()
		},
	}

	del := &cobra.Command{
		Use: "delete SERVICE", Short: "Delete a VIP; its holder removes the address", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd)
			defer cancel()
			if _, err := c.VIPs.DeleteVIP(ctx, connect.NewRequest(&taskdv1.DeleteVIPRequest{Service: args[0]})); err != nil {
				return fmt.Errorf("delete vip %s: %w", args[0], err)
			}
			_, err = fmt.Fprintf(g.out, "vip %s deleted\n", args[0])
			return err
		},
	}

	var to string
	var noWait bool
	var waitFor time.Duration
	drain := &cobra.Command{
		Use:   "drain SERVICE [--to NODE]",
		Short: "Move a VIP to NODE, or to another live, healthy node",
		Long: "Move the VIP of SERVICE to NODE, or without --to to another live, healthy node (the leader\n" +
			"first). The old holder removes the address before the new one adds it. The VIP stays on\n" +
			"the new node while it is live and healthy, then goes back to the leader. Waits until\n" +
			"the new holder has the address up, unless --no-wait.",
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			// The wait happens on the server; the call may take that long.
			ctx, cancel := context.WithTimeout(cmd.Context(), max(g.timeout, waitFor+g.timeout))
			defer cancel()
			resp, err := c.VIPs.DrainVIP(ctx, connect.NewRequest(&taskdv1.DrainVIPRequest{Service: args[0], To: to, Wait: !noWait,
				WaitTimeoutMs: waitFor.Milliseconds()}))
			if err != nil {
				return fmt.Errorf("drain vip %s: %w", args[0], err)
			}
			if g.output == "json" {
				return g.printJSON(resp.Msg)
			}
			if noWait {
				_, err = fmt.Fprintf(g.out, "vip %s: moving to %s\n", args[0], resp.Msg.To)
				return err
			}
			_, err = fmt.Fprintf(g.out, "vip %s: held by %s after %v\n", args[0], resp.Msg.To, time.Duration(resp.Msg.TookMs)*time.Millisecond)
			return err
		},
	}
	drain.Flags().StringVar(&to, "to", "", "node to move the VIP to (default: another live, healthy node)")
	drain.Flags().BoolVar(&noWait, "no-wait", false, "return once the move is recorded")
	drain.Flags().DurationVar(&waitFor, "wait-timeout", 30*time.Second, "how long to wait for the new holder")

	cmd.AddCommand(set, list, del, drain)
	return cmd
}
