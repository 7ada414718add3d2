package ctl

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/volcopy"
)

// copyCmd creates a task of type copy; with --wait it waits like task wait.
func copyCmd(g *globals) *cobra.Command {
	var spec volcopy.Spec
	var node, win, zone, rate, idem string
	var kf keyFlags
	var prio int
	var wait bool
	cmd := &cobra.Command{
		Use:   "copy SRC DST [--base URI | --dirty-bitmap NAME | --manifest] [--window HH:MM-HH:MM] [--rate BYTES] [--verify] [--wait]",
		Short: "Copy a volume as a task (file://, nbd://, nbd+unix:// URIs)",
		Long: "Create a copy task from SRC to DST. A copy with a file:// or nbd+unix:// endpoint runs on the node\n" +
			"that holds it: --node, or by default the node taskctl talks to. That node must allow the\n" +
			"path with --volume-root. Prints the task id; --wait follows it to the end (exit 0, or 7).",
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec.Source, spec.Target = args[0], args[1]
			if err := errors.Join(checkIdempotencyKey(idem), kf.check()); err != nil {
				return err
			}
			if err := spec.CheckLimits(); err != nil {
				return usageError{err}
			}
			var err error
			if spec.Rate, err = volcopy.ParseBytes(rate); err != nil {
				return usageError{fmt.Errorf("--rate: %w", err)}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			local := false
			for _, u := range []string{spec.Source, spec.Target, spec.Base} {
				local = local || strings.HasPrefix(u, "file:") || strings.HasPrefix(u, "nbd+unix:")
			}
			if local && node == "" {
				ctx, cancel := g.ctx(cmd)
				m, err := c.Cluster.ListMembers(ctx, connect.NewRequest(&taskdv1.ListMembersRequest{}))
				cancel()
				if err != nil {
					return fmt.Errorf("find the node of the local endpoints: %w", err)
				}
				node = m.Msg.Self
			}
			b, err := json.Marshal(struct {
				volcopy.Spec
				Node string `json:"node,omitempty"`
			}{spec, node})
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd)
			defer cancel()
			req := &taskdv1.CreateTaskRequest{
				Type: "copy", Spec: string(b), Priority: int32(prio), Node: node, Window: win, WindowZone: zone,
				IdempotencyKey: idem,
			}
			kf.set(req)
			resp, err := c.Tasks.CreateTask(ctx, connect.NewRequest(req))
			if err != nil {
				return fmt.Errorf("create copy task: %w", err)
			}
			noteExisting(cmd, resp.Msg)
			id := resp.Msg.Task.Id
			if !wait {
				if g.output == "json" {
					return g.printJSON(resp.Msg.Task)
				}
				_, err = fmt.Fprintln(g.out, id)
				return err
			}
			fmt.Fprintln(cmd.ErrOrStderr(), "task", id)
			return waitFor(cmd, g, id, 0)
		},
	}
	f := cmd.Flags()
	f.StringVar(&spec.Base, "base", "", "incremental: the target already holds this volume; write only blocks that differ from it")
	f.StringVar(&spec.DirtyBitmap, "dirty-bitmap", "", "incremental: read only the extents this NBD dirty bitmap marks")
	f.BoolVar(&spec.Verify, "verify", false, "hash every extent of source and target after it is written")
	f.BoolVar(&spec.Manifest, "manifest", false, "incremental: keep a block hash manifest beside the file target; the next copy reads only the source and writes the blocks that changed")
	f.StringVar(&spec.ZeroDetect, "zero-detect", "", "which data is scanned for zero blocks: auto (unless the source file has no holes), always, never")
	f.BoolVar(&spec.TargetIsZero, "target-is-zero", false, "the target reads as zeros: skip zeroing holes")
	f.StringVar(&rate, "rate", "0", "limit reads to this many bytes per second (K/M/G suffixes, 0 = unlimited)")
	f.StringVar(&node, "node", "", "node that runs the copy (default for local endpoints: the node taskctl talks to)")
	f.StringVar(&win, "window", "", "daily run window HH:MM-HH:MM")
	f.StringVar(&zone, "window-zone", "", "time zone of --window")
	f.IntVar(&prio, "priority", 0, "priority -1000..1000")
	f.BoolVar(&wait, "wait", false, "wait for the copy to end, with progress")
	kf.add(f)
	f.StringVar(&idem, "idempotency-key", "", "repeat-safe creation: the same key and request within 24h return the first task instead of a new one")
	return cmd
}
