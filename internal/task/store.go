package task

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/window"
	"golang.org/x/sync/errgroup"
)

// Defaults and limits of task settings.
const (
	DefaultMaxRetries = 3
	MaxMaxRetries     = 100
	MinPriority       = -1000
	MaxPriority       = 1000
	// casRetries bounds a read-modify-write loop that keeps losing races.
	casRetries = 50
	// MaxSpecBytes bounds a spec: records stay small for the store (etcd
	// refuses requests over 1.5 MiB, ZooKeeper nodes over 1 MiB).
	MaxSpecBytes = 64 << 10
)

// Store reads and writes task records. Every node has one; the API, the
// dispatcher and the runner share it.
type Store struct {
	kv     coord.Store
	layout keys.Tasks
	types  Registry
	zone   string
	now    func() time.Time
	// indexReady caches the finished-task index's ready key once seen.
	indexReady atomic.Bool
	// facts of the unfinished tasks, for pages of the newest.
	facts factCache
}

// NewStore binds the layout under root to kv. zone is the default time zone
// of run windows (an IANA name, "UTC" if empty).
func NewStore(kv coord.Store, root string, types Registry, zone string, now func() time.Time) (*Store, error) {
	r, err := keys.NewRoot(root)
	if err != nil {
		return nil, err
	}
	for name := range types {
		if err := keys.ValidTaskType(name); err != nil {
			return nil, fmt.Errorf("task type registry: %w", err)
		}
	}
	if zone == "" {
		zone = "UTC"
	}
	if _, err := time.LoadLocation(zone); err != nil {
		return nil, fmt.Errorf("%w: time zone %q: %w", ErrInvalid, zone, err)
	}
	if now == nil {
		now = time.Now
	}
	return &Store{kv: kv, layout: r.Tasks(), types: types, zone: zone, now: now}, nil
}

// Layout is the store layout in use.
func (s *Store) Layout() keys.Tasks { return s.layout }

// Types is the registry of task types.
func (s *Store) Types() Registry { return s.types }

// rateLimitedTypes names the registered types that take a rate.
func (s *Store) rateLimitedTypes() []string {
	var out []string
	for _, n := range s.types.Names() {
		if _, ok := s.types[n].(RateLimited); ok {
			out = append(out, n)
		}
	}
	return out
}

// Now is the store's clock.
func (s *Store) Now() time.Time { return s.now() }

// CreateRequest is a new task.
type CreateRequest struct {
	Type       string
	Spec       json.RawMessage
	Priority   int
	Node       string
	Window     string // HH:MM-HH:MM, empty for none
	Zone       string // zone of Window; empty: the store's default
	MaxRetries *int   // nil: DefaultMaxRetries

	// ID, when set, is the task's id (a UUID); empty: a random one. A
	// schedule derives it from the schedule and the tick, so that the
	// store refuses a second task for the same tick.
	ID string
	// Schedule and Tick name the schedule and the tick that made the task.
	Schedule string
	Tick     time.Time
	// IdempotencyKey, when set, makes CreateOnce return the task an
	// earlier call with the same key made (see IdempotencyWindow).
	IdempotencyKey string
	// Key, when set, limits how many tasks with this key run at once,
	// cluster-wide: KeyLimit (0: 1).
	Key      string
	KeyLimit int
	// After lists tasks that must end (succeed, under AfterPolicy "" or
	// AfterSucceeded) before this one may start.
	After       []string
	AfterPolicy string
}

