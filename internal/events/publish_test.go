package events_test

import (
	"cmp"
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/testenv"
)

// counting counts the writes that reach a real store.
type counting struct {
	coord.Store
	writes atomic.Int64
}

func (c *counting) Txn(ctx context.Context, conds []coord.Cond, ops []coord.Op) ([]int64, error) {
	c.writes.Add(1)
	return c.Store.Txn(ctx, conds, ops)
}

func (c *counting) Update(ctx context.Context, key string, value []byte, v int64) (coord.KV, error) {
	c.writes.Add(1)
	return c.Store.Update(ctx, key, value, v)
}

func (c *counting) Create(ctx context.Context, key string, value []byte, opts ...coord.OpOption) (coord.KV, error) {
	c.writes.Add(1)
	return c.Store.Create(ctx, key, value, opts...)
}

// TestPublishBursts: a burst of events (audited calls under load) reaches
// the store's ring complete and in order, in far fewer writes than events;
// a restarted recorder, which does not know the ring's slots, still
// publishes correctly.
func TestPublishBursts(t *testing.T) {
	for _, b := range testenv.Backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			store := &counting{Store: b.Open(t)}
			journal := filepath.Join(t.TempDir(), "events.jsonl")
			for round, n := range []int{300, 300} {
				r, err := events.Open(journal, "n1", "/taskd")
				if err != nil {
					t.Fatal(err)
				}
				before := store.writes.Load()
				for i := range n {
					r.Record("audit", "call", map[string]string{"i": string(rune('a' + i%26))})
				}
				ctx, cancel := context.WithCancel(context.Background())
				var wg sync.WaitGroup
				wg.Add(1)
				go func() { defer wg.Done(); r.Run(ctx, store) }()
				var got []events.Event
				total := 300*min(round, 1) + n
				wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
				// A ZooKeeper listing is not a snapshot (children first,
				// then each value): one taken while the last batch lands
				// can show the last event with earlier slots still old.
				// Wait for the whole ring, then check it.
				err = testenv.WaitFor(wctx, 20*time.Millisecond, func() bool {
					got, _ = rings(t, store).Read(wctx, []string{"n1"})
					slices.SortFunc(got, func(a, b events.Event) int { return cmp.Compare(a.Seq, b.Seq) })
					return len(got) == min(total, events.RingSize) && got[len(got)-1].Seq == uint64(total)
				})
				wcancel()
				cancel()
				wg.Wait()
				r.Close()
				if err != nil {
					t.Fatalf("round %d: the ring never got the last event; it has %d", round, len(got))
				}
				if len(got) != min(total, events.RingSize) {
					t.Fatalf("round %d: ring holds %d events, want %d", round, len(got), min(total, events.RingSize))
				}
				for i := 1; i < len(got); i++ {
					if got[i].Seq != got[i-1].Seq+1 {
						t.Fatalf("round %d: ring out of order at %d: %d after %d", round, i, got[i].Seq, got[i-1].Seq)
					}
				}
				writes := store.writes.Load() - before
				t.Logf("round %d: %d events in %d store writes", round, n, writes)
				if round == 0 && writes > int64(n/8) {
					t.Fatalf("round %d: %d events took %d store writes; a burst should be batched", round, n, writes)
				}
			}
		})
	}
}

// TestPublishAfterWipe: when the ring's slots vanish under a running
// recorder (someone deleted them), the batch that expected them fails and
// the events are written one by one instead: none is lost.
func TestPublishAfterWipe(t *testing.T) {
	b := testenv.Backends(t)[0]
	store := b.Open(t)
	r, err := events.Open(filepath.Join(t.TempDir(), "events.jsonl"), "n1", "/taskd")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); r.Run(ctx, store) }()
	defer func() { cancel(); wg.Wait() }()
	ring := func(want int) []events.Event {
		t.Helper()
		var got []events.Event
		wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer wcancel()
		if err := testenv.WaitFor(wctx, 20*time.Millisecond, func() bool {
			got, _ = rings(t, store).Read(wctx, []string{"n1"})
			return len(got) == want
		}); err != nil {
			t.Fatalf("ring holds %d events, want %d", len(got), want)
		}
		return got
	}
	// A full ring: every slot is known to exist.
	for range events.RingSize {
		r.Record("audit", "first burst", nil)
	}
	for _, e := range ring(events.RingSize) {
		if err := store.Delete(ctx, ringSlot(t, e.Seq), 0); err != nil {
			t.Fatal(err)
		}
	}
	ring(0)
	for range 100 {
		r.Record("audit", "second burst", nil)
	}
	for _, e := range ring(100) {
		if e.Message != "second burst" || e.Seq <= events.RingSize {
			t.Fatalf("after the wipe: %+v", e)
		}
	}
}

// ringSlot is the store key of event seq in n1's ring.
func ringSlot(t *testing.T, seq uint64) string {
	t.Helper()
	dir, err := events.Dir("/taskd", "n1")
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%s/%03d", dir, seq%events.RingSize)
}

// rings is the event rings under /taskd in store.
func rings(t *testing.T, store coord.Store) *events.Rings {
	t.Helper()
	root, err := keys.NewRoot("/taskd")
	if err != nil {
		t.Fatal(err)
	}
	return events.NewRings(store, root)
}
