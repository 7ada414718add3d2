// Package dispatch is the leader's scheduler. It runs only while its node
// leads, and every write it makes is fenced by the leader's epoch.
//
// It is driven by watches of the unfinished tasks, the live runners and the
// runners' marks: every change triggers one reconcile pass, and a timer
// covers the only changes that come from the clock (a backoff ending, a run
// window opening). There is no polling interval under the start latency.
//
// A reconcile pass:
//  1. gives back the tasks of runners whose session has ended: they wait
//     again and the next attempt resumes from their checkpoint;
//  2. assigns waiting tasks, highest priority first and FIFO within a
//     priority, each to the least loaded live runner that matches its
//     constraints and has room (total and per type).
//
// Assignments of one pass are written in batches, one transaction each.
package dispatch

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/metrics"
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/task"
	"golang.org/x/sync/errgroup"
)

// Config tunes the dispatcher.
type Config struct {
	// Retention is how long finished tasks are kept.
	Retention time.Duration
	// GCInterval is how often finished tasks are collected.
	GCInterval time.Duration
	// Metrics, when set, receives dispatch figures.
	Metrics *metrics.Set
}

// DefaultConfig keeps finished tasks 7 days.
func DefaultConfig() Config {
	return Config{Retention: 7 * 24 * time.Hour, GCInterval: 10 * time.Minute}
}

// Validate checks the settings.
func (c Config) Validate() error {
	if c.Retention <= 0 {
		return fmt.Errorf("task retention %v must be positive", c.Retention)
	}
	if c.GCInterval <= 0 {
		return fmt.Errorf("task GC interval %v must be positive", c.GCInterval)
	}
	return nil
}

// batchSize bounds one assignment transaction: etcd allows 128 compares
// and 128 operations, and each assignment needs three compares (record
// version, record exists, assignment key absent) and two operations.
const batchSize = 30

// Dispatcher assigns tasks to runners.
type Dispatcher struct {
	cfg   Config
	store *task.Store
	log   *slog.Logger
}

// New returns a dispatcher; Run it from the leader role.
func New(cfg Config, store *task.Store, log *slog.Logger) (*Dispatcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Dispatcher{cfg: cfg, store: store, log: log}, nil
}

// watchIndex names the dispatcher's watches.
type watchIndex int

const (
	watchTasks   watchIndex = iota // the unfinished tasks (ActiveDir)
	watchRunners                   // the live runners (RunnersDir)
	watchMarks                     // the runners' marks (RunnerConfigDir)
	watchLimits                    // the limits per type (TypeLimitsDir)
	numWatches
)

// state is the dispatcher's view, fed by the watches.
type state struct {
	lay     keys.Tasks
	tasks   map[string]*task.Record
	runners map[string]task.RunnerInfo
	marks   map[string]task.Marks
	limits  task.TypeLimits
	synced  [numWatches]bool
	dirty   bool // changed since the last pass
	// ended caches the finished tasks that waiting tasks depend on (a
	// finished record never changes); each pass keeps only those still
	// referenced.
	ended map[string]*task.Record
	// starved are the members the quorum's view says are starved of CPU.
	starved map[string]bool
}

