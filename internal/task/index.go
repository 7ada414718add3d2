package task

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/taskd/taskd/internal/coord"
)

// The finished-task index (keys.Tasks.IndexKey): one key per finished
// task, named by its creation time and id, so that a page of the newest
// finished tasks is a bounded read from the index's end (coord ListTail)
// and a read of that page's records, not a read of the whole history.
//
// The entry is written in the transaction that moves the task to the
// finished records (Finish) and deleted in the one that deletes the record
// (the retention's collection, a schedule's pruning): the two never
// disagree, on either backend. A store written before the index has
// finished tasks without entries: the leader's Backfill writes them and
// then the ready key; until then ListPage answers ErrIndexNotReady and the
// caller reads the whole list instead.

// ErrIndexNotReady: the finished-task index is not complete yet.
var ErrIndexNotReady = errors.New("the finished-task index is not complete yet")

// indexEntry is an entry's value: what the list filters look at, so that a
// filtered page reads only the records it shows.
type indexEntry struct {
	State State  `json:"s"`
	Type  string `json:"t"`
	Node  string `json:"n,omitempty"`
	Key   string `json:"k,omitempty"`
}

func entryOf(r *Record) []byte {
	b, _ := json.Marshal(indexEntry{State: r.State, Type: r.Type, Node: r.Node, Key: r.Key})
	return b
}

// indexOp is the operation that creates r's index entry.
func (s *Store) indexOp(r *Record) (coord.Op, error) {
	key, err := s.layout.IndexKey(r.Created, r.ID)
	if err != nil {
		return coord.Op{}, err
	}
	return coord.CreateOp(key, entryOf(r), nil), nil
}

// FinishedOps are the operations that store r, finished, as Finish leaves
// it: its record and its index entry. For tools that write histories
// directly (taskd-bench).
func (s *Store) FinishedOps(r *Record) ([]coord.Op, error) {
	if !r.State.Final() {
		return nil, fmt.Errorf("task %s in state %s: %w", r.ID, r.State, ErrState)
	}
	done, err := s.layout.DoneKey(r.ID)
	if err != nil {
		return nil, err
	}
	idx, err := s.indexOp(r)
	if err != nil {
		return nil, err
	}
	return []coord.Op{coord.CreateOp(done, r.encode(), nil), idx}, nil
}

// IndexDelete is the conditions and operations that delete finished task
// r's index entry beside its record, for the caller's transaction. Without
// an entry (a record from before the index) and before the index is ready,
// the condition is that none exists, so that a backfill in between makes
// the transaction fail instead of leaving an entry without a record. A
// record that can have no entry (a creation time outside years 0-9999,
// written around taskd) needs nothing.
func (s *Store) IndexDelete(ctx context.Context, r *Record) ([]coord.Cond, []coord.Op, error) {
	key, err := s.layout.IndexKey(r.Created, r.ID)
	if err != nil {
		return nil, nil, nil
	}
	kv, err := s.kv.Get(ctx, key)
	if errors.Is(err, coord.ErrNotFound) {
		if ok, err := s.IndexReady(ctx); err != nil || ok {
			return nil, nil, err
		}
		return []coord.Cond{{Key: key}}, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read the index entry of task %s: %w", r.ID, err)
	}
	return []coord.Cond{coord.VersionIs(key, kv.Version)}, []coord.Op{coord.DeleteOp(key)}, nil
}

// IndexReady reports whether every finished task has its index entry.
func (s *Store) IndexReady(ctx context.Context) (bool, error) {
	if s.indexReady.Load() {
		return true, nil
	}
	_, err := s.kv.Get(ctx, s.layout.IndexReadyKey())
	if errors.Is(err, coord.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read the index's ready mark: %w", err)
	}
	s.indexReady.Store(true) // it is never deleted
	return true, nil
}

// backfillBatch is how many entries one backfill transaction writes.
const backfillBatch = 50

// Backfill writes the index entry of every finished task that has none,
// each on condition that its record is unchanged, then the ready key. The
// leader runs it (txn is its fenced transaction) before its first
// collection; with the ready key present it reads nothing more. It returns
// how many entries it wrote.
func (s *Store) Backfill(ctx context.Context, txn TxnFunc) (int, error) {
	if ok, err := s.IndexReady(ctx); err != nil || ok {
		return 0, err
	}
	n := 0
	// One shard at a time: a one-time pass that must not hold the store
	// (or the leader's memory) the way a burst of 256 reads would.
	for _, shard := range Shards() {
		kvs, err := s.ListDone(ctx, shard)
		if err != nil {
			return n, fmt.Errorf("backfill the finished-task index: %w", err)
		}
		var conds []coord.Cond
		var ops []coord.Op
		flush := func() error {
			if len(ops) == 0 {
				return nil
			}
			_, err := txn(ctx, conds, ops)
			if errors.Is(err, coord.ErrConflict) && len(ops) > 1 {
				// Some entry exists or some record changed: one by one.
				for i := range ops {
					if _, err := txn(ctx, conds[i:i+1], ops[i:i+1]); err == nil {
						n++
					} else if !errors.Is(err, coord.ErrConflict) {
						return fmt.Errorf("backfill the finished-task index: %w", err)
					}
				}
			} else if err == nil {
				n += len(ops)
			} else if !errors.Is(err, coord.ErrConflict) {
				return fmt.Errorf("backfill the finished-task index: %w", err)
			}
			conds, ops = nil, nil
			return nil
		}
		for _, kv := range kvs {
			r, err := Decode(kv.Key, kv.Value, kv.Version)
			if err != nil || !r.State.Final() {
				continue // written around taskd: not a task
			}
			key, err := s.layout.IndexKey(r.Created, r.ID)
			if err != nil {
				continue
			}
			conds = append(conds, coord.VersionIs(kv.Key, kv.Version))
			ops = append(ops, coord.CreateOp(key, entryOf(r), nil))
			if len(ops) == backfillBatch {
				if err := flush(); err != nil {
					return n, err
				}
			}
		}
		if err := flush(); err != nil {
			return n, err
		}
	}
	stamp := []byte(s.now().UTC().Format(time.RFC3339Nano))
	if _, err := txn(ctx, nil, []coord.Op{coord.CreateOp(s.layout.IndexReadyKey(), stamp, nil)}); err != nil && !errors.Is(err, coord.ErrConflict) {
		return n, fmt.Errorf("mark the finished-task index ready: %w", err)
	}
	s.indexReady.Store(true)
	return n, nil
}

// matchEntry applies the filters of a page to what an index entry holds.
func (q PageQuery) matchEntry(id string, e indexEntry, state State) bool {
	return (state == "" || e.State == state) && (q.Type == "" || e.Type == q.Type) &&
		(q.Node == "" || e.Node == q.Node) && (q.Key == "" || strings.Contains(id, q.Key) || strings.Contains(e.Key, q.Key))
}

// match applies them to a record.
func (q PageQuery) match(r *Record, state State) bool {
	return (state == "" || r.State == state) && (q.Type == "" || r.Type == q.Type) &&
		(q.Node == "" || r.Runner == q.Node || r.Node == q.Node) && (q.Key == "" || strings.Contains(r.ID, q.Key) || strings.Contains(r.Key, q.Key))
}
