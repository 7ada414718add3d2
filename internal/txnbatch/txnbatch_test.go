package txnbatch

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/testenv"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// onStores runs test on a real etcd and a real ZooKeeper.
func onStores(t *testing.T, test func(t *testing.T, st coord.Store)) {
	for _, be := range testenv.Backends(t) {
		t.Run(be.Name, func(t *testing.T) { test(t, be.Open(t)) })
	}
}

// gated counts the store transactions and holds the first one until the
// test lets it go, so that the transactions sent meanwhile queue for the
// next batch.
type gated struct {
	st      coord.Store
	entered chan struct{} // closed when the first store transaction is held
	release chan struct{}
	once    sync.Once
	mu      sync.Mutex
	calls   []int // ops per store transaction
	dup     []string
}

func (g *gated) txn(ctx context.Context, conds []coord.Cond, ops []coord.Op) ([]int64, error) {
	g.once.Do(func() { close(g.entered); <-g.release })
	g.mu.Lock()
	g.calls = append(g.calls, len(ops))
	seen := map[string]bool{}
	for _, op := range ops {
		if seen[op.Key] {
			g.dup = append(g.dup, op.Key)
		}
		seen[op.Key] = true
	}
	g.mu.Unlock()
	return g.st.Txn(ctx, conds, ops)
}

func (g *gated) opsPerCall() []int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]int(nil), g.calls...)
}

var fixtures atomic.Int64

// fixture: n keys in the store, and a batcher over a gated store
// transaction, running until the test ends.
func fixture(t *testing.T, st coord.Store, n, max int) (*Batcher, *gated, []coord.KV) {
	t.Helper()
	ctx := context.Background()
	set := fixtures.Add(1)
	kvs := make([]coord.KV, n)
	for i := range kvs {
		kv, err := st.Create(ctx, fmt.Sprintf("/taskd/txnbatch/%s/%d/k%03d", t.Name(), set, i), []byte("0"))
		if err != nil {
			t.Fatal(err)
		}
		kvs[i] = kv
	}
	g := &gated{st: st, entered: make(chan struct{}), release: make(chan struct{})}
	b := New(g.txn, max)
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); b.Run(rctx) }()
	t.Cleanup(func() { stop(); <-done })
	return b, g, kvs
}

type call struct {
	conds []coord.Cond
	ops   []coord.Op
	ctx   context.Context // the caller's, if not the test's
}

type answer struct {
	vers []int64
	err  error
}

// send makes the calls at once: the first is held in the store, the rest
// queue behind it; then queued runs, and the first is let go.
func send(t *testing.T, b *Batcher, g *gated, calls []call, queued ...func()) []answer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := make([]answer, len(calls))
	var wg sync.WaitGroup
	run := func(i int) {
		defer wg.Done()
		c := ctx
		if calls[i].ctx != nil {
			c = calls[i].ctx
		}
		v, err := b.Txn(c, calls[i].conds, calls[i].ops)
		out[i] = answer{v, err}
	}
	wg.Add(len(calls))
	go run(0)
	select {
	case <-g.entered:
	case <-ctx.Done():
		t.Fatal("the first transaction never reached the store")
	}
	for i := 1; i < len(calls); i++ {
		go run(i)
	}
	if err := waitFor(ctx, func() bool { return len(b.reqs) == len(calls)-1 }); err != nil {
		t.Fatalf("%d of %d transactions queued: %v", len(b.reqs), len(calls)-1, err)
	}
	for _, f := range queued {
		f()
	}
	close(g.release)
	wg.Wait()
	return out
}