// Run dispatches until ctx ends (leadership lost or shutdown). It returns
// nil then; it returns early only if the leadership is fenced. view, when
// not nil, is the quorum's view and a channel closed at its next change:
// a runner whose member is starved of CPU gets a task only when no other
// runner takes it.
func (d *Dispatcher) Run(ctx context.Context, l *quorum.Leadership, view func() (quorum.View, <-chan struct{})) error {
	lay := d.store.Layout()
	watchers := [numWatches]*coord.Watcher{
		watchTasks:   d.store.WatchActive(ctx),
		watchRunners: d.store.WatchRunners(ctx),
		watchMarks:   d.store.WatchMarks(ctx),
		watchLimits:  d.store.WatchTypeLimits(ctx),
	}
	defer func() {
		for _, w := range watchers {
			w.Close()
		}
	}()
	var watches [numWatches]<-chan coord.Event
	for i, w := range watchers {
		watches[i] = w.Events()
	}
	st := &state{lay: lay, tasks: map[string]*task.Record{}, runners: map[string]task.RunnerInfo{}, marks: map[string]task.Marks{}, limits: task.TypeLimits{}}
	log := d.log.With("epoch", l.Epoch())
	log.Info("dispatcher started")
	if m := d.cfg.Metrics; m != nil {
		defer m.Tasks.Reset() // only the leader exports task counts
	}

	// Finished tasks are collected beside the dispatch loop, not in it: a
	// collection reads every shard of the finished tasks (256 reads, each
	// a round trip on ZooKeeper), and a new leader that collected first
	// left the tasks of a dead runner waiting for seconds (issue 19).
	gcCtx, stopGC := context.WithCancel(ctx)
	gcErr := make(chan error, 1)
	var gcDone sync.WaitGroup
	gcDone.Add(1)
	go func() { defer gcDone.Done(); gcErr <- d.collectLoop(gcCtx, l, log) }()
	defer func() { stopGC(); gcDone.Wait() }()

	var viewChanged <-chan struct{} // nil without a view: never ready
	readView := func() {
		v, changed := view()
		viewChanged = changed
		if s := starvedOf(v); !maps.Equal(s, st.starved) {
			st.starved, st.dirty = s, true
		}
	}
	if view != nil {
		readView()
	}

	wake := time.NewTimer(time.Hour)
	wake.Stop()
	defer wake.Stop()
	for {
		select {
		case <-ctx.Done():
			log.Info("dispatcher stopped")
			return nil
		case <-viewChanged:
			readView()
		case err := <-gcErr:
			if err != nil {
				return err
			}
			continue
		case ev, ok := <-watches[watchTasks]:
			if !st.apply(watchTasks, ev, ok, log) {
				return nil
			}
		case ev, ok := <-watches[watchRunners]:
			if !st.apply(watchRunners, ev, ok, log) {
				return nil
			}
		case ev, ok := <-watches[watchMarks]:
			if !st.apply(watchMarks, ev, ok, log) {
				return nil
			}
		case ev, ok := <-watches[watchLimits]:
			if !st.apply(watchLimits, ev, ok, log) {
				return nil
			}
		case <-wake.C:
			st.dirty = true
		}
		// Drain whatever else is pending, so one pass covers a burst; a
		// pass places by the newest view.
		if !d.drain(ctx, st, watches, log) {
			return nil
		}
		select {
		case <-viewChanged:
			readView()
		default:
		}
		if !st.synced[watchTasks] || !st.synced[watchRunners] || !st.synced[watchMarks] || !st.synced[watchLimits] || !st.dirty {
			continue
		}
		st.dirty = false
		next, err := d.reconcile(ctx, l, st, log)
		d.count(st)
		if errors.Is(err, quorum.ErrFenced) {
			// The election logs the role's error once, as it resigns.
			return fmt.Errorf("dispatch pass: %w", err)
		}
		if err != nil && ctx.Err() == nil {
			log.Warn("dispatch pass incomplete; the next change retries it", "err", err)
			// A store error has no watch event to retry on: try again soon.
			next = time.Now().Add(time.Second)
		}
		wake.Stop()
		if !next.IsZero() {
			wake.Reset(max(time.Until(next), 0))
		}
	}
}

