package task_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/task"
)

// rounds is a store that holds ListPage to its rounds of reads: the
// listing of the unfinished tasks waits until the index's first read has
// been sent too, and each read of a finished record waits until want of
// them are in flight together. A ListPage that sent one read after
// another would leave a wait unmet: the read then fails after a deadline.
type rounds struct {
	coord.Store
	activeDir, doneDir string
	want               int

	tail     chan struct{} // closed at the first ListBelow
	tailOnce sync.Once
	mu       sync.Mutex
	inFlight int
	full     chan struct{} // closed once want record reads are in flight
}

const roundWait = 5 * time.Second

func (s *rounds) List(ctx context.Context, dir string) ([]coord.KV, error) {
	if dir == s.activeDir {
		select {
		case <-s.tail:
		case <-time.After(roundWait):
			return nil, fmt.Errorf("the unfinished tasks were read alone: the index's read did not go out beside them")
		}
	}
	return s.Store.List(ctx, dir)
}

func (s *rounds) ListBelow(ctx context.Context, dir, after string, limit int) ([]coord.KV, bool, error) {
	s.tailOnce.Do(func() { close(s.tail) })
	return s.Store.ListBelow(ctx, dir, after, limit)
}

func (s *rounds) Get(ctx context.Context, key string) (coord.KV, error) {
	if strings.HasPrefix(key, s.doneDir+"/") {
		s.mu.Lock()
		s.inFlight++
		if s.inFlight == s.want {
			close(s.full)
		}
		s.mu.Unlock()
		select {
		case <-s.full:
		case <-time.After(roundWait):
			return coord.KV{}, fmt.Errorf("fewer than %d records of the page were read together", s.want)
		}
	}
	return s.Store.Get(ctx, key)
}

// TestListPageRounds: on a store busy with writes every read waits its
// turn (etcd's linearizable reads wait for the writes before them), so a
// page's reads go out together: the unfinished tasks beside the index,
// then the page's 50 finished records in one round (the console's first
// page with 1000 running tasks took seconds when they went one round of
// 16 after another).
func TestListPageRounds(t *testing.T) {
	stores(t, func(t *testing.T, kv coord.Store) {
		ctx := ctxT(t)
		st, _ := clocked(t, kv)
		if _, err := st.Backfill(ctx, st.Txn); err != nil {
			t.Fatal(err)
		}
		const page = 50
		base := st.Now().Add(-time.Hour)
		var ops []coord.Op
		for i := range page + 10 {
			at := base.Add(time.Duration(i) * time.Second)
			o, err := st.FinishedOps(&task.Record{ID: uuid.NewString(), Type: "noop", Spec: json.RawMessage("{}"), State: task.Succeeded, Created: at, Finished: at, Updated: at})
			if err != nil {
				t.Fatal(err)
			}
			if ops = append(ops, o...); len(ops) == 40 {
				if _, err := kv.Txn(ctx, nil, ops); err != nil {
					t.Fatal(err)
				}
				ops = nil
			}
		}
		if _, err := kv.Txn(ctx, nil, ops); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Create(ctx, task.CreateRequest{Type: "sleep", Spec: json.RawMessage(`{"duration":"1h"}`)}); err != nil {
			t.Fatal(err)
		}
		lay := st.Layout()
		rs := &rounds{Store: kv, activeDir: lay.ActiveDir(), doneDir: lay.DoneDir(), want: page - 1,
			tail: make(chan struct{}), full: make(chan struct{})}
		watched, err := task.NewStore(rs, "/taskd", nil, "UTC", nil)
		if err != nil {
			t.Fatal(err)
		}
		p, err := watched.ListPage(ctx, task.PageQuery{Limit: page})
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Records) != page || p.Total != page+11 || !p.TotalExact {
			t.Fatalf("page of %d records, total %d (exact %v); want %d of %d", len(p.Records), p.Total, p.TotalExact, page, page+11)
		}
	})
}

// collecting deletes one finished task (record and entry, as the
// collection does) when a page first asks for its record: the page read
// the index before the collection and the record after it.
type collecting struct {
	coord.Store
	victim, entry string
	once          sync.Once
}

func (s *collecting) Get(ctx context.Context, key string) (coord.KV, error) {
	var err error
	if key == s.victim {
		s.once.Do(func() {
			_, err = s.Store.Txn(ctx, nil, []coord.Op{coord.DeleteOp(s.victim), coord.DeleteOp(s.entry)})
		})
	}
	if err != nil {
		return coord.KV{}, err
	}
	return s.Store.Get(ctx, key)
}

