// Package events is the cluster's lifecycle timeline. A component records
// an event by logging a line with its kind's attribute (Kind.Attr, an
// "event" attribute: the log line is the one place a state transition is
// told); Tap copies such lines into the
// node's Recorder. The recorder keeps them in a local journal in the data
// directory, which survives a coordinator outage, and publishes them to a
// bounded ring per node in the coordination store. Readers merge both.
//
// Recording never waits for a disk or a store: the log handler only queues
// the event, on two bounded queues, and counts what it had to drop when a
// queue was full (Dropped). RunJournal writes and rotates the journal; Run
// publishes to the store.
package events

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/taskd/taskd/internal/backoff"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/keys"
)

// Event is one entry of the timeline.
type Event struct {
	Time    time.Time         `json:"time"`
	Node    string            `json:"node"`
	Seq     uint64            `json:"seq"`
	Type    Kind              `json:"type"`
	Message string            `json:"message"`
	Attrs   map[string]string `json:"attrs,omitempty"`
}

// Limits of the two stores.
const (
	// RingSize is how many events each node keeps in the store.
	RingSize = 500
	// journalMax is how many lines the local journal grows to before it
	// is cut back to journalKeep.
	journalMax  = 20000
	journalKeep = 10000
	// queueSize bounds the events waiting for the store.
	queueSize = 1024
	// journalQueueSize bounds the events waiting for the journal writer.
	journalQueueSize = 4096
)

// Recorder keeps one node's events.
type Recorder struct {
	node string
	path string
	lay  keys.Events

	// qmu orders sequence numbers and queueing; it is never held across
	// I/O, so the log handler never waits for a disk.
	qmu     sync.Mutex
	seq     uint64
	queue   chan Event // to the store (Run)
	journal chan Event // to the journal file (RunJournal)
	// Events dropped because a queue was full.
	journalDrops, storeDrops atomic.Uint64

	// mu guards the journal file.
	mu    sync.Mutex
	lines int
	f     *os.File
}

// Open opens (or creates) the journal at path for node; root is the
// store directory of the cluster (/taskd).
func Open(path, node, root string) (*Recorder, error) {
	rt, err := keys.NewRoot(root)
	if err != nil {
		return nil, err
	}
	if _, err := rt.Events().RingDir(node); err != nil {
		return nil, err
	}
	r := &Recorder{node: node, path: path, lay: rt.Events(), queue: make(chan Event, queueSize), journal: make(chan Event, journalQueueSize)}
	old, err := readJournal(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	for _, e := range old {
		r.seq = max(r.seq, e.Seq)
	}
	r.lines = len(old)
	if r.lines > journalMax {
		if err := r.rewrite(old[len(old)-journalKeep:]); err != nil {
			return nil, err
		}
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("event journal: %w", err)
	}
	r.f = f
	return r, nil
}

func (r *Recorder) rewrite(keep []Event) error {
	tmp := r.path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("event journal: %w", err)
	}
	w := bufio.NewWriter(f)
	for _, e := range keep {
		b, _ := json.Marshal(e)
		w.Write(append(b, '\n'))
	}
	if err := errors.Join(w.Flush(), f.Close()); err != nil {
		return fmt.Errorf("event journal: %w", err)
	}
	r.lines = len(keep)
	return os.Rename(tmp, r.path)
}

// trimLocked cuts the journal back to its newest journalKeep lines. A
// failure is not logged (a log line here could be an event, queued for this
// very writer): the journal then grows until the next try, and the log
// lines themselves are intact.
func (r *Recorder) trimLocked() {
	all, err := readJournal(r.path)
	if err != nil || len(all) <= journalKeep {
		return
	}
	if err := r.rewrite(all[len(all)-journalKeep:]); err != nil {
		return
	}
	if f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_APPEND, 0o640); err == nil {
		r.f.Close()
		r.f = f
	}
}

// Close writes the events still queued for the journal and closes it. Call
// it after RunJournal has returned.
func (r *Recorder) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.flushLocked(nil)
	return r.f.Close()
}

// Record queues an event for the journal and for the store. It never
// waits: an event that finds a queue full is dropped there and counted
// (the log line itself still exists).
func (r *Recorder) Record(typ Kind, msg string, attrs map[string]string) {
	r.qmu.Lock()
	defer r.qmu.Unlock()
	r.seq++
	e := Event{Time: time.Now().UTC(), Node: r.node, Seq: r.seq, Type: typ, Message: msg, Attrs: attrs}
	select {
	case r.journal <- e:
	default: // the journal writer is stalled (slow or hung disk)
		r.journalDrops.Add(1)
	}
	select {
	case r.queue <- e:
	default: // the store is far behind; the journal still has it
		r.storeDrops.Add(1)
	}
}

