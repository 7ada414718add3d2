package task

import (
	"context"
	"errors"

	"github.com/taskd/taskd/internal/coord"
)

// The narrow views of the coordination store that the task center's
// parts need: each gets the watch or the read it uses, not the store.

// WatchActive watches the unfinished tasks (the dispatcher; a task wait).
func (s *Store) WatchActive(ctx context.Context) *coord.Watcher {
	return s.kv.Watch(ctx, s.layout.ActiveDir())
}

// WatchAssigned watches the assignments of node's runner.
func (s *Store) WatchAssigned(ctx context.Context, node string) (*coord.Watcher, error) {
	dir, err := s.layout.AssignDir(node)
	if err != nil {
		return nil, err
	}
	return s.kv.Watch(ctx, dir), nil
}

// WatchRunners watches the registered runners.
func (s *Store) WatchRunners(ctx context.Context) *coord.Watcher {
	return s.kv.Watch(ctx, s.layout.RunnersDir())
}

// WatchMarks watches the runners' marks (cordon, drain).
func (s *Store) WatchMarks(ctx context.Context) *coord.Watcher {
	return s.kv.Watch(ctx, s.layout.RunnerConfigDir())
}

// Txn is the store's own transaction, fenced by no leadership: the TxnFunc
// of a runner's writes, which carry their own conditions (the record's
// version, the runner's session key).
func (s *Store) Txn(ctx context.Context, conds []coord.Cond, ops []coord.Op) ([]int64, error) {
	return s.kv.Txn(ctx, conds, ops)
}

// Holds reports whether the key of a fencing condition still exists (a
// runner's session key: the store deletes it when the session ends).
func (s *Store) Holds(ctx context.Context, fence coord.Cond) (bool, error) {
	_, err := s.kv.Get(ctx, fence.Key)
	if errors.Is(err, coord.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// ListDone lists the finished tasks of one shard (see Shards), as stored.
func (s *Store) ListDone(ctx context.Context, shard string) ([]coord.KV, error) {
	dir, err := s.layout.DoneShardDir(shard)
	if err != nil {
		return nil, err
	}
	return s.kv.List(ctx, dir)
}