// TestListPageCollectedMeanwhile: a task collected between the page's
// read of the index and its read of the records is neither a row nor
// counted in the total (it was: total 3 beside 2 rows).
func TestListPageCollectedMeanwhile(t *testing.T) {
	stores(t, func(t *testing.T, kv coord.Store) {
		ctx := ctxT(t)
		st, tick := clocked(t, kv)
		if _, err := st.Backfill(ctx, st.Txn); err != nil {
			t.Fatal(err)
		}
		rs := cancelled(ctx, t, st, tick, 3)
		lay := st.Layout()
		victim, err := lay.DoneKey(rs[1].ID)
		if err != nil {
			t.Fatal(err)
		}
		entry, err := lay.IndexKey(rs[1].Created, rs[1].ID)
		if err != nil {
			t.Fatal(err)
		}
		watched, err := task.NewStore(&collecting{Store: kv, victim: victim, entry: entry}, "/taskd", nil, "UTC", nil)
		if err != nil {
			t.Fatal(err)
		}
		p, err := watched.ListPage(ctx, task.PageQuery{Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := idsOf(p.Records), []string{rs[2].ID, rs[0].ID}; !slices.Equal(got, want) || p.Total != 2 || !p.TotalExact {
			t.Fatalf("page %v total %d (exact %v); want %v, total 2", got, p.Total, p.TotalExact, want)
		}
	})
}

// cancelled creates n noop tasks a clock step apart and cancels each: n
// finished tasks, each with its index entry.
func cancelled(ctx context.Context, t *testing.T, st *task.Store, tick func(), n int) []*task.Record {
	t.Helper()
	var rs []*task.Record
	for range n {
		r, err := st.Create(ctx, task.CreateRequest{Type: "noop"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Cancel(ctx, r.ID); err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
		tick()
	}
	return rs
}

// counting counts the listings of the unfinished tasks' records and the
// reads of single task records.
type counting struct {
	coord.Store
	activeDir string
	doneDir   string
	mu        sync.Mutex
	lists     int
	reads     int
}

func (s *counting) List(ctx context.Context, dir string) ([]coord.KV, error) {
	if dir == s.activeDir {
		s.mu.Lock()
		s.lists++
		s.mu.Unlock()
	}
	return s.Store.List(ctx, dir)
}

func (s *counting) Get(ctx context.Context, key string) (coord.KV, error) {
	if strings.HasPrefix(key, s.activeDir+"/") || strings.HasPrefix(key, s.doneDir+"/") {
		s.mu.Lock()
		s.reads++
		s.mu.Unlock()
	}
	return s.Store.Get(ctx, key)
}

// localCounting is counting with the store's local reads
// (coord.LocalGetter, one member): it counts them apart.
type localCounting struct {
	*counting
	local int
}

func (s *localCounting) LocalGet(ctx context.Context, key string) (coord.KV, error) {
	s.mu.Lock()
	s.local++
	s.mu.Unlock()
	return s.Store.Get(ctx, key)
}

func (s *localCounting) OneMember() bool { return true }

// take returns the counts since the last take and starts again.
func (s *counting) take() (lists, reads int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	lists, reads = s.lists, s.reads
	s.lists, s.reads = 0, 0
	return lists, reads
}

// TestListPageFacts: once a page has read the unfinished tasks, the next
// pages read the records of their rows and of the tasks created since,
// not every unfinished record (on ZooKeeper one read each: the console's
// first page with 1000 running tasks read 1000 records). The rows are
// what List says while tasks are created and finish between pages.
func TestListPageFacts(t *testing.T) {
	stores(t, func(t *testing.T, kv coord.Store) {
		ctx := ctxT(t)
		cnt := &counting{Store: kv}
		st, tick := clocked(t, cnt)
		cnt.activeDir, cnt.doneDir = st.Layout().ActiveDir(), st.Layout().DoneDir()
		if _, err := st.Backfill(ctx, st.Txn); err != nil {
			t.Fatal(err)
		}
		const n, limit = 120, 10
		var all []*task.Record
		create := func(i int) {
			req := task.CreateRequest{Type: "sleep", Spec: json.RawMessage(`{"duration":"1h"}`)}
			if i%4 == 0 {
				req.Key = fmt.Sprintf("vol-%d", i)
			}
			r, err := st.Create(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, r)
			tick()
		}
		for i := range n {
			create(i)
		}
		for _, r := range all[:5] {
			if _, err := st.Cancel(ctx, r.ID); err != nil {
				t.Fatal(err)
			}
		}
		// check asks for a page and compares it with List; maxReads < 0:
		// the page may read every record, else it reads at most maxReads
		// unfinished records and lists none.
		check := func(q task.PageQuery, maxReads int) {
			t.Helper()
			cnt.take()
			p, err := st.ListPage(ctx, q)
			if err != nil {
				t.Fatalf("%+v: %v", q, err)
			}
			lists, reads := cnt.take()
			var keep func(*task.Record) bool
			if q.Key != "" {
				keep = func(r *task.Record) bool { return strings.Contains(r.Key, q.Key) || strings.Contains(r.ID, q.Key) }
			}
			want := newestFirst(t, st, q.Filter, keep)
			w := want[min(q.Offset, len(want)):]
			w = w[:min(q.Limit, len(w))]
			if got := idsOf(p.Records); !slices.Equal(got, w) || p.Total != len(want) || !p.TotalExact {
				t.Fatalf("%+v: page %v total %d (exact %v)\nwant %v total %d", q, got, p.Total, p.TotalExact, w, len(want))
			}
			if maxReads >= 0 && (lists != 0 || reads > maxReads) {
				t.Fatalf("%+v: the page listed the unfinished records %d times and read %d records; want no listing and at most %d reads", q, lists, reads, maxReads)
			}
		}
		check(task.PageQuery{Limit: limit}, -1) // the first page learns every task
		check(task.PageQuery{Limit: limit}, limit)
		check(task.PageQuery{Limit: limit, Offset: 30}, limit)
		check(task.PageQuery{Limit: limit, Key: "vol-"}, limit)
		check(task.PageQuery{Limit: limit, Filter: task.Filter{Status: "unfinished", Type: "sleep"}}, limit)
		// Three new tasks; the two newest of before end.
		for i := range 3 {
			create(n + i)
		}
		for _, r := range all[n-2 : n] {
			if _, err := st.Cancel(ctx, r.ID); err != nil {
				t.Fatal(err)
			}
		}
		check(task.PageQuery{Limit: limit}, limit+3)
		check(task.PageQuery{Limit: limit, Offset: 2}, limit)
		// A state filter needs every record.
		check(task.PageQuery{Limit: limit, Filter: task.Filter{Status: "waiting"}}, -1)
		// More new tasks than a page reads one by one (256): it lists them
		// all again, and the next page reads its rows only.
		for i := range 260 {
			create(n + 3 + i)
		}
		check(task.PageQuery{Limit: limit}, -1)
		check(task.PageQuery{Limit: limit, Offset: 250}, limit)
	})
}

// TestListPageLocalReads: where the store offers local reads (etcd with
// one member: taskd's embedded one), a page reads its records so, after
// its listings' linearizable reads; the listings stay linearizable.
func TestListPageLocalReads(t *testing.T) {
	stores(t, func(t *testing.T, kv coord.Store) {
		ctx := ctxT(t)
		lc := &localCounting{counting: &counting{Store: kv}}
		st, tick := clocked(t, lc)
		lc.activeDir, lc.doneDir = st.Layout().ActiveDir(), st.Layout().DoneDir()
		if _, err := st.Backfill(ctx, st.Txn); err != nil {
			t.Fatal(err)
		}
		var ids []string
		for range 12 {
			r, err := st.Create(ctx, task.CreateRequest{Type: "sleep", Spec: json.RawMessage(`{"duration":"1h"}`)})
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, r.ID)
			tick()
		}
		for _, id := range ids[:4] {
			if _, err := st.Cancel(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
		for _, q := range []task.PageQuery{{Limit: 10}, {Limit: 10}, {Limit: 5, Offset: 6}} {
			lc.take()
			lc.mu.Lock()
			lc.local = 0
			lc.mu.Unlock()
			p, err := st.ListPage(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			lists, reads := lc.take()
			lc.mu.Lock()
			local := lc.local
			lc.mu.Unlock()
			want := newestFirst(t, st, q.Filter, nil)
			w := want[min(q.Offset, len(want)):]
			w = w[:min(q.Limit, len(w))]
			if got := idsOf(p.Records); !slices.Equal(got, w) {
				t.Fatalf("%+v: page %v\nwant %v", q, got, w)
			}
			// Every record the page did not have from a listing was read
			// locally: the first page lists the unfinished records and
			// reads the finished ones of its rows.
			fromListing := 0
			if lists == 1 {
				for _, r := range p.Records {
					if !r.State.Final() {
						fromListing++
					}
				}
			}
			if reads != 0 || local != len(p.Records)-fromListing {
				t.Fatalf("%+v: %d linearizable and %d local reads of records for %d rows (%d from a listing); want 0 and %d", q, reads, local, len(p.Records), fromListing, len(p.Records)-fromListing)
			}
		}
	})
}
