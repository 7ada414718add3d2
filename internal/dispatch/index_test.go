package dispatch_test

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/testenv"
)

// TestRetentionDeletesIndex: the leader backfills the index entry of a
// finished record written before the index, then its collection deletes
// every finished task past the retention together with its index entry:
// no entry is left without its record, and the newer task stays listed.
func TestRetentionDeletesIndex(t *testing.T) {
	for _, b := range testenv.Backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			kv := b.Open(t)
			at := time.Now().UTC().Add(-8 * 24 * time.Hour) // past the 7-day retention
			st, err := task.NewStore(kv, "/taskd", builtin(), "UTC", func() time.Time { return at })
			if err != nil {
				t.Fatal(err)
			}
			var old []string
			for range 3 {
				r, err := st.Create(ctx, task.CreateRequest{Type: "noop"})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := st.Cancel(ctx, r.ID); err != nil {
					t.Fatal(err)
				}
				old = append(old, r.ID)
			}
			// A record from before the index: no entry.
			legacy := storeLegacy(ctx, t, kv, st, at)
			at = time.Now().UTC()
			fresh, err := st.Create(ctx, task.CreateRequest{Type: "noop"})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := st.Cancel(ctx, fresh.ID); err != nil {
				t.Fatal(err)
			}
			startMember(t, kv, st, "n1", 1)
			page, err := waitPageOfOne(ctx, st)
			if err != nil {
				t.Fatalf("the collection left %+v (%v); want only %s", page, err, fresh.ID)
			}
			if page.Records[0].ID != fresh.ID || page.Total != 1 || !page.TotalExact {
				t.Fatalf("page %v total %d; want %s, total 1", page.Records[0].ID, page.Total, fresh.ID)
			}
			if n, err := kv.CountBelow(ctx, st.Layout().IndexDir()); err != nil || n != 1 {
				t.Fatalf("%d index entries (%v); want 1", n, err)
			}
			for _, id := range append(old, legacy.ID) {
				if _, err := st.Get(ctx, id); err == nil {
					t.Fatalf("task %s past the retention still stored", id)
				}
			}
			all, err := st.List(ctx, task.Filter{})
			if err != nil || !slices.Equal([]string{all[0].ID}, []string{fresh.ID}) || len(all) != 1 {
				t.Fatalf("List = %d tasks, %v", len(all), err)
			}
		})
	}
}

// TestLeaderRepairsIndex: in a cluster whose index is ready, a node of the
// version before the index has finished a task (its record, no entry): the
// next leader's first collection repairs the index, and the task is on
// the console's page.
func TestLeaderRepairsIndex(t *testing.T) {
	for _, b := range testenv.Backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			kv := b.Open(t)
			st := newStore(t, kv, builtin())
			if _, err := st.Backfill(ctx, st.Txn); err != nil {
				t.Fatal(err)
			}
			legacy := storeLegacy(ctx, t, kv, st, time.Now().UTC())
			if p, err := st.ListPage(ctx, task.PageQuery{Limit: 10}); err != nil || len(p.Records) != 0 {
				t.Fatalf("page before the leader: %+v, %v; want the old node's task missing", p, err)
			}
			startMember(t, kv, st, "n1", 1)
			page, err := waitPageOfOne(ctx, st)
			if err != nil || page.Records[0].ID != legacy.ID || page.Total != 1 {
				t.Fatalf("page after the leader's collection: %+v, %v; want %s", page, err, legacy.ID)
			}
		})
	}
}

// storeLegacy stores a succeeded task as a node of the version before the
// index finishes one: its record, no index entry.
func storeLegacy(ctx context.Context, t *testing.T, kv coord.Store, st *task.Store, at time.Time) task.Record {
	t.Helper()
	r := task.Record{ID: uuid.NewString(), Type: "noop", Spec: json.RawMessage("{}"), State: task.Succeeded, Created: at, Finished: at, Updated: at}
	b, err := json.Marshal(&r)
	if err != nil {
		t.Fatal(err)
	}
	dk, err := st.Layout().DoneKey(r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, dk, b); err != nil {
		t.Fatal(err)
	}
	return r
}

// waitPageOfOne waits until the newest page holds exactly one task.
func waitPageOfOne(ctx context.Context, st *task.Store) (*task.Page, error) {
	var page *task.Page
	err := testenv.WaitFor(ctx, 20*time.Millisecond, func() bool {
		var err error
		page, err = st.ListPage(ctx, task.PageQuery{Limit: 10})
		return err == nil && len(page.Records) == 1
	})
	return page, err
}
