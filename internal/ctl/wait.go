package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"connectrpc.com/connect"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/api"
	"github.com/taskd/taskd/internal/backoff"
	"github.com/taskd/taskd/internal/pki"
)

// waitReconnect bounds how long `task wait` keeps reconnecting to a node
// that does not answer (docs/tasks.md promises a minute). A variable only
// so that a test can give up sooner.
var waitReconnect = time.Minute

// Backoff between reconnection attempts of `task wait`.
const (
	waitBackoffMin = 200 * time.Millisecond
	waitBackoffMax = 5 * time.Second
)

// unreachableError: `task wait` gave up after waitReconnect without an
// answer (exit 3, as any unreachable taskd).
type unreachableError struct{ error }

func (e unreachableError) Unwrap() error { return e.error }

// ExitWaitExpired: `task wait --max-wait` ran out before the task ended;
// the task goes on. Distinct from ExitUnavailable (no answer from taskd).
const ExitWaitExpired = 9

// errMaxWait is the cause of a wait's context when --max-wait expires.
var errMaxWait = errors.New("--max-wait expired")

// waitExpiredError: --max-wait expired while the task had not ended (exit
// ExitWaitExpired).
type waitExpiredError struct{ error }

func (e waitExpiredError) Unwrap() error { return e.error }

// waitFor follows a task until it ends: nil if it succeeded, a
// taskEndedError (exit 7) if it failed or was cancelled.
//
// The task lives in the store, not in the node taskctl talks to: if that
// node goes away (kill, restart, failover), the stream breaks, and the wait
// reconnects and goes on, for up to waitReconnect of continuous failure;
// then it ends with an unreachableError.
func waitFor(cmd *cobra.Command, g *globals, id string, maxWait time.Duration) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	if maxWait > 0 {
		var cancel func()
		ctx, cancel = context.WithTimeoutCause(ctx, maxWait, errMaxWait)
		defer cancel()
	}
	show := newWaitDisplay(cmd.ErrOrStderr(), g.output == "json", isTerminal(cmd.ErrOrStderr()))
	var last *taskdv1.Task
	final := func() bool {
		return last != nil && (last.State == "succeeded" || last.State == "failed" || last.State == "cancelled")
	}
	var lostSince time.Time
	retry := backoff.New(waitBackoffMin, waitBackoffMax)
	for !final() {
		err := watchOnce(ctx, c, id, func(t *taskdv1.Task) {
			last = t
			lostSince = time.Time{}
			retry.Reset()
			show.update(t)
		})
		if final() {
			break
		}
		if err == nil {
			err = connect.NewError(connect.CodeUnavailable, errors.New("stream ended early"))
		}
		if errors.Is(context.Cause(ctx), errMaxWait) {
			show.done()
			if last == nil {
				// taskd never answered: that is the unreachable daemon.
				return unreachableError{fmt.Errorf("wait for task %s: no answer from %s within --max-wait %v: %w", id, c.Base, maxWait, err)}
			}
			return waitExpiredError{fmt.Errorf("wait for task %s: --max-wait %v expired; the task has not ended (%s) and goes on", id, maxWait, stateText(last))}
		}
		if ctx.Err() != nil || !retryable(err) {
			show.done()
			return fmt.Errorf("wait for task %s: %w", id, err)
		}
		now := time.Now()
		if lostSince.IsZero() {
			lostSince = now
		}
		left := waitReconnect - now.Sub(lostSince)
		if left <= 0 {
			show.done()
			return unreachableError{fmt.Errorf("wait for task %s: no answer from %s for %v: %w", id, c.Base, waitReconnect, err)}
		}
		// The last pause ends when the reconnect budget does.
		pause := min(retry.Advance(), left)
		fmt.Fprintf(cmd.ErrOrStderr(), "lost the stream from taskd (%v); reconnecting in %v\n", err, pause.Round(time.Millisecond))
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
	show.done()
	if g.output == "json" {
		if err := g.printJSON(last); err != nil {
			return err
		}
	}
	if last.State != "succeeded" {
		return taskEndedError{last}
	}
	if g.output != "json" {
		fmt.Fprintf(g.out, "%s succeeded\n", last.Id)
	}
	return nil
}