// Dropped returns how many events found the journal's queue, and the
// store's, full and were left out there.
func (r *Recorder) Dropped() (journal, store uint64) {
	return r.journalDrops.Load(), r.storeDrops.Load()
}

// ReportDrops logs, once per interval, how many events were dropped in it
// (Dropped), until ctx ends. An interval without drops logs nothing. The
// line carries no "event" attribute: it is about the timeline, not in it.
func (r *Recorder) ReportDrops(ctx context.Context, every time.Duration, log *slog.Logger) error {
	t := time.NewTicker(every)
	defer t.Stop()
	r.reportDrops(ctx, t.C, every, log)
	return nil
}

// reportDrops is ReportDrops on the given ticks.
func (r *Recorder) reportDrops(ctx context.Context, ticks <-chan time.Time, every time.Duration, log *slog.Logger) {
	var lastJournal, lastStore uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticks:
		}
		journal, store := r.Dropped()
		if journal == lastJournal && store == lastStore {
			continue
		}
		log.Warn("events were dropped: a queue was full (a slow disk for the journal, a slow store for the ring); the log lines still exist",
			"journal_dropped", journal-lastJournal, "store_dropped", store-lastStore, "interval", every,
			"journal_dropped_total", journal, "store_dropped_total", store)
		lastJournal, lastStore = journal, store
	}
}

// RunJournal writes queued events to the journal, and cuts it back when it
// grows too long, until ctx ends. Events queued after it returns are
// written by Close.
func (r *Recorder) RunJournal(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case e := <-r.journal:
			r.mu.Lock()
			r.flushLocked(&e)
			r.mu.Unlock()
		}
	}
}

// flushLocked appends first (if not nil) and every event queued for the
// journal, in one write. Best effort: the log lines exist too.
func (r *Recorder) flushLocked(first *Event) {
	var buf []byte
	n := 0
	add := func(e Event) {
		b, _ := json.Marshal(e)
		buf = append(append(buf, b...), '\n')
		n++
	}
	if first != nil {
		add(*first)
	}
	for more := true; more; {
		select {
		case e := <-r.journal:
			add(e)
		default:
			more = false
		}
	}
	if n == 0 {
		return
	}
	_, _ = r.f.Write(buf)
	r.lines += n
	if r.lines > journalMax {
		r.trimLocked()
	}
}

// Local reads the local journal, after writing the events still queued for
// it (so a reader sees every event recorded before it asked, unless one
// was dropped).
func (r *Recorder) Local() ([]Event, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.flushLocked(nil)
	return readJournal(r.path)
}

func readJournal(p string) ([]Event, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Event
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e Event
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			out = append(out, e)
		}
	}
	return out, sc.Err()
}

// Run publishes queued events to the store until ctx ends, retrying while
// the store is unavailable. Events queued together (a burst: many audited
// calls, a fence and its consequences) go in one transaction of up to
// publishBatch writes, so the timeline costs the store one write per burst,
// not one per event.
func (r *Recorder) Run(ctx context.Context, kv coord.Store) {
	retry := backoff.New(100*time.Millisecond, 5*time.Second)
	known := map[string]bool{} // ring slots known to exist in the store
	for {
		var batch []Event
		if len(known) == 0 {
			r.learnSlots(ctx, kv, known)
		}
		select {
		case <-ctx.Done():
			return
		case e := <-r.queue:
			batch = append(batch, e)
		}
	more:
		for len(batch) < publishBatch {
			select {
			case e := <-r.queue:
				batch = append(batch, e)
			default:
				break more
			}
		}
		for {
			err := r.publish(ctx, kv, batch, known)
			if err == nil || ctx.Err() != nil {
				retry.Reset()
				break
			}
			if retry.Wait(ctx) != nil {
				return
			}
		}
	}
}

// learnSlots notes which ring slots a previous run left in the store, so
// that a batch can overwrite them in one transaction. Best effort: publish
// falls back to one event at a time when it guessed wrong.
func (r *Recorder) learnSlots(ctx context.Context, kv coord.Store, known map[string]bool) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	dir, err := r.lay.RingDir(r.node)
	if err != nil {
		return
	}
	kvs, err := kv.List(ctx, dir)
	if err != nil {
		return
	}
	for _, k := range kvs {
		known[k.Key] = true
	}
}

// publishBatch bounds the writes of one transaction (etcd allows 128).
const publishBatch = 64