// reconcile makes one pass and returns when the clock alone may make more
// work possible (zero: only an event can).
func (d *Dispatcher) reconcile(ctx context.Context, l *quorum.Leadership, st *state, log *slog.Logger) (time.Time, error) {
	now := d.store.Now().UTC()
	txn := task.TxnFunc(l.Txn)
	runners := make(map[string]*task.Runner, len(st.runners))
	for name, info := range st.runners {
		runners[name] = &task.Runner{Info: info, Marks: st.marks[name], Live: true, RunningByType: map[string]int{}, Starved: st.starved[name]}
	}

	var waiting []*task.Record
	var errs []error
	keyed, typed := task.KeyUse{}, task.TypeUse{}
	for _, r := range st.tasks {
		switch r.State {
		case task.Running:
			// A task given back below still counts against its type's
			// limit in this pass: it may still be working.
			typed.Add(r)
			rn, ok := runners[r.Runner]
			if ok && rn.Info.Session == r.RunnerSession {
				rn.Running++
				rn.RunningByType[r.Type]++
				keyed.Add(r)
				continue
			}
			// Given back, it waits in this same pass, in its own place in
			// the order: its key is free from this pass on, and a newer
			// task of that key must not take its turn.
			g, err := d.giveBack(ctx, txn, r, now, log)
			errs = append(errs, err)
			if g != nil && g.State == task.Waiting {
				st.tasks[g.ID] = g
				waiting = append(waiting, g)
			}
		case task.Waiting:
			waiting = append(waiting, r)
		}
	}
	slices.SortFunc(waiting, dispatchOrder)

	free := 0
	for _, rn := range runners {
		if !rn.Marks.Cordoned && !rn.Marks.Draining {
			free += max(rn.Info.Capacity-rn.Running, 0)
		}
	}
	var next time.Time
	var batch []*task.Record
	var batches [][]*task.Record
	seen := map[string]bool{} // dependencies referenced in this pass
	defer func() { maps.DeleteFunc(st.ended, func(id string, _ *task.Record) bool { return !seen[id] }) }()
	for _, r := range waiting {
		if why, wake := r.Ready(now); why != "" {
			if !wake.IsZero() && (next.IsZero() || wake.Before(next)) {
				next = wake
			}
			continue
		}
		if len(r.After) > 0 {
			wait, fail, err := d.after(ctx, st, r, seen)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if fail != nil {
				errs = append(errs, d.failWaiting(ctx, txn, r, fail, log))
				continue
			}
			if wait != "" {
				continue // the end of the task it waits for is an event
			}
		}
		if free == 0 {
			continue // still scan for wake times; nothing else can be placed
		}
		if r.KeyReason(keyed) != "" || r.TypeLimitReason(st.limits, typed) != "" {
			continue // its key or type is at its limit; the end of a holder or a new limit is an event
		}
		best := pick(runners, r)
		if best == nil {
			continue
		}
		a := r.Clone()
		a.Assign(best.Info, now)
		best.Running++
		best.RunningByType[r.Type]++
		keyed.Add(a)
		typed.Add(a)
		free--
		batch = append(batch, a)
		if len(batch) == batchSize {
			batches = append(batches, batch)
			batch = nil
		}
	}
	if len(batch) > 0 {
		batches = append(batches, batch)
	}
	errs = append(errs, d.assignAll(ctx, txn, st, batches, log))
	return next, errors.Join(errs...)
}

// count publishes the unfinished tasks by state and type.
func (d *Dispatcher) count(st *state) {
	m := d.cfg.Metrics
	if m == nil {
		return
	}
	// Count first: a label lookup per task would cost a pass more than
	// the count itself.
	counts := map[[2]string]int{}
	for _, r := range st.tasks {
		counts[[2]string{string(r.State), r.Type}]++
	}
	m.Tasks.Reset()
	for k, n := range counts {
		m.Tasks.WithLabelValues(k[0], k[1]).Set(float64(n))
	}
}

// dispatchOrder is the order waiting tasks are placed in: higher priority
// first, then the older, then by id (so that a pass is deterministic).
func dispatchOrder(a, b *task.Record) int {
	if c := cmp.Compare(b.Priority, a.Priority); c != 0 {
		return c
	}
	if c := a.Created.Compare(b.Created); c != 0 {
		return c
	}
	return cmp.Compare(a.ID, b.ID)
}

// pick chooses the least loaded runner that accepts r; ties go by name so
// that a pass is deterministic. A task whose last attempt failed or lost
// its runner goes to another runner when one accepts it, and back to the
// same one only when none does: that runner may be why it failed (starved
// of CPU, its disk full, cut off from an endpoint). Its failure also made
// it the least loaded (CI: a starved runner's failed attempt went back to
// it and took 7.4 s to start).
func pick(runners map[string]*task.Runner, r *task.Record) *task.Runner {
	avoid := failedOn(r)
	var best *task.Runner
	for _, rn := range runners {
		if ok, _ := rn.Accepts(r); !ok {
			continue
		}
		if best == nil || better(rn, best, avoid) {
			best = rn
		}
	}
	return best
}