// waitFor checks cond every millisecond until it holds or ctx ends.
func waitFor(ctx context.Context, cond func() bool) error {
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// puts is a conditional write of v to each key, at its version.
func puts(kvs []coord.KV, v string) []call {
	out := make([]call, len(kvs))
	for i, kv := range kvs {
		out[i] = put(kv, v)
	}
	return out
}

func put(kv coord.KV, v string) call {
	return call{conds: []coord.Cond{coord.VersionIs(kv.Key, kv.Version)}, ops: []coord.Op{coord.PutOp(kv.Key, []byte(v))}}
}

// TestJoins: calls that queue behind a store transaction go to the store
// as one; each caller gets the versions of its own ops, and the store
// holds every write at the version its caller was given. Calls write two
// keys each (a runner's write is a record and its log), and the keys
// start at different versions, so that on ZooKeeper (a version per key)
// a caller given another's versions fails.
func TestJoins(t *testing.T) {
	onStores(t, func(t *testing.T, st coord.Store) {
		ctx := context.Background()
		b, g, kvs := fixture(t, st, 41, 0)
		for i := range kvs {
			for range i % 3 {
				kv, err := st.Update(ctx, kvs[i].Key, []byte("bump"), kvs[i].Version)
				if err != nil {
					t.Fatal(err)
				}
				kvs[i] = kv
			}
		}
		var mu sync.Mutex
		var seen []string
		b.Observe = func(calls int, joined bool) {
			mu.Lock()
			defer mu.Unlock()
			seen = append(seen, fmt.Sprint(calls, map[bool]string{true: " joined", false: " alone"}[joined]))
		}
		observed := func() []string { mu.Lock(); defer mu.Unlock(); return slices.Clone(seen) }
		// Call 0 writes key 0 (held); call i writes keys 2i-1 and 2i.
		calls := []call{put(kvs[0], "v0")}
		for i := 1; i < len(kvs); i += 2 {
			a, b := put(kvs[i], fmt.Sprint("v", i)), put(kvs[i+1], fmt.Sprint("v", i+1))
			calls = append(calls, call{conds: append(a.conds, b.conds...), ops: append(a.ops, b.ops...)})
		}
		out := send(t, b, g, calls)
		key := 0
		for i, a := range out {
			if a.err != nil || len(a.vers) != len(calls[i].ops) {
				t.Fatalf("call %d: %v %v", i, a.vers, a.err)
			}
			for j, v := range a.vers {
				got, err := st.Get(ctx, kvs[key].Key)
				if err != nil || string(got.Value) != fmt.Sprint("v", key) || got.Version != v {
					t.Fatalf("call %d op %d: the store holds %q at version %d (%v); the caller was given %d", i, j, got.Value, got.Version, err, v)
				}
				key++
			}
		}
		// The first alone (held), the 20 that queued in one.
		if calls := g.opsPerCall(); len(calls) != 2 || calls[1] != 40 {
			t.Fatalf("store transactions with %v ops; want [1 40]", calls)
		}
		if s := b.Stats(); s != (Stats{Batches: 1, Joined: 20, Alone: 1}) {
			t.Fatalf("stats %+v", s)
		}
		if seen := observed(); !slices.Equal(seen, []string{"1 alone", "20 joined"}) {
			t.Fatalf("observed %v", seen)
		}
	})
}

// TestGaveUpNotSent: a call whose caller gave up while it waited in the
// queue is not sent; the others are.
func TestGaveUpNotSent(t *testing.T) {
	onStores(t, func(t *testing.T, st coord.Store) {
		b, g, kvs := fixture(t, st, 4, 0)
		calls := puts(kvs, "w")
		gone, cancel := context.WithCancel(context.Background())
		defer cancel()
		calls[2].ctx = gone
		out := send(t, b, g, calls, cancel) // given up once queued
		if !errors.Is(out[2].err, context.Canceled) {
			t.Fatalf("the call whose caller gave up: %v", out[2].err)
		}
		for i, kv := range kvs {
			got, err := st.Get(context.Background(), kv.Key)
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]string{true: "0", false: "w"}[i == 2]; string(got.Value) != want {
				t.Fatalf("key %d holds %q, want %q", i, got.Value, want)
			}
		}
		if calls := g.opsPerCall(); !slices.Equal(calls, []int{1, 2}) {
			t.Fatalf("store transactions with %v ops; want [1 2]", calls)
		}
	})
}

