package task

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/taskd/taskd/internal/coord"
)

// indexFormat is the layout of the index entries (keys.Tasks.IndexKey,
// indexEntry) that this binary writes and reads. The ready key records
// it: a binary reads pages from the index only when the key names its own
// format, so that a later change of the layout can never be read as this
// one (such a binary reads the whole list instead, as before the index).
const indexFormat = 1

// readyMark is the ready key's value.
type readyMark struct {
	Format  int       `json:"format"`
	Written time.Time `json:"written"`
}

// readyState reads the ready key: whether it exists, and whether it names
// this binary's format.
func (s *Store) readyState(ctx context.Context) (present, ours bool, err error) {
	kv, err := s.kv.Get(ctx, s.layout.IndexReadyKey())
	if errors.Is(err, coord.ErrNotFound) {
		return false, false, nil
	}
	if err != nil {
		return false, false, fmt.Errorf("read the index's ready mark: %w", err)
	}
	var m readyMark
	return true, json.Unmarshal(kv.Value, &m) == nil && m.Format == indexFormat, nil
}

// IndexReady reports whether every finished task has its index entry in
// this binary's format.
func (s *Store) IndexReady(ctx context.Context) (bool, error) {
	if s.indexReady.Load() {
		return true, nil
	}
	_, ours, err := s.readyState(ctx)
	if ours {
		s.indexReady.Store(true) // it is never deleted or rewritten
	}
	return ours, err
}

// Backfill writes the index entry of every finished task that has none,
// each on condition that its record is unchanged, then the ready key. The
// leader runs it (txn is its fenced transaction) before its first
// collection; once the ready key exists (in any format: one it does not
// know was written by a newer binary, which owns the index) it reads
// nothing more. It returns how many entries it wrote.
func (s *Store) Backfill(ctx context.Context, txn TxnFunc) (int, error) {
	if s.indexReady.Load() {
		return 0, nil
	}
	if present, ours, err := s.readyState(ctx); err != nil || present {
		if ours {
			s.indexReady.Store(true)
		}
		return 0, err
	}
	n, _, err := s.sweepIndex(ctx, txn)
	if err != nil {
		return n, fmt.Errorf("backfill the finished-task index: %w", err)
	}
	mark, _ := json.Marshal(readyMark{Format: indexFormat, Written: s.now().UTC()})
	if _, err := txn(ctx, nil, []coord.Op{coord.CreateOp(s.layout.IndexReadyKey(), mark, nil)}); err != nil && !errors.Is(err, coord.ErrConflict) {
		return n, fmt.Errorf("mark the finished-task index ready: %w", err)
	}
	s.indexReady.Store(true)
	return n, nil
}

// Repair mends the index once it is ready, for what nodes of an older
// version leave in a cluster being upgraded: a task such a node finishes
// has a record without an entry (its pages would never show it), one its
// leader collects leaves an entry without a record. Three counts decide
// whether to look (the index's, the finished records', the index's again:
// Finish and the collection change both together, so the counts agree
// unless something wrote one without the other); when they disagree it
// reads every record and every entry, adds the missing entries and
// deletes the orphans, each on condition that nothing changed meanwhile.
// Counts that agree while both kinds of damage cancel out are missed
// until they no longer do. It returns the entries added and removed.
func (s *Store) Repair(ctx context.Context, txn TxnFunc) (added, removed int, err error) {
	if ok, err := s.IndexReady(ctx); err != nil || !ok {
		return 0, 0, err
	}
	var counts [3]int
	for i, dir := range []string{s.layout.IndexDir(), s.layout.DoneDir(), s.layout.IndexDir()} {
		if counts[i], err = s.kv.CountBelow(ctx, dir); err != nil {
			return 0, 0, fmt.Errorf("repair the finished-task index: %w", err)
		}
	}
	if counts[0] != counts[2] || counts[0] == counts[1] {
		return 0, 0, nil // busy (next time), or nothing to mend
	}
	added, removed, err = s.sweepIndex(ctx, txn)
	if err != nil {
		return added, removed, fmt.Errorf("repair the finished-task index: %w", err)
	}
	return added, removed, nil
}

// indexRead is how many entries one read of a sweep takes.
const indexRead = 1000

