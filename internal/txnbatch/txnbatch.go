// Package txnbatch joins concurrent conditional store transactions into
// one (group commit). A runner with hundreds of tasks writes hundreds of
// checkpoints a second, each its own transaction; every one costs the
// store a consensus round, a log entry and a request. Joined, they cost
// one each per batch; the conditions and writes stay those of each
// caller.
//
// A batch commits all of its writes or none: the store checks every
// caller's conditions at one point, so a committed batch is exactly what
// the callers' own transactions would have done in some order. When a
// batch fails on a condition (one caller's record moved, one session
// ended), each of its transactions is run again alone, so each caller
// gets its own answer.
//
// A request joins a batch only if it writes no key the batch writes or
// whose version it compares, and compares no key the batch writes.
//
// There is no timer: while one batch is in the store, the transactions
// that arrive wait and form the next. A lone caller waits for nothing.
package txnbatch

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/taskd/taskd/internal/coord"
)

// Func is a store transaction: every condition must hold, then every op
// is applied; it returns each op's new version.
type Func func(ctx context.Context, conds []coord.Cond, ops []coord.Op) ([]int64, error)

// MaxSize is the most conditions plus ops one batch holds: etcd refuses a
// transaction with more than --max-txn-ops (default 128) comparisons, and
// each op of a Func adds one.
const MaxSize = 120

// MaxBytes is the most bytes of keys and values one batch carries: a
// ZooKeeper server drops the connection of a request larger than its
// jute.maxbuffer (1 MiB by default), and etcd refuses one larger than
// --max-request-bytes (1.5 MiB). A single larger transaction goes alone,
// as it would without the batcher.
const MaxBytes = 256 << 10

// queueSize is how many transactions wait for the next batch without
// blocking their callers.
const queueSize = 1024

// ErrStopped: the batcher no longer runs (its Run returned).
var ErrStopped = errors.New("txnbatch: stopped")

// Batcher joins the transactions given to Txn while Run runs.
type Batcher struct {
	// Observe, when set before the first Txn, is called after each store
	// transaction that committed: with how many calls it carried, and
	// whether they were joined (false: one call alone).
	Observe func(calls int, joined bool)

	txn      Func
	max      int
	maxBytes int
	reqs     chan *request
	stopped  chan struct{}
	stop     sync.Once

	batches, joined, alone atomic.Int64
}

type request struct {
	ctx   context.Context
	conds []coord.Cond
	ops   []coord.Op
	bytes int         // of the ops' keys and values
	done  chan result // buffered: the batcher never waits for a caller
}

type result struct {
	vers []int64
	err  error
}

// New returns a Batcher over txn whose batches hold at most max conditions
// plus ops (MaxSize if max <= 0).
func New(txn Func, max int) *Batcher {
	if max <= 0 {
		max = MaxSize
	}
	return &Batcher{txn: txn, max: max, maxBytes: MaxBytes, reqs: make(chan *request, queueSize), stopped: make(chan struct{})}
}

// Stats are the store transactions a Batcher made: batches of more than
// one, the transactions they joined, and those run alone (a lone one, or
// one run again after its batch failed).
type Stats struct{ Batches, Joined, Alone int64 }

// Stats returns the counts so far.
func (b *Batcher) Stats() Stats {
	return Stats{Batches: b.batches.Load(), Joined: b.joined.Load(), Alone: b.alone.Load()}
}

// Txn is a Func: it hands the transaction to the batcher and waits for its
// answer. If ctx ends first it returns ctx's error; the transaction may
// still commit, as a store transaction whose caller gave up may.
func (b *Batcher) Txn(ctx context.Context, conds []coord.Cond, ops []coord.Op) ([]int64, error) {
	r := &request{ctx: ctx, conds: conds, ops: ops, done: make(chan result, 1)}
	for _, op := range ops {
		r.bytes += len(op.Key) + len(op.Value)
	}
	select {
	case b.reqs <- r:
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	case <-b.stopped:
		return nil, ErrStopped
	}
	select {
	case res := <-r.done:
		return res.vers, res.err
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	case <-b.stopped:
		// Run answers every batch it took before it returns: an answer
		// may be here already; a request still queued was never sent.
		select {
		case res := <-r.done:
			return res.vers, res.err
		default:
			return nil, ErrStopped
		}
	}
}