// Create validates req and stores a waiting task. Nothing is written when
// req is invalid.
func (s *Store) Create(ctx context.Context, req CreateRequest) (*Record, error) {
	if req.IdempotencyKey != "" {
		r, _, err := s.CreateOnce(ctx, req)
		return r, err
	}
	r, err := s.Prepare(req)
	if err != nil {
		return nil, err
	}
	if err := s.depsExist(ctx, r); err != nil {
		return nil, err
	}
	key, err := s.layout.ActiveKey(r.ID)
	if err != nil {
		return nil, err
	}
	// A transaction of one create: on ZooKeeper, Create also reads the
	// new node back for its creation order, a round trip a task does not
	// need (issue 19). A refused create is tried again as a plain Create,
	// which tells an existing task from a missing parent.
	enc := r.encode()
	vers, err := s.kv.Txn(ctx, nil, []coord.Op{coord.CreateOp(key, enc, nil)})
	if errors.Is(err, coord.ErrConflict) {
		var kv coord.KV
		kv, err = s.kv.Create(ctx, key, enc)
		vers = []int64{kv.Version}
	}
	if err != nil {
		return nil, fmt.Errorf("store task %s: %w", r.ID, err)
	}
	r.version = vers[0]
	return r, nil
}

// Preflight checks req on the node self that receives it, before it is
// created: Prepare's checks, then the type's Preflighter, told whether self
// is the node the task is pinned to. It writes nothing. Create does not
// call it: a schedule's tick creates its task on the leader, which need not
// hold the task's resources.
func (s *Store) Preflight(ctx context.Context, req CreateRequest, self string) error {
	r, err := s.Prepare(req)
	if err != nil {
		return err
	}
	typ, err := s.types.Lookup(r.Type)
	if err != nil {
		return err
	}
	p, ok := typ.(Preflighter)
	if !ok {
		return nil
	}
	return p.Preflight(ctx, r.Spec, self != "" && r.Node == self)
}

// Prepare validates req and returns the waiting record Create would store,
// without writing it; CreateOp writes it inside a caller's transaction.
func (s *Store) Prepare(req CreateRequest) (*Record, error) {
	if err := keys.ValidTaskType(req.Type); err != nil {
		return nil, err
	}
	typ, err := s.types.Lookup(req.Type)
	if err != nil {
		return nil, err
	}
	spec := req.Spec
	if len(spec) == 0 {
		spec = json.RawMessage("{}")
	}
	if len(spec) > MaxSpecBytes {
		return nil, fmt.Errorf("%w: spec of %d bytes is larger than %d", ErrInvalid, len(spec), MaxSpecBytes)
	}
	if !json.Valid(spec) {
		return nil, fmt.Errorf("%w: spec is not valid JSON", ErrInvalid)
	}
	if err := typ.Validate(spec); err != nil {
		return nil, err
	}
	if req.Priority < MinPriority || req.Priority > MaxPriority {
		return nil, fmt.Errorf("%w: priority %d: use %d..%d", ErrInvalid, req.Priority, MinPriority, MaxPriority)
	}
	node := req.Node
	if c, ok := typ.(Constrainer); ok {
		if pinned := c.Node(spec); pinned != "" {
			if node != "" && node != pinned {
				return nil, fmt.Errorf("%w: --node %s conflicts with the spec, which needs node %s", ErrInvalid, node, pinned)
			}
			node = pinned
		}
	}
	if node != "" {
		if err := keys.ValidName(node); err != nil {
			return nil, err
		}
	}
	w, err := s.window(req.Window, req.Zone)
	if err != nil {
		return nil, err
	}
	retries := DefaultMaxRetries
	if req.MaxRetries != nil {
		retries = *req.MaxRetries
	}
	if retries < 0 || retries > MaxMaxRetries {
		return nil, fmt.Errorf("%w: max retries %d: use 0..%d", ErrInvalid, retries, MaxMaxRetries)
	}
	if req.IdempotencyKey != "" {
		if err := keys.ValidIdempotencyKey(req.IdempotencyKey); err != nil {
			return nil, err
		}
	}
	limit, err := keyLimit(req.Key, req.KeyLimit)
	if err != nil {
		return nil, err
	}
	id := req.ID
	if id == "" {
		id = uuid.NewString()
	} else if err := keys.ValidTaskID(id); err != nil {
		return nil, err
	}
	policy, err := checkAfter(id, req.After, req.AfterPolicy)
	if err != nil {
		return nil, err
	}
	now := s.now().UTC()
	r := &Record{
		ID: id, Type: req.Type, Spec: spec, State: Waiting, Priority: req.Priority,
		Node: node, Window: w, MaxRetries: retries, Created: now, Updated: now,
		Schedule: req.Schedule, Tick: req.Tick.UTC(), IdempotencyKey: req.IdempotencyKey,
		Key: req.Key, KeyLimit: limit, After: slices.Clone(req.After), AfterPolicy: policy,
	}
	if req.Tick.IsZero() {
		r.Tick = time.Time{}
	}
	return r, nil
}