// sweepIndex reads every index entry, then every finished record, one
// shard at a time (a pass that must not hold the store, or the leader's
// memory, the way a burst of 256 reads would): a record without an entry
// gets one, on condition that the record is unchanged and the entry still
// absent; an entry left without a record is deleted, on condition that
// the record is still absent and the entry unchanged.
//
// Tasks that finish while it reads (Finish writes the record and its
// entry together) have records the first read of the index did not see
// entries for: the records without an entry are checked against a second
// read of the index, made after every shard's, and only those still
// without one are written. Without it each such record cost a batch that
// failed and then a transaction of its own (two store round trips on the
// leader): with a thousand tasks running and a history being written
// meanwhile the backfill ground on for many minutes, and every console
// page until it ended read the whole history.
func (s *Store) sweepIndex(ctx context.Context, txn TxnFunc) (added, removed int, err error) {
	entries, err := s.readIndex(ctx)
	if err != nil {
		return 0, 0, err
	}
	type missing struct {
		id   string
		op   coord.Op
		cond coord.Cond
	}
	var lacking []missing
	for _, shard := range Shards() {
		kvs, err := s.ListDone(ctx, shard)
		if err != nil {
			return 0, 0, err
		}
		for _, kv := range kvs {
			r, err := Decode(kv.Key, kv.Value, kv.Version)
			if err != nil || !r.State.Final() {
				continue // written around taskd: not a task
			}
			if _, ok := entries[r.ID]; ok {
				delete(entries, r.ID)
				continue
			}
			key, err := s.layout.IndexKey(r.Created, r.ID)
			if err != nil {
				continue // can have no entry
			}
			lacking = append(lacking, missing{r.ID, coord.CreateOp(key, entryOf(r), nil), coord.VersionIs(kv.Key, kv.Version)})
		}
	}
	if len(lacking) > 0 {
		// Entries written since the first read: their tasks finished
		// while the shards were read.
		again, err := s.readIndex(ctx)
		if err != nil {
			return 0, 0, err
		}
		lacking = slices.DeleteFunc(lacking, func(m missing) bool { _, ok := again[m.id]; return ok })
	}
	b := batcher{txn: txn}
	for _, m := range lacking {
		if err := b.add(ctx, m.op, m.cond); err != nil {
			return b.done, 0, err
		}
	}
	if err := b.flush(ctx); err != nil {
		return b.done, 0, err
	}
	added, b.done = b.done, 0
	// What is left has no record (as of the shard's read): an orphan,
	// unless its task finished or was collected meanwhile, which the
	// conditions tell.
	for id, kv := range entries {
		dk, err := s.layout.DoneKey(id)
		if err != nil {
			continue
		}
		if err := b.add(ctx, coord.DeleteOp(kv.Key), coord.Cond{Key: dk}, coord.VersionIs(kv.Key, kv.Version)); err != nil {
			return added, b.done, err
		}
	}
	if err := b.flush(ctx); err != nil {
		return added, b.done, err
	}
	return added, b.done, nil
}

// readIndex reads every index entry, by task id, indexRead at a time.
func (s *Store) readIndex(ctx context.Context) (map[string]coord.KV, error) {
	entries := map[string]coord.KV{}
	after := ""
	for {
		kvs, more, err := s.kv.ListBelow(ctx, s.layout.IndexDir(), after, indexRead)
		if err != nil {
			return nil, fmt.Errorf("read the index: %w", err)
		}
		for _, kv := range kvs {
			if _, id, err := s.layout.ParseIndexKey(kv.Key); err == nil {
				entries[id] = kv
			}
		}
		if !more || len(kvs) == 0 {
			return entries, nil
		}
		after = kvs[len(kvs)-1].Key
	}
}

// indexBatch is how many entries one transaction of a sweep writes.
const indexBatch = 50

// batcher groups a sweep's independent writes into transactions; a
// transaction that fails its conditions is retried one write at a time,
// and a write whose own conditions fail is skipped (something changed:
// the next sweep looks again).
type batcher struct {
	txn   TxnFunc
	items []batchItem
	done  int
}

type batchItem struct {
	conds []coord.Cond
	op    coord.Op
}

// add queues op, on conds.
func (b *batcher) add(ctx context.Context, op coord.Op, conds ...coord.Cond) error {
	b.items = append(b.items, batchItem{conds: conds, op: op})
	if len(b.items) == indexBatch {
		return b.flush(ctx)
	}
	return nil
}

func (b *batcher) flush(ctx context.Context) error {
	items := b.items
	b.items = nil
	if len(items) == 0 {
		return nil
	}
	var conds []coord.Cond
	var ops []coord.Op
	for _, it := range items {
		conds, ops = append(conds, it.conds...), append(ops, it.op)
	}
	_, err := b.txn(ctx, conds, ops)
	switch {
	case err == nil:
		b.done += len(items)
		return nil
	case !errors.Is(err, coord.ErrConflict):
		return err
	case len(items) == 1:
		return nil
	}
	for _, it := range items {
		if _, err := b.txn(ctx, it.conds, []coord.Op{it.op}); err == nil {
			b.done++
		} else if !errors.Is(err, coord.ErrConflict) {
			return err
		}
	}
	return nil
}
