package task

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/taskd/taskd/internal/coord"
)

// The finished-task index (keys.Tasks.IndexKey): one key per finished
// task, named by its creation time and id, so that a page of the newest
// finished tasks is a bounded read from the index.s start (coord ListBelow)
// and a read of that page's records, not a read of the whole history.
//
// The entry is written in the transaction that moves the task to the
// finished records (Finish) and deleted in the one that deletes the record
// (the retention's collection, a schedule's pruning): the two never
// disagree, on either backend. A store written before the index has
// finished tasks without entries: the leader's Backfill writes them and
// then the ready key; until then ListPage answers ErrIndexNotReady and the
// caller reads the whole list instead. A binary from before the index
// finishes and deletes tasks without their entries: the leader's Repair
// (indexrepair.go) finds what such a node left and mends it.

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

// matchEntry applies the filters of a page to what an index entry holds.
func (q PageQuery) matchEntry(id string, e indexEntry, state State) bool {
	return (state == "" || e.State == state) && (q.Node == "" || e.Node == q.Node) && q.matchTypeKey(id, e.Type, e.Key)
}

// matchTypeKey applies the type and key filters, which every page row
// answers (a record, an index entry, an unfinished task's facts): the key
// filter matches the id or the concurrency key.
func (q PageQuery) matchTypeKey(id, typ, key string) bool {
	return (q.Type == "" || typ == q.Type) && (q.Key == "" || strings.Contains(id, q.Key) || strings.Contains(key, q.Key))
}

// match applies the filters of a page to a record.
func (q PageQuery) match(r *Record, state State) bool {
	return (state == "" || r.State == state) && (q.Node == "" || r.Runner == q.Node || r.Node == q.Node) && q.matchTypeKey(r.ID, r.Type, r.Key)
}
