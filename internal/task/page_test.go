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
// been sent too, and the finished records are read want (or more) in one
// call. A ListPage that sent one read after another would leave a wait
// unmet (the read then fails after a deadline) or read too few at once.
type rounds struct {
	coord.Store
	activeDir, doneDir string
	want               int

	tail     chan struct{} // closed at the first ListBelow
	tailOnce sync.Once
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
		return coord.KV{}, fmt.Errorf("record %s read alone, not with the rest of the page", key)
	}
	return s.Store.Get(ctx, key)
}

func (s *rounds) GetMany(ctx context.Context, keys []string) ([]coord.KV, error) {
	n := 0
	for _, k := range keys {
		if strings.HasPrefix(k, s.doneDir+"/") {
			n++
		}
	}
	if n > 0 && n < s.want {
		return nil, fmt.Errorf("%d records of the page were read together; want %d", n, s.want)
	}
	return s.Store.GetMany(ctx, keys)
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
			tail: make(chan struct{})}
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

func (s *collecting) GetMany(ctx context.Context, keys []string) ([]coord.KV, error) {
	var err error
	if slices.Contains(keys, s.victim) {
		s.once.Do(func() {
			_, err = s.Store.Txn(ctx, nil, []coord.Op{coord.DeleteOp(s.victim), coord.DeleteOp(s.entry)})
		})
	}
	if err != nil {
		return nil, err
	}
	return s.Store.GetMany(ctx, keys)
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
// task records read by key.
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

func (s *counting) GetMany(ctx context.Context, keys []string) ([]coord.KV, error) {
	s.mu.Lock()
	for _, k := range keys {
		if strings.HasPrefix(k, s.activeDir+"/") || strings.HasPrefix(k, s.doneDir+"/") {
			s.reads++
		}
	}
	s.mu.Unlock()
	return s.Store.GetMany(ctx, keys)
}

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
			if i%5 == 0 {
				req.Type, req.Spec = "noop", nil
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
		check(task.PageQuery{Limit: limit, Filter: task.Filter{Type: "noop"}}, limit)
		// Once the facts are older than their age limit (an id may have
		// finished and come back meanwhile) the page reads every record.
		st.SetFactsMaxAge(time.Nanosecond)
		cnt.take()
		if _, err := st.ListPage(ctx, task.PageQuery{Limit: limit}); err != nil {
			t.Fatal(err)
		}
		if lists, _ := cnt.take(); lists != 1 {
			t.Fatalf("the page after the facts' age limit listed the unfinished records %d times; want 1", lists)
		}
		st.SetFactsMaxAge(time.Hour)
		check(task.PageQuery{Limit: limit}, limit)
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

// finishingOnRead cancels a task (through another store) just before a
// page first reads its record: the task was unfinished when the page
// listed the keys and is finished when it reads the record.
type finishingOnRead struct {
	coord.Store
	mu     sync.Mutex
	victim string // the unfinished record's key
	cancel func() error
}

func (s *finishingOnRead) GetMany(ctx context.Context, keys []string) ([]coord.KV, error) {
	s.mu.Lock()
	cancel := s.cancel
	hit := slices.Contains(keys, s.victim)
	if hit {
		s.cancel = nil
	}
	s.mu.Unlock()
	if hit && cancel != nil {
		if err := cancel(); err != nil {
			return nil, err
		}
	}
	return s.Store.GetMany(ctx, keys)
}

// TestListPageFactsMeanwhile: a page whose row finished between the
// listing and the read of its record leaves it out and counts it out; keys
// written around taskd in the unfinished directory are neither shown nor
// counted nor read again by the next page; pages asked together while
// tasks are created and finish share the facts safely and end equal to
// List.
func TestListPageFactsMeanwhile(t *testing.T) {
	stores(t, func(t *testing.T, kv coord.Store) {
		ctx := ctxT(t)
		fr := &finishingOnRead{Store: kv}
		cnt := &counting{Store: fr}
		st, tick := clocked(t, cnt)
		lay := st.Layout()
		cnt.activeDir, cnt.doneDir = lay.ActiveDir(), lay.DoneDir()
		if _, err := st.Backfill(ctx, st.Txn); err != nil {
			t.Fatal(err)
		}
		var all []*task.Record
		create := func() {
			r, err := st.Create(ctx, task.CreateRequest{Type: "sleep", Spec: json.RawMessage(`{"duration":"1h"}`)})
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, r)
			tick()
		}
		for range 30 {
			create()
		}
		const limit = 10
		page := func(q task.PageQuery) *task.Page {
			t.Helper()
			p, err := st.ListPage(ctx, q)
			if err != nil {
				t.Fatalf("%+v: %v", q, err)
			}
			return p
		}
		before := page(task.PageQuery{Limit: limit}) // fills the facts
		victim := before.Records[0]
		key, err := lay.ActiveKey(victim.ID)
		if err != nil {
			t.Fatal(err)
		}
		fr.mu.Lock()
		fr.victim, fr.cancel = key, func() error { _, err := st.Cancel(ctx, victim.ID); return err }
		fr.mu.Unlock()
		p := page(task.PageQuery{Limit: limit})
		if got, want := idsOf(p.Records), idsOf(before.Records[1:]); !slices.Equal(got, want) || p.Total != before.Total-1 {
			t.Fatalf("page with its first row finished meanwhile: %v total %d\nwant %v total %d", got, p.Total, want, before.Total-1)
		}

		// Keys written around taskd: a record that is not JSON and one
		// whose id is not its key's, at task-id keys, and a key that is
		// not a task id.
		want := newestFirst(t, st, task.Filter{}, nil)
		waiting := newestFirst(t, st, task.Filter{Status: "waiting"}, nil) // List fails on a record that is not JSON
		crafted := []string{uuid.NewString(), uuid.NewString()}
		for i, v := range []string{"not json", fmt.Sprintf(`{"id":%q,"type":"sleep","state":"waiting"}`, uuid.NewString())} {
			if _, err := kv.Create(ctx, lay.ActiveDir()+"/"+crafted[i], []byte(v)); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := kv.Create(ctx, lay.ActiveDir()+"/not-a-task", []byte("{}")); err != nil {
			t.Fatal(err)
		}
		for i, q := range []task.PageQuery{{Limit: limit}, {Limit: limit}, {Limit: limit, Filter: task.Filter{Status: "waiting"}}, {Limit: limit}} {
			cnt.take()
			p := page(q)
			_, reads := cnt.take()
			w := want
			if q.Status == "waiting" {
				w = waiting
			}
			if got := idsOf(p.Records); !slices.Equal(got, w[:limit]) || p.Total != len(w) {
				t.Fatalf("%+v beside crafted keys: %v total %d\nwant %v total %d", q, got, p.Total, w[:limit], len(w))
			}
			if i > 0 && q.Status == "" && reads > limit {
				t.Fatalf("%+v: %d records read; the crafted keys were read again", q, reads)
			}
		}
		for _, id := range crafted {
			if err := kv.Delete(ctx, lay.ActiveDir()+"/"+id, 0); err != nil {
				t.Fatal(err)
			}
		}
		if err := kv.Delete(ctx, lay.ActiveDir()+"/not-a-task", 0); err != nil {
			t.Fatal(err)
		}

		// Pages asked together while tasks are created and finish.
		pctx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		errs := make(chan error, 3)
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for pctx.Err() == nil {
					if _, err := st.ListPage(pctx, task.PageQuery{Limit: limit}); err != nil && pctx.Err() == nil {
						errs <- err
						return
					}
				}
			}()
		}
		for i := range 20 {
			create()
			if i%2 == 0 {
				if _, err := st.Cancel(ctx, all[len(all)-1].ID); err != nil {
					t.Fatal(err)
				}
			}
		}
		stop()
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("a page asked beside creates and finishes: %v", err)
		}
		want = newestFirst(t, st, task.Filter{}, nil)
		if got := idsOf(page(task.PageQuery{Limit: limit}).Records); !slices.Equal(got, want[:limit]) {
			t.Fatalf("page after the concurrent pages: %v\nwant %v", got, want[:limit])
		}
	})
}