// slot is the ring slot of event seq. Open checked the node name, and a
// slot below RingSize is valid, so an error here is a bug.
func (r *Recorder) slot(seq uint64) (string, error) {
	return r.lay.SlotKey(r.node, int(seq%RingSize))
}

// publish writes batch to the ring: in one transaction when every slot's
// existence is known, else (and if that transaction fails because a slot
// was not as thought) one event at a time.
func (r *Recorder) publish(ctx context.Context, kv coord.Store, batch []Event, known map[string]bool) error {
	if len(batch) > 1 {
		ops := make([]coord.Op, 0, len(batch))
		for _, e := range batch {
			b, _ := json.Marshal(e)
			k, err := r.slot(e.Seq)
			if err != nil {
				continue // Open checked the node; a slot below RingSize is valid
			}
			if known[k] {
				ops = append(ops, coord.PutOp(k, b))
			} else {
				ops = append(ops, coord.CreateOp(k, b, nil))
			}
		}
		tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := kv.Txn(tctx, nil, ops)
		cancel()
		if err == nil {
			for _, op := range ops {
				known[op.Key] = true
			}
			return nil
		}
		if !errors.Is(err, coord.ErrConflict) && !errors.Is(err, coord.ErrNotFound) && !errors.Is(err, coord.ErrExists) {
			return err
		}
	}
	for _, e := range batch {
		k, err := r.slot(e.Seq)
		if err != nil {
			continue // as above
		}
		if err := put(ctx, kv, k, e); err != nil {
			return err
		}
		known[k] = true
	}
	return nil
}

func put(ctx context.Context, kv coord.Store, key string, e Event) error {
	b, _ := json.Marshal(e)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := kv.Update(ctx, key, b, 0); !errors.Is(err, coord.ErrNotFound) {
		return err
	}
	_, err := kv.Create(ctx, key, b)
	return err
}

// Merge orders events by time, without duplicates (same node and seq).
func Merge(lists ...[]Event) []Event {
	return MergeFunc(slices.Concat(lists...), func(e Event) (string, uint64, time.Time) { return e.Node, e.Seq, e.Time })
}

// MergeFunc is Merge for any representation of an event; key gives its
// node, sequence and time.
func MergeFunc[E any](in []E, key func(E) (node string, seq uint64, t time.Time)) []E {
	type id struct {
		node string
		seq  uint64
	}
	seen := map[id]bool{}
	var out []E
	for _, e := range in {
		n, s, _ := key(e)
		if !seen[id{n, s}] {
			seen[id{n, s}] = true
			out = append(out, e)
		}
	}
	slices.SortStableFunc(out, func(a, b E) int {
		an, as, at := key(a)
		bn, bs, bt := key(b)
		if c := at.Compare(bt); c != 0 {
			return c
		}
		return cmp.Or(cmp.Compare(an, bn), cmp.Compare(as, bs))
	})
	return out
}

// Tap returns a handler that passes every record to next and records
// those with an "event" attribute.
func Tap(next slog.Handler, r *Recorder) slog.Handler { return &tap{next: next, r: r} }

type tap struct {
	next  slog.Handler
	r     *Recorder
	attrs []slog.Attr
}

// Enabled lets info lines through even when the log level is higher: the
// timeline (audit above all) must not depend on --log-level. Debug lines
// keep the cheap path.
func (t *tap) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || t.next.Enabled(ctx, l)
}

func (t *tap) Handle(ctx context.Context, rec slog.Record) error {
	// Most lines are not events: look for the attribute before building
	// anything.
	var typ Kind
	find := func(a slog.Attr) bool {
		if a.Key == attrKey {
			typ = Kind(a.Value.String())
			return false
		}
		return true
	}
	for _, a := range t.attrs {
		find(a)
	}
	rec.Attrs(find)
	if typ != "" {
		attrs := map[string]string{}
		add := func(a slog.Attr) bool {
			if a.Key != attrKey && a.Key != "node" {
				attrs[a.Key] = a.Value.String()
			}
			return true
		}
		for _, a := range t.attrs {
			add(a)
		}
		rec.Attrs(add)
		t.r.Record(typ, rec.Message, attrs)
	}
	if !t.next.Enabled(ctx, rec.Level) {
		return nil
	}
	return t.next.Handle(ctx, rec)
}

func (t *tap) WithAttrs(as []slog.Attr) slog.Handler {
	return &tap{next: t.next.WithAttrs(as), r: t.r, attrs: append(slices.Clone(t.attrs), as...)}
}

func (t *tap) WithGroup(name string) slog.Handler {
	return &tap{next: t.next.WithGroup(name), r: t.r, attrs: t.attrs}
}
