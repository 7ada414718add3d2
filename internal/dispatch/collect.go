package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/task"
)

// collectLoop collects finished tasks once at the start of the leadership
// and then every GCInterval, until ctx ends (nil) or the leadership is
// fenced (the error).
func (d *Dispatcher) collectLoop(ctx context.Context, l *quorum.Leadership, log *slog.Logger) error {
	gc := time.NewTimer(0)
	defer gc.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-gc.C:
		}
		// A store written before the finished-task index gets its
		// entries first (once: the ready key ends it).
		if n, err := d.store.Backfill(ctx, l.Txn); err != nil {
			if errors.Is(err, quorum.ErrFenced) {
				return fmt.Errorf("backfill the finished-task index: %w", err)
			}
			if ctx.Err() == nil {
				log.Warn("backfilling the finished-task index failed; next try at the next interval", "err", err)
			}
			gc.Reset(d.cfg.GCInterval)
			continue
		} else if n > 0 {
			log.Info("finished-task index backfilled", "entries", n)
		}
		// What nodes of an older version left: records without entries,
		// entries without records.
		if added, removed, err := d.store.Repair(ctx, l.Txn); err != nil {
			if errors.Is(err, quorum.ErrFenced) {
				return fmt.Errorf("repair the finished-task index: %w", err)
			}
			if ctx.Err() == nil {
				log.Warn("repairing the finished-task index failed; next try at the next interval", "err", err)
			}
		} else if added > 0 || removed > 0 {
			log.Info("finished-task index repaired: entries a node of an older version left out or behind", "added", added, "removed", removed)
		}
		if err := d.collect(ctx, l, log); err != nil {
			if errors.Is(err, quorum.ErrFenced) {
				return fmt.Errorf("collect finished tasks: %w", err)
			}
			if ctx.Err() == nil {
				log.Warn("collecting finished tasks failed; next try at the next interval", "err", err)
			}
		}
		gc.Reset(d.cfg.GCInterval)
	}
}

// collect deletes finished tasks older than the retention.
func (d *Dispatcher) collect(ctx context.Context, l *quorum.Leadership, log *slog.Logger) error {
	cutoff := d.store.Now().Add(-d.cfg.Retention)
	lay := d.store.Layout()
	n := 0
	for _, shard := range task.Shards() {
		dir, err := lay.DoneShardDir(shard)
		if err != nil {
			return err
		}
		kvs, err := d.store.ListDone(ctx, shard)
		if err != nil {
			return fmt.Errorf("list finished tasks: %w", err)
		}
		var conds []coord.Cond
		var ops []coord.Op
		batched := 0
		for _, kv := range kvs {
			if _, err := keys.Child(dir, kv.Key, keys.ValidTaskID); err != nil {
				continue // not a task taskd wrote: left alone
			}
			r, err := task.Decode(kv.Key, kv.Value, kv.Version)
			if err != nil || !r.Finished.Before(cutoff) {
				continue
			}
			conds = append(conds, coord.VersionIs(kv.Key, kv.Version))
			ops = append(ops, coord.DeleteOp(kv.Key))
			batched++
			// Its index entry and its output log go with it.
			ic, iop, err := d.store.IndexDelete(ctx, r)
			if err != nil {
				return err
			}
			conds, ops = append(conds, ic...), append(ops, iop...)
			if c, op, ok, err := d.store.LogDelete(ctx, r.ID); err != nil {
				return err
			} else if ok {
				conds, ops = append(conds, c), append(ops, op)
			}
			if len(ops) >= batchSize {
				if _, err := l.Txn(ctx, conds, ops); err != nil && !errors.Is(err, coord.ErrConflict) {
					return fmt.Errorf("delete finished tasks: %w", err)
				}
				n += batched
				conds, ops, batched = nil, nil, 0
			}
		}
		if len(ops) > 0 {
			if _, err := l.Txn(ctx, conds, ops); err != nil && !errors.Is(err, coord.ErrConflict) {
				return fmt.Errorf("delete finished tasks: %w", err)
			}
			n += batched
		}
	}
	if n > 0 {
		log.Info("finished tasks collected", "count", n, "retention", d.cfg.Retention)
	}
	return nil
}
