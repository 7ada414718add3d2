package task_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/task"
)

// TestIndexRepair plays a node of the version before the index in a
// cluster whose index is ready: it finishes a task without writing the
// entry (its pages would never show it), and, as leader, collects a task
// without deleting its entry (an entry without a record). The leader's
// Repair adds the one and removes the other; then the pages agree with the
// whole list again, and a second Repair finds nothing.
func TestIndexRepair(t *testing.T) {
	stores(t, func(t *testing.T, kv coord.Store) {
		ctx := ctxT(t)
		st, tick := clocked(t, kv)
		if a, r, err := st.Repair(ctx, st.Txn); err != nil || a != 0 || r != 0 {
			t.Fatalf("repair before the index is ready: %d, %d, %v; want nothing", a, r, err)
		}
		if _, err := st.Backfill(ctx, st.Txn); err != nil {
			t.Fatal(err)
		}
		ids := idsOf(cancelled(ctx, t, st, tick, 3))
		pageIDs := func() []string {
			t.Helper()
			p, err := st.ListPage(ctx, task.PageQuery{Limit: 10})
			if err != nil {
				t.Fatal(err)
			}
			return idsOf(p.Records)
		}
		// The old node finishes a task: its record only.
		at := st.Now()
		legacy := task.Record{ID: uuid.NewString(), Type: "noop", Spec: json.RawMessage("{}"), State: task.Succeeded, Created: at, Finished: at, Updated: at}
		b, _ := json.Marshal(&legacy)
		dk, err := st.Layout().DoneKey(legacy.ID)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Create(ctx, dk, b); err != nil {
			t.Fatal(err)
		}
		if slices.Contains(pageIDs(), legacy.ID) {
			t.Fatal("a record without an entry is on the page before the repair: the test shows nothing")
		}
		if a, r, err := st.Repair(ctx, st.Txn); err != nil || a != 1 || r != 0 {
			t.Fatalf("repair after an old node's finish: added %d, removed %d, %v; want 1, 0", a, r, err)
		}
		if got, want := pageIDs(), newestFirst(t, st, task.Filter{}, nil); !slices.Equal(got, want) || !slices.Contains(got, legacy.ID) {
			t.Fatalf("page after the repair %v; want %v", got, want)
		}
		// The old leader collects the oldest task: the record goes, the
		// entry stays.
		old, err := st.Layout().DoneKey(ids[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := kv.Delete(ctx, old, 0); err != nil {
			t.Fatal(err)
		}
		// The page reads the orphan's entry, finds no record: neither a
		// row nor a match.
		if p, err := st.ListPage(ctx, task.PageQuery{Limit: 10}); err != nil || p.Total != 3 || len(p.Records) != 3 {
			t.Fatalf("page with an orphan entry: %+v, %v; want 3 rows of 3", p, err)
		}
		if n, err := kv.CountBelow(ctx, st.Layout().IndexDir()); err != nil || n != 4 {
			t.Fatalf("%d index entries (%v); want 4 with the orphan", n, err)
		}
		if a, r, err := st.Repair(ctx, st.Txn); err != nil || a != 0 || r != 1 {
			t.Fatalf("repair after an old leader's collection: added %d, removed %d, %v; want 0, 1", a, r, err)
		}
		p, err := st.ListPage(ctx, task.PageQuery{Limit: 10})
		if want := newestFirst(t, st, task.Filter{}, nil); err != nil || !slices.Equal(idsOf(p.Records), want) || p.Total != len(want) {
			t.Fatalf("page after the repair %+v, %v; want %v", p, err, want)
		}
		if a, r, err := st.Repair(ctx, st.Txn); err != nil || a != 0 || r != 0 {
			t.Fatalf("second repair: %d, %d, %v; want nothing", a, r, err)
		}
	})
}

// TestIndexFormat: a ready key that names another format (a newer
// binary's index) or is no mark at all (crafted) is not taken as ready: a
// page answers ErrIndexNotReady (the caller reads the whole list), and
// the backfill neither rewrites the key nor writes entries.
func TestIndexFormat(t *testing.T) {
	stores(t, func(t *testing.T, kv coord.Store) {
		for _, mark := range []string{`{"format":2,"written":"2030-01-01T00:00:00Z"}`, `not a mark`} {
			ctx := ctxT(t)
			st, _ := clocked(t, kv)
			key := st.Layout().IndexReadyKey()
			written, err := kv.Create(ctx, key, []byte(mark))
			if err != nil {
				t.Fatal(err)
			}
			r, err := st.Create(ctx, task.CreateRequest{Type: "noop"})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := st.Cancel(ctx, r.ID); err != nil {
				t.Fatal(err)
			}
			if _, err := st.ListPage(ctx, task.PageQuery{Limit: 5}); !errors.Is(err, task.ErrIndexNotReady) {
				t.Fatalf("mark %q: page: %v; want ErrIndexNotReady", mark, err)
			}
			if n, err := st.Backfill(ctx, st.Txn); err != nil || n != 0 {
				t.Fatalf("mark %q: backfill: %d, %v; want nothing", mark, n, err)
			}
			got, err := kv.Get(ctx, key)
			if err != nil || !bytes.Equal(got.Value, []byte(mark)) || got.Version != written.Version {
				t.Fatalf("mark %q: after the backfill %+v, %v; want it untouched", mark, got, err)
			}
			if a, rm, err := st.Repair(ctx, st.Txn); err != nil || a != 0 || rm != 0 {
				t.Fatalf("mark %q: repair: %d, %d, %v; want nothing", mark, a, rm, err)
			}
			if err := kv.Delete(ctx, key, 0); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// finishing is a store on which tasks finish (record and entry together,
// as Finish writes them) while a sweep reads: the first read of a shard
// of finished records writes them first, after the sweep's read of the
// index.
type finishing struct {
	coord.Store
	doneDir string
	finish  func() error
	once    sync.Once
	err     error
}

func (s *finishing) List(ctx context.Context, dir string) ([]coord.KV, error) {
	if strings.HasPrefix(dir, s.doneDir+"/") {
		s.once.Do(func() { s.err = s.finish() })
		if s.err != nil {
			return nil, s.err
		}
	}
	return s.Store.List(ctx, dir)
}

// TestBackfillBesideFinishes: tasks that finish while the backfill reads
// have records whose entries its first read of the index did not see.
// The backfill writes entries for the records from before the index only,
// in transactions none of which fails; before, each such record cost a
// failed batch and a transaction of its own (the console's leader ground
// through 100k of them for many minutes while every page read the whole
// history). Then the index is ready and a page agrees with the whole list.
func TestBackfillBesideFinishes(t *testing.T) {
	stores(t, func(t *testing.T, kv coord.Store) {
		ctx := ctxT(t)
		raw, _ := clocked(t, kv)
		lay := raw.Layout()
		at := raw.Now()
		record := func(i int) task.Record {
			c := at.Add(time.Duration(i) * time.Second)
			return task.Record{ID: uuid.NewString(), Type: "noop", Spec: json.RawMessage("{}"), State: task.Succeeded, Created: c, Finished: c, Updated: c}
		}
		// Three records from before the index: no entries.
		var legacy []string
		for i := range 3 {
			r := record(i)
			b, _ := json.Marshal(&r)
			dk, err := lay.DoneKey(r.ID)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := kv.Create(ctx, dk, b); err != nil {
				t.Fatal(err)
			}
			legacy = append(legacy, r.ID)
		}
		const finishes = 120 // more than two batches of the sweep
		fs := &finishing{Store: kv, doneDir: lay.DoneDir(), finish: func() error {
			for i := range finishes {
				r := record(10 + i)
				ops, err := raw.FinishedOps(&r)
				if err != nil {
					return err
				}
				if _, err := kv.Txn(ctx, nil, ops); err != nil {
					return err
				}
			}
			return nil
		}}
		st, _ := clocked(t, fs)
		var txns, failed int
		counted := func(ctx context.Context, conds []coord.Cond, ops []coord.Op) ([]int64, error) {
			txns++
			v, err := st.Txn(ctx, conds, ops)
			if err != nil {
				failed++
			}
			return v, err
		}
		n, err := st.Backfill(ctx, counted)
		if err != nil || n != len(legacy) {
			t.Fatalf("backfill: %d entries, %v; want %d (the records from before the index)", n, err, len(legacy))
		}
		if fs.err != nil {
			t.Fatal(fs.err)
		}
		if failed != 0 || txns != 2 {
			t.Fatalf("backfill beside %d finishes: %d transactions, %d of them failed; want 2 (the three entries, the ready mark), none failed", finishes, txns, failed)
		}
		if ok, err := st.IndexReady(ctx); err != nil || !ok {
			t.Fatalf("index ready after the backfill: %v, %v", ok, err)
		}
		if c, err := kv.CountBelow(ctx, lay.IndexDir()); err != nil || c != finishes+len(legacy) {
			t.Fatalf("%d index entries (%v); want %d", c, err, finishes+len(legacy))
		}
		want := newestFirst(t, st, task.Filter{}, nil)
		p, err := st.ListPage(ctx, task.PageQuery{Limit: 200})
		if err != nil || !slices.Equal(idsOf(p.Records), want) || p.Total != len(want) {
			t.Fatalf("page after the backfill: %v, %v; want %d rows as the whole list has them", p, err, len(want))
		}
	})
}