// Run batches until ctx ends. A batch in the store when ctx ends is
// finished (its callers get their answers); Txn calls after that get
// ErrStopped.
func (b *Batcher) Run(ctx context.Context) {
	defer b.stop.Do(func() { close(b.stopped) })
	var next *request
	for {
		if next == nil {
			select {
			case <-ctx.Done():
				return
			case next = <-b.reqs:
			}
		}
		if gaveUp(next) {
			next = nil
			continue
		}
		batch, size, bytes := []*request{next}, len(next.conds)+len(next.ops), next.bytes
		keys := touched{}
		keys.add(next)
		next = nil
	gather:
		for size < b.max && bytes < b.maxBytes {
			select {
			case r := <-b.reqs:
				if gaveUp(r) {
					continue
				}
				n := len(r.conds) + len(r.ops)
				if size+n > b.max || bytes+r.bytes > b.maxBytes || keys.overlap(r) {
					next = r // the first of the next batch
					break gather
				}
				batch, size, bytes = append(batch, r), size+n, bytes+r.bytes
				keys.add(r)
			default:
				break gather
			}
		}
		b.commit(batch)
	}
}

// gaveUp answers a request whose caller has already given up (its time
// in the queue counts against its deadline) instead of sending it: sent
// with a live batch, it would commit after its caller had gone on, and a
// retry of the same write would then fail on its own stale copy.
func gaveUp(r *request) bool {
	if r.ctx.Err() == nil {
		return false
	}
	r.done <- result{err: context.Cause(r.ctx)}
	return true
}

// touched are the keys a batch writes and the keys its conditions read.
// A request joins only if it writes none of them and its conditions read
// none of the keys written: then the batch is what the requests would do
// one at a time, in any order (etcd also refuses a key written twice).
type touched struct{ written, read map[string]bool }

func (t *touched) add(r *request) {
	if t.written == nil {
		t.written, t.read = map[string]bool{}, map[string]bool{}
	}
	for _, op := range r.ops {
		t.written[op.Key] = true
	}
	for _, c := range r.conds {
		t.read[c.Key] = true
	}
}

func (t *touched) overlap(r *request) bool {
	for _, op := range r.ops {
		if t.written[op.Key] || t.read[op.Key] {
			return true
		}
	}
	for _, c := range r.conds {
		if t.written[c.Key] {
			return true
		}
	}
	return false
}

// commit runs the batch as one store transaction, or each alone.
func (b *Batcher) commit(batch []*request) {
	if len(batch) == 1 {
		b.runAlone(batch[0])
		return
	}
	var conds []coord.Cond
	var ops []coord.Op
	for _, r := range batch {
		conds = append(conds, r.conds...)
		ops = append(ops, r.ops...)
	}
	ctx, cancel := batchContext(batch)
	vers, err := b.txn(ctx, conds, ops)
	cancel()
	switch {
	case err == nil && len(vers) != len(ops):
		// Committed, but the answer cannot be shared out: never run
		// these writes again.
		err = fmt.Errorf("txnbatch: the store answered %d versions for %d ops", len(vers), len(ops))
		for _, r := range batch {
			r.done <- result{err: err}
		}
		return
	case err == nil:
		b.batches.Add(1)
		b.joined.Add(int64(len(batch)))
		if b.Observe != nil {
			b.Observe(len(batch), true)
		}
		for _, r := range batch {
			r.done <- result{vers: vers[:len(r.ops):len(r.ops)]}
			vers = vers[len(r.ops):]
		}
		return
	case errors.Is(err, coord.ErrUnavailable):
		// The store is away: each alone would fail the same way, and the
		// callers retry as they do for their own transactions.
		for _, r := range batch {
			r.done <- result{err: err}
		}
		return
	}
	// A condition failed (or the batch was refused): each transaction
	// again, alone and at once, so each caller gets its own answer.
	var wg sync.WaitGroup
	for _, r := range batch {
		if gaveUp(r) {
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); b.runAlone(r) }()
	}
	wg.Wait()
}

func (b *Batcher) runAlone(r *request) {
	b.alone.Add(1)
	vers, err := b.txn(r.ctx, r.conds, r.ops)
	if err == nil && b.Observe != nil {
		b.Observe(1, false)
	}
	r.done <- result{vers: vers, err: err}
}

// batchContext ends once every caller of the batch has given up (its
// context ended: a deadline, a session lost), not when the first one
// does: the others still want their writes.
func batchContext(batch []*request) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(batch[0].ctx))
	var left atomic.Int64
	left.Store(int64(len(batch)))
	stops := make([]func() bool, len(batch))
	for i, r := range batch {
		stops[i] = context.AfterFunc(r.ctx, func() {
			if left.Add(-1) == 0 {
				cancel()
			}
		})
	}
	return ctx, func() {
		for _, stop := range stops {
			stop()
		}
		cancel()
	}
}
