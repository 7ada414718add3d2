package task_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/tasktype"
)

// clocked is a store whose clock the test moves, so that every task has
// its own creation time.
func clocked(t *testing.T, kv coord.Store) (*task.Store, func()) {
	at := time.Date(2024, 3, 1, 9, 59, 0, 0, time.UTC)
	st, err := task.NewStore(kv, "/taskd", tasktype.Builtin(tasktype.Copy{}, nil, nil), "UTC", func() time.Time { return at })
	if err != nil {
		t.Fatal(err)
	}
	// 7 minutes a step: tasks spread over several index buckets (hours).
	return st, func() { at = at.Add(7 * time.Minute) }
}

func idsOf(rs []*task.Record) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.ID)
	}
	return out
}

// newestFirst is what List (reading everything) says a page must hold.
func newestFirst(t *testing.T, st *task.Store, f task.Filter, keep func(*task.Record) bool) []string {
	t.Helper()
	all, err := st.List(context.Background(), f)
	if err != nil {
		t.Fatal(err)
	}
	slices.Reverse(all)
	return idsOf(slices.DeleteFunc(all, func(r *task.Record) bool { return keep != nil && !keep(r) }))
}

// TestListPage: pages of the newest tasks from the index agree with the
// whole list, newest first, for every page size and offset, across the
// boundary between unfinished and finished tasks, with every filter; the
// total is exact without a filter beyond the state and a lower bound
// flagged as such with one.
func TestListPage(t *testing.T) {
	stores(t, func(t *testing.T, kv coord.Store) {
		ctx := ctxT(t)
		st, tick := clocked(t, kv)
		if _, err := st.ListPage(ctx, task.PageQuery{Limit: 5}); !errors.Is(err, task.ErrIndexNotReady) {
			t.Fatalf("page before the backfill: %v; want ErrIndexNotReady", err)
		}
		if n, err := st.Backfill(ctx, st.Txn); err != nil || n != 0 {
			t.Fatalf("backfill of an empty store: %d, %v", n, err)
		}
		// 14 tasks created in turn; some end (cancelled), one is pinned
		// to n2 with a key, so that finished and unfinished interleave.
		var all []*task.Record
		for i := range 14 {
			req := task.CreateRequest{Type: "sleep", Spec: json.RawMessage(`{"duration":"1h"}`)}
			if i%3 == 0 {
				req.Node, req.Key = "n2", fmt.Sprintf("vol-%d", i)
			}
			r, err := st.Create(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, r)
			tick()
		}
		for i, r := range all {
			if i%2 == 0 || i == 13 {
				if _, err := st.Cancel(ctx, r.ID); err != nil {
					t.Fatal(err)
				}
			}
		}
		filters := []struct {
			q    task.PageQuery
			keep func(*task.Record) bool
		}{
			{task.PageQuery{}, nil},
			{task.PageQuery{Filter: task.Filter{Status: "finished"}}, nil},
			{task.PageQuery{Filter: task.Filter{Status: "unfinished"}}, nil},
			{task.PageQuery{Filter: task.Filter{Status: "cancelled"}}, nil},
			{task.PageQuery{Filter: task.Filter{Type: "sleep"}}, nil},
			{task.PageQuery{Filter: task.Filter{Type: "noop"}}, nil},
			{task.PageQuery{Node: "n2"}, func(r *task.Record) bool { return r.Node == "n2" }},
			{task.PageQuery{Key: "vol-1"}, func(r *task.Record) bool { return strings.Contains(r.Key, "vol-1") }},
			{task.PageQuery{Key: all[4].ID[:13]}, func(r *task.Record) bool { return strings.Contains(r.ID, all[4].ID[:13]) }},
		}
		for _, fl := range filters {
			want := newestFirst(t, st, fl.q.Filter, fl.keep)
			for limit := 1; limit <= 15; limit++ {
				for off := 0; off <= len(want)+1; off++ {
					q := fl.q
					q.Limit, q.Offset = limit, off
					p, err := st.ListPage(ctx, q)
					if err != nil {
						t.Fatalf("%+v: %v", q, err)
					}
					w := want[min(off, len(want)):]
					w = w[:min(limit, len(w))]
					if got := idsOf(p.Records); !slices.Equal(got, w) {
						t.Fatalf("%+v: page %v\nwant %v", q, got, w)
					}
					plain := q.Type == "" && q.Node == "" && q.Key == "" && (q.Status == "" || q.Status == "finished" || q.Status == "unfinished")
					switch {
					case p.TotalExact && p.Total != len(want):
						t.Fatalf("%+v: total %d (exact); want %d", q, p.Total, len(want))
					case !p.TotalExact && (plain || p.Total < off+len(w) || p.Total > len(want)):
						t.Fatalf("%+v: total %d flagged a lower bound; %d match", q, p.Total, len(want))
					}
				}
			}
		}
	})
}