// retryable tells a broken stream or a node that is away or not ready,
// worth reconnecting to, from an answer that will not change.
//
// Errors that taskctl's own transport made up (not sent by the server)
// mean the connection failed: refused, reset, or cut mid-message, which
// connect reports as "internal: protocol error: incomplete envelope:
// unexpected EOF" when the node is killed under an open stream. Of the
// server's answers, only "unavailable" (restarting, no store session yet)
// and "canceled" (the node shut down under the call) are passing states.
// A server that fails the certificate check is never retried.
func retryable(err error) bool {
	if errors.Is(err, pki.ErrIdentity) {
		return false
	}
	code := connect.CodeOf(err)
	if connect.IsWireError(err) {
		return code == connect.CodeUnavailable || code == connect.CodeCanceled
	}
	switch code {
	case connect.CodeUnavailable, connect.CodeUnknown, connect.CodeInternal:
		return true
	}
	return false
}

// watchOnce follows the task on one stream until it ends.
func watchOnce(ctx context.Context, c *api.Client, id string, on func(*taskdv1.Task)) error {
	stream, err := c.Tasks.WatchTask(ctx, connect.NewRequest(&taskdv1.TaskRef{Id: id}))
	if err != nil {
		return err
	}
	defer stream.Close()
	for stream.Receive() {
		on(stream.Msg().Task)
	}
	return stream.Err()
}

// waitDisplay shows progress: a bar on a terminal, a line per change
// otherwise (nothing in JSON mode, which prints the final record).
type waitDisplay struct {
	w     io.Writer
	quiet bool
	bar   *progressbar.ProgressBar
	last  string
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// newWaitDisplay draws a bar when bar is set (stderr is a terminal). The
// bar shows the percentage; its description the rest of the progress, in
// the task's units, so the percentage appears once.
func newWaitDisplay(w io.Writer, quiet, bar bool) *waitDisplay {
	d := &waitDisplay{w: w, quiet: quiet}
	if bar && !quiet {
		// No spinner ticker: it would draw from a goroutine of its own
		// that nothing joins, also after the result is printed.
		d.bar = progressbar.NewOptions64(-1, progressbar.OptionSetWriter(w), progressbar.OptionSetSpinnerChangeInterval(0),
			progressbar.OptionThrottle(200*time.Millisecond), progressbar.OptionFullWidth())
	}
	return d
}

// describe is the state, attempt, runner and reason of a task, with its
// progress: with the percentage on a line of its own, without it in the
// bar (which shows it).
func describe(t *taskdv1.Task, withPercent bool) string {
	line := fmt.Sprintf("%s attempt %d", stateText(t), t.Attempt)
	if withPercent {
		if p := progressLine(t); p != "-" {
			line += " " + p
		}
	} else if p := progressDetail(t); p != "" {
		line += " " + p
	}
	if t.Runner != "" {
		line += " on " + t.Runner
	}
	if t.Reason != "" {
		line += ": " + t.Reason
	}
	return line
}

func (d *waitDisplay) update(t *taskdv1.Task) {
	if d.quiet {
		return
	}
	if d.bar != nil {
		if p := t.Progress; p != nil && p.Total > 0 {
			d.bar.ChangeMax64(p.Total)
			_ = d.bar.Set64(min(p.Done, p.Total))
		}
		d.bar.Describe(describe(t, false))
		return
	}
	line := describe(t, true)
	if line != d.last {
		fmt.Fprintf(d.w, "%s %s\n", time.Now().Format(clockTime), line)
		d.last = line
	}
}

// done leaves the bar where it is (a failed task is not shown at 100%) and
// ends its line, so that the result starts on a line of its own.
func (d *waitDisplay) done() {
	if d.bar != nil {
		_ = d.bar.Exit()
		fmt.Fprintln(d.w)
		d.bar = nil
	}
}
