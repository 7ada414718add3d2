package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/taskd/taskd/internal/backoff"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/task"
)

// writeTimeout bounds one fenced write of an attempt.
const writeTimeout = 10 * time.Second

// attempt is one run of a task on this runner. It is the task's Reporter.
type attempt struct {
	s      *session
	id     string
	n      int
	ctx    context.Context
	cancel context.CancelCauseFunc
	log    *slog.Logger
	ending atomic.Bool

	mu        sync.Mutex
	rec       *task.Record // latest record this attempt wrote or read
	progress  task.Progress
	lastWrite time.Time

	// The task's output log: lines not yet stored, and the log as this
	// attempt last read or wrote it (nil: read it before the next write).
	logMu      sync.Mutex
	logPending []task.LogLine
	logStored  *task.Log

	rateMu      sync.Mutex
	rateLimit   int64
	rateSet     bool
	rateChanged chan struct{}
}

// RateLimit implements task.Reporter.
func (a *attempt) RateLimit() (int64, bool, <-chan struct{}) {
	a.rateMu.Lock()
	defer a.rateMu.Unlock()
	return a.rateLimit, a.rateSet, a.rateChanged
}

// setRate records the rate limit of the latest record and wakes the task
// when it changed.
func (a *attempt) setRate(limit int64, set bool) {
	a.rateMu.Lock()
	defer a.rateMu.Unlock()
	if a.rateChanged != nil && limit == a.rateLimit && set == a.rateSet {
		return
	}
	a.rateLimit, a.rateSet = limit, set
	if a.rateChanged != nil {
		close(a.rateChanged)
	}
	a.rateChanged = make(chan struct{})
}

func (a *attempt) stop(cause error) {
	if a.ctx.Err() == nil {
		a.log.Info("stopping attempt", "reason", cause)
	}
	a.cancel(cause)
}

func (a *attempt) finishing() bool { return a.ending.Load() }

// TaskID implements task.Reporter.
func (a *attempt) TaskID() string { return a.id }

// Attempt implements task.Reporter.
func (a *attempt) Attempt() int { return a.n }

// Active implements task.Reporter: the attempt has not been told to stop
// and the session is alive by the local deadline.
func (a *attempt) Active() bool {
	if a.ctx.Err() != nil {
		return false
	}
	return a.s.r.clock.Now().Before(a.s.r.cfg.Deadline(a.s.sess))
}

// ActiveFor is how long the runner's session stays alive by the local
// deadline unless it is renewed (0 past it), whether or not the attempt
// was asked to stop. The exec type's guard kills the program when that
// time passes without news from this process (tasktype.GuardArg).
func (a *attempt) ActiveFor() time.Duration {
	return max(a.s.r.cfg.Deadline(a.s.sess).Sub(a.s.r.clock.Now()), 0)
}

// Checkpoint implements task.Reporter.
func (a *attempt) Checkpoint(cp []byte, p task.Progress) error {
	err := a.write(func(r *task.Record) bool {
		r.Checkpoint, r.Progress = cp, p
		return false
	})
	if err != nil {
		return err
	}
	if a.ctx.Err() != nil {
		return context.Cause(a.ctx)
	}
	return nil
}

// Progress implements task.Reporter.
func (a *attempt) Progress(p task.Progress) {
	a.mu.Lock()
	a.progress = p
	due := a.s.r.clock.Now().Sub(a.lastWrite) >= a.s.r.cfg.ProgressInterval
	a.mu.Unlock()
	if !due {
		return
	}
	if err := a.writeOnce(func(r *task.Record) bool { r.Progress = p; return false }); err != nil {
		a.log.Debug("progress write failed", "err", err)
	}
}

// write applies f to the attempt's record and stores it, fenced by the
// record version and the runner's session key. f returns true when the
// record is final (it is then moved to the finished tasks).
//
// A store that is briefly unavailable (a ZooKeeper server lost, an etcd
// election) is waited out for as long as the session lives: a checkpoint
// then blocks instead of failing the attempt, which would spend one of the
// task's retries on an outage the cluster rides through. If the session is
// lost, the fence cancels the runner and the wait ends.
func (a *attempt) write(f func(r *task.Record) bool) error { return a.retryWrite(f, false) }

// retryWrite is write; with persistent it retries every error but a fence
// (the attempt's outcome must reach the store), not only an unavailable
// store.
func (a *attempt) retryWrite(f func(r *task.Record) bool, persistent bool) error {
	retry := backoff.New(100*time.Millisecond, 2*time.Second, backoff.WithClock(a.s.r.clock))
	for {
		err := a.writeOnce(f)
		transient := errors.Is(err, coord.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded)
		if err == nil || a.s.ctx.Err() != nil || errors.Is(err, task.ErrFenced) || !(transient || persistent) {
			return err
		}
		a.log.Warn("task write waits for the store", "err", err, "retry_in", retry.Next())
		if retry.Wait(a.s.ctx) != nil {
			return err
		}
	}
}