// TestIndexFollowsFinish: Finish writes the entry in its own transaction:
// a Finish that loses its condition (a concurrent write, or a crash before
// the commit: the store applies all or nothing) writes no entry, and the
// page never shows a task twice or a finished task without its entry.
func TestIndexFollowsFinish(t *testing.T) {
	stores(t, func(t *testing.T, kv coord.Store) {
		ctx := ctxT(t)
		st, tick := clocked(t, kv)
		if _, err := st.Backfill(ctx, st.Txn); err != nil {
			t.Fatal(err)
		}
		r, err := st.Create(ctx, task.CreateRequest{Type: "noop"})
		if err != nil {
			t.Fatal(err)
		}
		tick()
		stale := *r
		if _, err := st.Pause(ctx, r.ID); err != nil { // the record moves on
			t.Fatal(err)
		}
		stale.State = task.Failed
		if err := st.Finish(ctx, st.Txn, &stale); !errors.Is(err, coord.ErrConflict) {
			t.Fatalf("finish at a stale version: %v; want a conflict", err)
		}
		key, err := st.Layout().IndexKey(r.Created, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Get(ctx, key); !errors.Is(err, coord.ErrNotFound) {
			t.Fatalf("index entry after a failed finish: %v", err)
		}
		if _, err := st.Cancel(ctx, r.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Get(ctx, key); err != nil {
			t.Fatalf("index entry after the finish: %v", err)
		}
		p, err := st.ListPage(ctx, task.PageQuery{Limit: 10})
		if err != nil || !slices.Equal(idsOf(p.Records), []string{r.ID}) || p.Total != 1 || !p.TotalExact {
			t.Fatalf("page = %+v, %v", p, err)
		}
	})
}

// TestBackfill: finished records written before the index (no entries)
// are listed by List at once; ListPage answers ErrIndexNotReady until the
// backfill, then agrees with List; a second backfill writes nothing; a
// crafted record and a crafted index key are left alone and never listed.
func TestBackfill(t *testing.T) {
	stores(t, func(t *testing.T, kv coord.Store) {
		ctx := ctxT(t)
		st, _ := clocked(t, kv)
		lay := st.Layout()
		base := time.Date(2023, 12, 31, 23, 0, 0, 0, time.UTC)
		var want []string
		for i := range 130 { // more than a backfill batch
			id := uuid.NewString()
			at := base.Add(time.Duration(i) * 37 * time.Second)
			r := task.Record{ID: id, Type: "noop", Spec: json.RawMessage("{}"), State: task.Succeeded, Created: at, Finished: at, Updated: at}
			b, _ := json.Marshal(&r)
			key, err := lay.DoneKey(id)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := kv.Create(ctx, key, b); err != nil {
				t.Fatal(err)
			}
			want = append(want, id)
		}
		slices.Reverse(want)
		// A crafted index key in the index's directory: never a row.
		if _, err := kv.Create(ctx, lay.IndexDir()+"/2099010100/x", []byte(`{"s":"succeeded","t":"noop"}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := st.ListPage(ctx, task.PageQuery{Limit: 10}); !errors.Is(err, task.ErrIndexNotReady) {
			t.Fatalf("page before the backfill: %v", err)
		}
		if got := newestFirst(t, st, task.Filter{}, nil); !slices.Equal(got, want) {
			t.Fatal("List of the records from before the index is not every record")
		}
		n, err := st.Backfill(ctx, st.Txn)
		if err != nil || n != len(want) {
			t.Fatalf("backfill: %d, %v; want %d", n, err, len(want))
		}
		if n, err := st.Backfill(ctx, st.Txn); err != nil || n != 0 {
			t.Fatalf("second backfill: %d, %v", n, err)
		}
		p, err := st.ListPage(ctx, task.PageQuery{Limit: 40, Offset: 50})
		if err != nil || !slices.Equal(idsOf(p.Records), want[50:90]) {
			t.Fatalf("page after the backfill: %v, %v", p, err)
		}
	})
}
