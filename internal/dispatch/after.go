package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/task"
)

// after looks up the tasks r waits for: unfinished ones in the watched
// view, finished ones in the cache or, once, in the store.
func (d *Dispatcher) after(ctx context.Context, st *state, r *task.Record, seen map[string]bool) (string, *task.TaskError, error) {
	deps := make(map[string]*task.Record, len(r.After))
	for _, id := range r.After {
		seen[id] = true
		if o, ok := st.tasks[id]; ok {
			deps[id] = o
			continue
		}
		if o, ok := st.ended[id]; ok {
			deps[id] = o
			continue
		}
		o, err := d.store.Get(ctx, id)
		if errors.Is(err, task.ErrNotFound) {
			continue // gone: AfterReason decides
		}
		if err != nil {
			return "", nil, fmt.Errorf("read task %s that %s waits for: %w", id, r.ID, err)
		}
		if !o.State.Final() {
			// Created or moved after the view was read: the watch event
			// that tells is on its way; wait for it.
			return fmt.Sprintf("waiting for task %s (%s)", id, o.State), nil, nil
		}
		if st.ended == nil {
			st.ended = map[string]*task.Record{}
		}
		st.ended[id] = o
		deps[id] = o
	}
	wait, fail := r.AfterReason(deps)
	return wait, fail, nil
}

// failWaiting fails a waiting task whose dependency did not succeed.
func (d *Dispatcher) failWaiting(ctx context.Context, txn task.TxnFunc, r *task.Record, why *task.TaskError, log *slog.Logger) error {
	c := r.Clone()
	err := d.store.FailWaiting(ctx, txn, c, why)
	if errors.Is(err, coord.ErrConflict) {
		return nil // changed meanwhile: the next pass sees it
	}
	if err != nil {
		return err
	}
	log.Info("task failed: a task it waited for did not succeed", events.TaskDependencyFailed.Attr(), "task", r.ID, "reason", why.Message)
	return nil
}