// writeOnce is one try of write, bounded by writeTimeout.
func (a *attempt) writeOnce(f func(r *task.Record) bool) error {
	ctx, cancel := context.WithTimeout(a.s.ctx, writeTimeout)
	defer cancel()
	st := a.s.r.store
	for range 20 {
		a.mu.Lock()
		r := a.rec.Clone()
		a.mu.Unlock()
		if r.Version() == 0 {
			// Started from its assignment key: read the record itself
			// for the version the write is conditional on.
			fresh, err := st.Get(ctx, a.id)
			if errors.Is(err, task.ErrNotFound) {
				return fmt.Errorf("task %s attempt %d: the task is gone: %w", a.id, a.n, task.ErrFenced)
			}
			if err != nil {
				return err
			}
			a.mu.Lock()
			a.rec = fresh
			a.mu.Unlock()
			continue
		}
		if !r.Owns(a.s.r.cfg.Node, a.s.sess.ID(), a.n) {
			return fmt.Errorf("task %s attempt %d: %w", a.id, a.n, task.ErrFenced)
		}
		txn, stored, err := a.withLog(ctx, a.s.txn)
		if err != nil {
			return err
		}
		if f(r) {
			err = st.Finish(ctx, txn, r, a.s.fence)
		} else {
			err = st.Put(ctx, txn, r, a.s.fence)
		}
		stored(err)
		if err == nil {
			a.mu.Lock()
			a.rec, a.lastWrite = r, a.s.r.clock.Now()
			a.mu.Unlock()
			return nil
		}
		if !errors.Is(err, coord.ErrConflict) {
			return err
		}
		// Someone else wrote the record, or our session key is gone.
		if holds, err := st.Holds(ctx, a.s.fence); err == nil && !holds {
			return fmt.Errorf("task %s attempt %d: session %s has ended: %w", a.id, a.n, a.s.sess.ID(), task.ErrFenced)
		}
		fresh, err := st.Get(ctx, a.id)
		if errors.Is(err, task.ErrNotFound) || (err == nil && fresh.State.Final()) {
			return fmt.Errorf("task %s attempt %d: the task has ended: %w", a.id, a.n, task.ErrFenced)
		}
		if err != nil {
			return err
		}
		a.mu.Lock()
		a.rec = fresh
		a.mu.Unlock()
	}
	return fmt.Errorf("task %s attempt %d: too many conflicting writes: %w", a.id, a.n, coord.ErrConflict)
}

// outcome is how an attempt ended: the label of the attempts metric, and
// the park reason of a parked task.
type outcome string

const (
	outcomeSucceeded    outcome = "succeeded"
	outcomeStopped      outcome = "stopped on request"
	outcomeDrained      outcome = "runner drained"
	outcomeWindowClosed outcome = "window closed"
	outcomeFailed       outcome = task.OutcomeFailed
)

// run executes the attempt and records its outcome.
func (a *attempt) run() {
	a.log.Info("attempt started", "resumed", len(a.rec.Checkpoint) > 0)
	typ, err := a.s.r.store.Types().Lookup(a.rec.Type)
	if err == nil {
		err = runSafely(a.ctx, typ, a.rec.Spec, a.rec.Checkpoint, a)
	}
	a.ending.Store(true)
	cause := context.Cause(a.ctx)
	if a.ctx.Err() == nil {
		cause = nil
	}
	switch {
	case a.s.ctx.Err() != nil:
		a.log.Info("attempt stopped: the runner's session ended or the node is stopping", "err", err)
		return
	case errors.Is(cause, task.ErrFenced), cause == nil && errors.Is(err, task.ErrFenced):
		// A task that saw a stop request and then found itself inactive
		// returns ErrFenced too; the request (cause) decides then.
		a.log.Warn("attempt stopped: no longer owns the task", "err", errors.Join(cause, err))
		return
	}
	a.mu.Lock()
	progress := a.progress
	a.mu.Unlock()
	node := a.s.r.cfg.Node
	var out outcome
	record := func(r *task.Record) bool {
		now := a.s.r.store.Now().UTC()
		if progress != (task.Progress{}) {
			r.Progress = progress
		}
		switch {
		case err == nil:
			r.Succeed(now)
			out = outcomeSucceeded
			return true
		case errors.Is(cause, errCancelled), errors.Is(cause, errPaused):
			out = outcomeStopped
			return r.Park(now, string(out), "")
		case errors.Is(cause, errDrained):
			out = outcomeDrained
			return r.Park(now, string(out), "runner "+node+" was drained; parked at its last checkpoint")
		case errors.Is(cause, errWindow):
			out = outcomeWindowClosed
			return r.Park(now, string(out), "its run window closed; parked at its last checkpoint")
		}
		out = outcomeFailed
		return r.Fail(now, err, task.IsPermanent(err), a.s.r.cfg.Backoff)
	}
	// The outcome must reach the store: until it does, the record says
	// this runner runs the task. Any failure but a fence is retried for as
	// long as the session lives.
	if werr := a.retryWrite(record, true); werr != nil {
		a.log.Warn("recording the attempt's outcome failed", "outcome", out, "err", werr, "task_err", err)
		return
	}
	a.mu.Lock()
	state := a.rec.State
	a.mu.Unlock()
	if m := a.s.r.cfg.Metrics; m != nil {
		m.Attempts.WithLabelValues(metricLabel(out)).Inc()
	}
	if state == task.Waiting && (out == outcomeWindowClosed || out == outcomeDrained) {
		a.log.Info("task parked", events.TaskParked.Attr(), "outcome", out)
	}
	a.log.Info("attempt ended", "outcome", out, "state", state, "err", err)
}

// runSafely turns a panic in a task type into a permanent error: a bug in
// one task must not take the node down.
func runSafely(ctx context.Context, typ task.Type, spec, cp []byte, r task.Reporter) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = task.Permanent(fmt.Errorf("task type panicked: %v", p))
		}
	}()
	return typ.Run(ctx, spec, cp, r)
}

// metricLabel is an outcome as a Prometheus label value: words joined by
// underscores ("window closed" -> "window_closed"), as label values are
// by convention and as queries can match them without quoting spaces.
func metricLabel(o outcome) string { return strings.ReplaceAll(string(o), " ", "_") }
