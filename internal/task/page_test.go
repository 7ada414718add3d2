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
