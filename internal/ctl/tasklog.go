package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/backoff"
)

func taskLogCmd(g *globals) *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "log ID [--follow]",
		Short: "Print a task's output log (an exec program's output and log lines; the newest 1000 lines and 64 KiB are kept)",
		Args:  exactArgs(1),
		RunE:  func(cmd *cobra.Command, args []string) error { return taskLog(cmd, g, args[0], follow) },
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "go on printing new lines until the task ends (follows the store's watch)")
	return cmd
}

// taskLog prints the log; with follow it reconnects to a node that goes
// away, asking for the lines after the last it printed.
func taskLog(cmd *cobra.Command, g *globals, id string, follow bool) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	var after int64
	var lostSince time.Time
	retry := backoff.New(waitBackoffMin, waitBackoffMax)
	for {
		ctx, cancel := cmd.Context(), context.CancelFunc(func() {})
		if !follow {
			ctx, cancel = g.ctx(cmd)
		}
		final, err := taskLogOnce(ctx, g, cmd.ErrOrStderr(), c.Tasks.TaskLog, id, follow, &after, func() { lostSince = time.Time{}; retry.Reset() })
		cancel()
		switch {
		case err == nil && (final || !follow):
			return nil
		case err == nil:
			err = connect.NewError(connect.CodeUnavailable, errors.New("stream ended early"))
		}
		if !follow || cmd.Context().Err() != nil || !retryable(err) {
			return fmt.Errorf("log of task %s: %w", id, err)
		}
		now := time.Now()
		if lostSince.IsZero() {
			lostSince = now
		}
		left := waitReconnect - now.Sub(lostSince)
		if left <= 0 {
			return unreachableError{fmt.Errorf("log of task %s: no answer for %v: %w", id, waitReconnect, err)}
		}
		pause := min(retry.Advance(), left)
		fmt.Fprintf(cmd.ErrOrStderr(), "lost the stream from taskd (%v); reconnecting in %v\n", err, pause.Round(time.Millisecond))
		t := time.NewTimer(pause)
		select {
		case <-cmd.Context().Done():
		case <-t.C:
		}
		t.Stop()
	}
}

type taskLogFunc func(context.Context, *connect.Request[taskdv1.TaskLogRequest]) (*connect.ServerStreamForClient[taskdv1.TaskLogResponse], error)

// taskLogOnce prints what one stream sends; it reports whether the task
// was final in the last message.
func taskLogOnce(ctx context.Context, g *globals, note io.Writer, call taskLogFunc, id string, follow bool, after *int64, heard func()) (bool, error) {
	stream, err := call(ctx, connect.NewRequest(&taskdv1.TaskLogRequest{Id: id, Follow: follow, AfterSeq: *after}))
	if err != nil {
		return false, err
	}
	defer stream.Close()
	final := false
	for stream.Receive() {
		heard()
		m := stream.Msg()
		if *after == 0 && m.Dropped > 0 && len(m.Lines) > 0 {
			fmt.Fprintf(note, "(%d earlier lines dropped: the log keeps the newest 1000 lines and 64 KiB)\n", m.Dropped)
		}
		for _, l := range m.Lines {
			if g.output == "json" {
				if err := g.printJSON(l); err != nil {
					return false, err
				}
			} else if _, err := fmt.Fprintf(g.out, "%s a%d %s\n", l.At.AsTime().UTC().Format("2006-01-02T15:04:05.000Z"), l.Attempt, l.Text); err != nil {
				return false, err
			}
			*after = l.Seq
		}
		final = m.State == "succeeded" || m.State == "failed" || m.State == "cancelled"
	}
	return final, stream.Err()
}