// better says whether runner a is a better choice than b: not the runner
// to avoid, then not starved of CPU, then less loaded, then first by name.
func better(a, b *task.Runner, avoid string) bool {
	if (a.Info.Node == avoid) != (b.Info.Node == avoid) {
		return b.Info.Node == avoid
	}
	if a.Starved != b.Starved {
		return b.Starved
	}
	return a.Running < b.Running || (a.Running == b.Running && a.Info.Node < b.Info.Node)
}

// starvedOf is the set of members v says are starved of CPU.
func starvedOf(v quorum.View) map[string]bool {
	out := map[string]bool{}
	for _, m := range v.Members {
		if m.Starved {
			out[m.Name] = true
		}
	}
	return out
}

// failedOn is the runner r's last attempt failed on or was lost with; ""
// if it ended otherwise (parked, paused, drained) or there was none.
func failedOn(r *task.Record) string {
	if n := len(r.History); n > 0 {
		if h := r.History[n-1]; h.Outcome == task.OutcomeFailed || h.Outcome == task.OutcomeRunnerLost {
			return h.Runner
		}
	}
	return ""
}

// assignParallel bounds the assignment transactions of a pass in flight.
const assignParallel = 8

// assignAll writes the batches of one pass together and then records what
// was written in st. The batches hold distinct tasks, each written on
// condition of the record version this pass read and of the leader's
// epoch, so their order does not matter: written one after another, a pass
// that filled 192 free slots waited seven write round trips, and the
// dispatcher saw no event meanwhile (issue 19).
func (d *Dispatcher) assignAll(ctx context.Context, txn task.TxnFunc, st *state, batches [][]*task.Record, log *slog.Logger) error {
	written := make([][]*task.Record, len(batches))
	errs := make([]error, len(batches))
	var g errgroup.Group
	g.SetLimit(assignParallel)
	for i, b := range batches {
		g.Go(func() error {
			written[i], errs[i] = d.assign(ctx, txn, b)
			return nil
		})
	}
	_ = g.Wait() // each batch's error is in errs
	now := d.store.Now()
	for _, rs := range written {
		for _, r := range rs {
			st.tasks[r.ID] = r
			log.Debug("task assigned", "task", r.ID, "attempt", r.Attempt, "runner", r.Runner)
			if m := d.cfg.Metrics; m != nil {
				m.Assignments.Inc()
				if r.Attempt == 1 {
					m.DispatchLatency.Observe(now.Sub(r.Created).Seconds())
				}
			}
		}
	}
	return errors.Join(errs...)
}

// assign writes a batch of assignments and returns those written; if one
// record changed since it was read the batch is written one by one, and the
// changed ones are left to the pass its watch event triggers.
func (d *Dispatcher) assign(ctx context.Context, txn task.TxnFunc, batch []*task.Record) ([]*task.Record, error) {
	err := d.store.PutMany(ctx, txn, batch)
	if errors.Is(err, coord.ErrConflict) && len(batch) > 1 {
		var errs []error
		var written []*task.Record
		for _, r := range batch {
			w, err := d.assign(ctx, txn, []*task.Record{r})
			written = append(written, w...)
			errs = append(errs, err)
		}
		return written, errors.Join(errs...)
	}
	if errors.Is(err, coord.ErrConflict) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return batch, nil
}

// giveBack returns a task whose runner's session has ended, and gives the
// record as now stored (nil when nothing was written).
func (d *Dispatcher) giveBack(ctx context.Context, txn task.TxnFunc, r *task.Record, now time.Time, log *slog.Logger) (*task.Record, error) {
	g := r.Clone()
	why := fmt.Sprintf("runner %s lost its session", r.Runner)
	var err error
	if g.Park(now, task.OutcomeRunnerLost, why) {
		err = d.store.Finish(ctx, txn, g)
	} else {
		err = d.store.Put(ctx, txn, g)
	}
	if errors.Is(err, coord.ErrConflict) {
		return nil, nil // changed meanwhile; its event brings the next pass
	}
	if err != nil {
		return nil, err
	}
	if m := d.cfg.Metrics; m != nil {
		m.GivenBack.Inc()
	}
	log.Info("task given back: its runner's session ended", events.TaskReassigned.Attr(), "task", r.ID, "attempt", r.Attempt, "runner", r.Runner, "state", g.State)
	return g, nil
}
