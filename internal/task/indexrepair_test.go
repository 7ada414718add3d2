package task_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"testing"

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