// CreateOp is the transaction operation that stores r, as Prepare returned
// it; the transaction fails with coord.ErrConflict if the id exists.
func (s *Store) CreateOp(r *Record) (coord.Op, error) {
	key, err := s.layout.ActiveKey(r.ID)
	if err != nil {
		return coord.Op{}, err
	}
	return coord.CreateOp(key, r.encode(), nil), nil
}

// window validates a window given by a user; "" means none.
func (s *Store) window(spec, zone string) (*Window, error) {
	if spec == "" {
		if zone != "" {
			return nil, fmt.Errorf("%w: a time zone without a window", ErrInvalid)
		}
		return nil, nil
	}
	if zone == "" {
		zone = s.zone
	}
	w := &Window{Spec: spec, Zone: zone}
	if _, err := w.Parse(); err != nil {
		if errors.Is(err, window.ErrInvalid) {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		return nil, err
	}
	return w, nil
}

// Get reads a task, unfinished or finished.
func (s *Store) Get(ctx context.Context, id string) (*Record, error) {
	active, err := s.layout.ActiveKey(id)
	if err != nil {
		return nil, err
	}
	done, err := s.layout.DoneKey(id)
	if err != nil {
		return nil, err
	}
	for _, key := range []string{active, done} {
		kv, err := s.kv.Get(ctx, key)
		if errors.Is(err, coord.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read task %s: %w", id, err)
		}
		return Decode(kv.Key, kv.Value, kv.Version)
	}
	// It may have moved from active to done between the two reads.
	kv, err := s.kv.Get(ctx, done)
	if err == nil {
		return Decode(kv.Key, kv.Value, kv.Version)
	}
	if errors.Is(err, coord.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return nil, fmt.Errorf("read task %s: %w", id, err)
}

// Filter selects tasks for List.
type Filter struct {
	// Status: "" or "all", "unfinished", "finished", or a state name.
	Status string
	Type   string
}

// List returns the tasks that match f, oldest first. Unfinished tasks are
// one directory read; finished ones are a read per shard: every finished
// task is read (ListPage reads a page).
func (s *Store) List(ctx context.Context, f Filter) ([]*Record, error) {
	active, done, state, err := s.parseFilter(f)
	if err != nil {
		return nil, err
	}
	var out []*Record
	keep := func(kvs []coord.KV) error {
		for _, kv := range kvs {
			r, err := Decode(kv.Key, kv.Value, kv.Version)
			if errors.Is(err, ErrInvalid) {
				// Written around taskd (a crafted id): not a task.
				continue
			}
			if err != nil {
				return err
			}
			if (state == "" || r.State == state) && (f.Type == "" || r.Type == f.Type) {
				out = append(out, r)
			}
		}
		return nil
	}
	if active {
		kvs, err := s.kv.List(ctx, s.layout.ActiveDir())
		if err != nil {
			return nil, fmt.Errorf("list tasks: %w", err)
		}
		if err := keep(kvs); err != nil {
			return nil, err
		}
	}
	if done {
		shards, err := s.listShards(ctx)
		if err != nil {
			return nil, err
		}
		for _, kvs := range shards {
			if err := keep(kvs); err != nil {
				return nil, err
			}
		}
	}
	slices.SortFunc(out, func(a, b *Record) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// parseFilter validates f: which of the unfinished and finished tasks it
// reads, and the state it keeps ("" for any).
func (s *Store) parseFilter(f Filter) (active, done bool, state State, err error) {
	switch f.Status {
	case "", "all":
		active, done = true, true
	case "unfinished":
		active = true
	case "finished":
		done = true
	default:
		st, err := ParseState(f.Status)
		if err != nil {
			return false, false, "", fmt.Errorf("%w (or unfinished, finished, all)", err)
		}
		state = st
		active, done = !st.Final(), st.Final()
	}
	if f.Type != "" {
		if err := keys.ValidTaskType(f.Type); err != nil {
			return false, false, "", err
		}
		if _, err := s.types.Lookup(f.Type); err != nil {
			return false, false, "", err
		}
	}
	return active, done, state, nil
}

// shardReaders bounds the concurrent reads of finished-task shards.
const shardReaders = 16

// listShards reads every shard of the finished tasks, shardReaders at a
// time: one after the other, the 256 reads (each a linearizable read on
// etcd, a round trip on ZooKeeper) took seconds on a busy store.
func (s *Store) listShards(ctx context.Context) ([][]coord.KV, error) {
	var dirs []string
	for _, shard := range Shards() {
		dir, err := s.layout.DoneShardDir(shard)
		if err != nil {
			return nil, err
		}
		dirs = append(dirs, dir)
	}
	out := make([][]coord.KV, len(dirs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(shardReaders)
	for i, dir := range dirs {
		g.Go(func() error {
			kvs, err := s.kv.List(gctx, dir)
			if err != nil {
				return fmt.Errorf("list finished tasks: %w", err)
			}
			out[i] = kvs
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return out, nil
}

// TxnFunc is a conditional write: the store's own, or the leader's fenced one.
type TxnFunc func(ctx context.Context, conds []coord.Cond, ops []coord.Op) ([]int64, error)

// Put writes r back, on condition that the stored record is still at the
// version r was read at, and that every extra condition holds.
func (s *Store) Put(ctx context.Context, txn TxnFunc, r *Record, extra ...coord.Cond) error {
	return s.put(ctx, txn, r, false, extra)
}

// put writes r with the assignment key changes its state implies; notify
// rewrites the key of a task that stays running, so that its runner sees
// the change.
func (s *Store) put(ctx context.Context, txn TxnFunc, r *Record, notify bool, extra []coord.Cond) error {
	key, err := s.layout.ActiveKey(r.ID)
	if err != nil {
		return err
	}
	r.Updated = s.now().UTC()
	enc := r.encode()
	assign, err := s.assignOps(r, notify, enc)
	if err != nil {
		return err
	}
	conds := append([]coord.Cond{coord.VersionIs(key, r.version)}, extra...)
	ops := append([]coord.Op{coord.PutOp(key, enc)}, assign...)
	vers, err := txn(ctx, conds, ops)
	if err != nil {
		return fmt.Errorf("write task %s: %w", r.ID, err)
	}
	r.version = vers[0]
	r.held = heldBy(r)
	return nil
}

// heldBy is the runner whose assignment key exists once r is stored.
func heldBy(r *Record) string {
	if r.State == Running {
		return r.Runner
	}
	return ""
}

// assignOps keeps the assignment keys in step with r: created when r starts
// running on a runner, deleted when it leaves it, rewritten on notify. The
// key holds the record as written (enc), so that the runner needs no read
// to start the attempt; its version is the assignment key's, not the
// record's, so a runner reads the record before its first write.
func (s *Store) assignOps(r *Record, notify bool, enc []byte) ([]coord.Op, error) {
	prev, next := r.held, heldBy(r)
	key := func(node string) (string, error) { return s.layout.AssignKey(node, r.ID) }
	switch {
	case prev == next && next != "" && notify:
		k, err := key(next)
		if err != nil {
			return nil, err
		}
		return []coord.Op{coord.PutOp(k, enc)}, nil
	case prev == next:
		return nil, nil
	}
	var ops []coord.Op
	if prev != "" {
		k, err := key(prev)
		if err != nil {
			return nil, err
		}
		ops = append(ops, coord.DeleteOp(k))
	}
	if next != "" {
		k, err := key(next)
		if err != nil {
			return nil, err
		}
		ops = append(ops, coord.CreateOp(k, enc, nil))
	}
	return ops, nil
}

// PutMany writes several records in one transaction, each on condition
// that it is unchanged since read. If any record changed, nothing is written
// and the error wraps coord.ErrConflict.
func (s *Store) PutMany(ctx context.Context, txn TxnFunc, rs []*Record) error {
	now := s.now().UTC()
	conds := make([]coord.Cond, 0, len(rs))
	ops := make([]coord.Op, 0, 2*len(rs))
	var assign []coord.Op
	for _, r := range rs {
		key, err := s.layout.ActiveKey(r.ID)
		if err != nil {
			return err
		}
		r.Updated = now
		enc := r.encode()
		a, err := s.assignOps(r, false, enc)
		if err != nil {
			return err
		}
		conds = append(conds, coord.VersionIs(key, r.version))
		ops = append(ops, coord.PutOp(key, enc))
		assign = append(assign, a...)
	}
	ops = append(ops, assign...)
	vers, err := txn(ctx, conds, ops)
	if err != nil {
		return fmt.Errorf("write %d tasks: %w", len(rs), err)
	}
	for i, r := range rs {
		r.version = vers[i]
		r.held = heldBy(r)
	}
	return nil
}

// Finish moves r, which must be in a final state, to the finished records,
// on the same conditions as Put.
func (s *Store) Finish(ctx context.Context, txn TxnFunc, r *Record, extra ...coord.Cond) error {
	if !r.State.Final() {
		return fmt.Errorf("finish task %s in state %s: %w", r.ID, r.State, ErrState)
	}
	active, err := s.layout.ActiveKey(r.ID)
	if err != nil {
		return err
	}
	done, err := s.layout.DoneKey(r.ID)
	if err != nil {
		return err
	}
	now := s.now().UTC()
	r.Updated, r.Finished = now, now
	r.Request, r.Runner, r.RunnerSession = RequestNone, "", ""
	enc := r.encode()
	assign, err := s.assignOps(r, false, enc)
	if err != nil {
		return err
	}
	idx, err := s.indexOp(r)
	if err != nil {
		return err
	}
	conds := append([]coord.Cond{coord.VersionIs(active, r.version)}, extra...)
	// The index entry goes in the same transaction: no crash leaves a
	// finished record without its entry, or an entry without its record.
	ops := append([]coord.Op{coord.DeleteOp(active), coord.CreateOp(done, enc, nil), idx}, assign...)
	vers, err := txn(ctx, conds, ops)
	if err != nil {
		return fmt.Errorf("finish task %s: %w", r.ID, err)
	}
	r.version = vers[1]
	r.held = ""
	return nil
}

// change is what a modify step decided.
type change int

const (
	keep   change = iota // nothing to write
	put                  // write the record back
	finish               // move it to the finished records
)

// modify runs f on the current unfinished record until its write wins the
// compare-and-swap. A finished task is passed to f read-only (f must return
// keep or an error).
func (s *Store) modify(ctx context.Context, id string, f func(r *Record) (change, error)) (*Record, error) {
	if err := keys.ValidTaskID(id); err != nil {
		return nil, err
	}
	txn := s.kv.Txn
	for range casRetries {
		r, err := s.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		c, err := f(r)
		if err != nil {
			return r, err
		}
		switch c {
		case keep:
			return r, nil
		case put:
			// A user's change to a running task reaches its runner
			// through the assignment key.
			err = s.put(ctx, txn, r, true, nil)
		case finish:
			err = s.Finish(ctx, txn, r)
		}
		if errors.Is(err, coord.ErrConflict) {
			continue // someone else wrote it first: read again
		}
		return r, err
	}
	return nil, fmt.Errorf("task %s: gave up after %d conflicting writes: %w", id, casRetries, coord.ErrConflict)
}

// finishedErr refuses a change to a task that has ended. The caller (the
// command) already names the action and the task; this says why.
func finishedErr(r *Record, what string) error {
	verb := "has already"
	if r.State == Cancelled {
		verb = "was already"
	}
	return fmt.Errorf("%w: the task %s %s (cannot %s a finished task)", ErrState, verb, r.State, what)
}

// Cancel ends a task. A waiting or paused task is cancelled at once; a
// running one is asked to stop at its next checkpoint, and its runner
// records the cancellation.
func (s *Store) Cancel(ctx context.Context, id string) (*Record, error) {
	return s.modify(ctx, id, func(r *Record) (change, error) {
		switch {
		case r.State.Final():
			return keep, finishedErr(r, "cancel")
		case r.State == Running:
			if r.Request == RequestCancel {
				return keep, nil
			}
			r.Request = RequestCancel
			return put, nil
		}
		r.State = Cancelled
		return finish, nil
	})
}

// Pause stops a task from running until Resume. Pausing a paused task
// changes nothing.
func (s *Store) Pause(ctx context.Context, id string) (*Record, error) {
	return s.modify(ctx, id, func(r *Record) (change, error) {
		switch {
		case r.State.Final():
			return keep, finishedErr(r, "pause")
		case r.State == Paused || r.Request == RequestPause:
			return keep, nil
		case r.Request == RequestCancel:
			return keep, fmt.Errorf("%w: task %s is being cancelled", ErrState, r.ID)
		case r.State == Running:
			r.Request = RequestPause
			return put, nil
		}
		r.State = Paused
		return put, nil
	})
}

// Resume lets a paused task run again (or withdraws a pause request that a
// running task has not reached yet). Resuming a task that is not paused
// changes nothing.
func (s *Store) Resume(ctx context.Context, id string) (*Record, error) {
	return s.modify(ctx, id, func(r *Record) (change, error) {
		switch {
		case r.State.Final():
			return keep, finishedErr(r, "resume")
		case r.State == Paused:
			r.State, r.Parked = Waiting, ""
			return put, nil
		case r.Request == RequestPause:
			r.Request = RequestNone
			return put, nil
		}
		return keep, nil
	})
}

// SetWindow sets (spec != "") or clears a task's run window. A running task
// outside its new window parks at its next checkpoint.
// SetRate sets the task's rate limit in bytes per second (0: unlimited), or
// with clear goes back to the spec's rate. A running attempt of a type that
// throttles (copy) applies it at once.
func (s *Store) SetRate(ctx context.Context, id string, bytesPerSecond int64, clear bool) (*Record, error) {
	if bytesPerSecond < 0 {
		return nil, fmt.Errorf("%w: rate %d is negative (0 is unlimited)", ErrInvalid, bytesPerSecond)
	}
	return s.modify(ctx, id, func(r *Record) (change, error) {
		if r.State.Final() {
			return keep, finishedErr(r, "set the rate of")
		}
		if t, ok := s.types[r.Type]; ok {
			if _, ok := t.(RateLimited); !ok {
				return keep, fmt.Errorf("%w: a %s task has no rate to set: only %s tasks take one", ErrInvalid, r.Type, strings.Join(s.rateLimitedTypes(), ", "))
			}
		}
		r.RateLimit, r.RateLimitSet = bytesPerSecond, !clear
		if clear {
			r.RateLimit = 0
		}
		return put, nil
	})
}

func (s *Store) SetWindow(ctx context.Context, id, spec, zone string) (*Record, error) {
	w, err := s.window(spec, zone)
	if err != nil {
		return nil, err
	}
	return s.modify(ctx, id, func(r *Record) (change, error) {
		if r.State.Final() {
			return keep, finishedErr(r, "set the window of")
		}
		r.Window = w
		return put, nil
	})
}