// TestConditionFailsOne: one call's condition fails; the batch fails in
// the store, and each call runs again alone: that one gets a conflict,
// the others are written.
func TestConditionFailsOne(t *testing.T) {
	onStores(t, func(t *testing.T, st coord.Store) {
		b, g, kvs := fixture(t, st, 6, 0)
		calls := puts(kvs, "b")
		stale := kvs[3]
		stale.Version-- // never the key's version: its condition fails
		calls[3] = put(stale, "stale")
		out := send(t, b, g, calls)
		for i, a := range out {
			got, err := st.Get(context.Background(), kvs[i].Key)
			if err != nil {
				t.Fatal(err)
			}
			if i == 3 {
				if !errors.Is(a.err, coord.ErrConflict) || string(got.Value) != "0" {
					t.Fatalf("the stale call: %v, the store holds %q; want a conflict and no write", a.err, got.Value)
				}
				continue
			}
			if a.err != nil || got.Version != a.vers[0] || string(got.Value) == "0" {
				t.Fatalf("call %d: %v %v; the store holds %q at %d", i, a.vers, a.err, got.Value, got.Version)
			}
		}
		// Held alone, the batch of five refused, then the five alone.
		if s := b.Stats(); s != (Stats{Batches: 0, Joined: 0, Alone: 6}) {
			t.Fatalf("stats %+v; want 6 alone", s)
		}
		if calls := g.opsPerCall(); len(calls) != 7 || calls[1] != 5 {
			t.Fatalf("store transactions with %v ops; want the held one, the batch of 5, then 5 alone", calls)
		}
	})
}

// TestSplits: a batch never writes a key twice (etcd refuses it) and
// stays within its size; the rest forms the next batch.
func TestSplits(t *testing.T) {
	onStores(t, func(t *testing.T, st coord.Store) {
		// 10: every queued call would fit in one batch, but for the
		// key written twice.
		b, g, kvs := fixture(t, st, 8, 10)
		calls := puts(kvs[:5], "y")
		// Two writes of one key, with no condition: the queue's order
		// decides which is last; they go in two store transactions.
		calls = append(calls, call{ops: []coord.Op{coord.PutOp(kvs[5].Key, []byte("z1"))}},
			call{ops: []coord.Op{coord.PutOp(kvs[5].Key, []byte("z2"))}})
		out := send(t, b, g, calls)
		for i, a := range out {
			if a.err != nil {
				t.Fatalf("call %d: %v", i, a.err)
			}
		}
		calls2 := g.opsPerCall()
		total := 0
		for _, n := range calls2[1:] {

			total += n
		}
		if total != 6 || len(calls2) < 3 {
			t.Fatalf("store transactions with %v ops; want the 6 queued ones in at least two", calls2)
		}
		if len(g.dup) != 0 {
			t.Fatalf("a store transaction wrote %v twice", g.dup)
		}
		if got, err := st.Get(context.Background(), kvs[5].Key); err != nil || (string(got.Value) != "z1" && string(got.Value) != "z2") {
			t.Fatalf("the key written twice holds %q (%v)", got.Value, err)
		}

		// A batch holds at most max conditions and ops: 7 calls of a
		// condition and an op, 6 of them queued, in batches of 3.
		b, g, kvs = fixture(t, st, 7, 6)
		for i, a := range send(t, b, g, puts(kvs, "w")) {
			if a.err != nil {
				t.Fatalf("call %d: %v", i, a.err)
			}
		}
		if calls := g.opsPerCall(); len(calls) != 3 || calls[1] != 3 || calls[2] != 3 {
			t.Fatalf("store transactions with %v ops; want [1 3 3]", calls)
		}

		// And at most maxBytes of keys and values: 5 calls of 1000-byte
		// values, 4 of them queued, in batches of 2.
		b, g, kvs = fixture(t, st, 5, 0)
		b.maxBytes = 2*len(kvs[0].Key) + 2000
		for i, a := range send(t, b, g, puts(kvs, strings.Repeat("v", 1000))) {
			if a.err != nil {
				t.Fatalf("call %d: %v", i, a.err)
			}
		}
		if calls := g.opsPerCall(); len(calls) != 3 || calls[1] != 2 || calls[2] != 2 {
			t.Fatalf("store transactions with %v ops; want [1 2 2]", calls)
		}
	})
}

// TestStopped: once Run has returned, a call gets ErrStopped.
func TestStopped(t *testing.T) {
	b := New(func(context.Context, []coord.Cond, []coord.Op) ([]int64, error) { return nil, nil }, 0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b.Run(ctx)
	if _, err := b.Txn(context.Background(), nil, []coord.Op{coord.PutOp("/k", nil)}); !errors.Is(err, ErrStopped) {
		t.Fatalf("after Run: %v; want ErrStopped", err)
	}
}

// TestGivenUp: a batch in a store that does not answer ends once every
// caller has given up, not when the first does; the batcher then takes
// the next.
func TestGivenUp(t *testing.T) {
	var mu sync.Mutex
	var ended []time.Time // when each store transaction of a batch returned
	entered, release, inStore := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var once sync.Once
	b := New(func(ctx context.Context, _ []coord.Cond, ops []coord.Op) ([]int64, error) {
		if len(ops) == 1 && ops[0].Key == "/first" {
			once.Do(func() { close(entered); <-release })
			return []int64{1}, nil
		}
		if len(ops) == 2 {
			close(inStore)
		}
		<-ctx.Done() // a store that never answers
		mu.Lock()
		ended = append(ended, time.Now())
		mu.Unlock()
		return nil, ctx.Err()
	}, 0)
	rctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); b.Run(rctx) }()
	defer func() { stop(); <-done }()

	go b.Txn(context.Background(), nil, []coord.Op{coord.PutOp("/first", nil)})
	<-entered
	// Two callers without a deadline (cancelled, as a lost session
	// cancels), queued behind the held transaction.
	var wg sync.WaitGroup
	cancels := make([]context.CancelFunc, 2)
	for i := range cancels {
		ctx, cancel := context.WithCancel(context.Background())
		cancels[i] = cancel
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.Txn(ctx, nil, []coord.Op{coord.PutOp(fmt.Sprint("/k", i), nil)})
		}()
	}
	defer func() { // on a failure too
		for _, c := range cancels {
			c()
		}
		wg.Wait()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := waitFor(ctx, func() bool { return len(b.reqs) == 2 }); err != nil {
		t.Fatal(err)
	}
	close(release)
	<-inStore // the two in one batch
	cancels[0]()
	// The first caller has given up: for the next 200 ms the batch must
	// stay in the store (a batch cut short by its first caller ends in
	// microseconds).
	wctx, wcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	err := waitFor(wctx, func() bool { mu.Lock(); defer mu.Unlock(); return len(ended) > 0 })
	wcancel()
	if err == nil {
		t.Fatal("the batch ended when its first caller gave up")
	}
	late := time.Now()
	cancels[1]()
	wg.Wait()
	if err := waitFor(ctx, func() bool { mu.Lock(); defer mu.Unlock(); return len(ended) == 1 }); err != nil {
		t.Fatalf("store transactions that ended: %v (%v)", ended, err)
	}
	mu.Lock()
	end := ended[0]
	mu.Unlock()
	if end.Before(late) {
		t.Fatalf("the batch ended before its second caller gave up")
	}
	if _, err := b.Txn(ctx, nil, []coord.Op{coord.PutOp("/first", nil)}); err != nil {
		t.Fatalf("the batcher after a batch its callers gave up: %v", err)
	}
}
