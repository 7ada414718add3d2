// Package runner executes the tasks the dispatcher assigns to this node.
// Every node runs one, the leader included, for as long as the node is a
// member on one session.
//
// The runner watches the unfinished tasks. A record that names this node
// and this session as the runner of its current attempt starts that attempt;
// a change to the record (a cancel or pause request, a new window, a
// reassignment) or to the runner's marks (drain) stops it at its next
// checkpoint, or at once if the task watches its context.
//
// Every write of an attempt is fenced twice by the store: on the record's
// version, which any reassignment changes, and on the runner's session key,
// which the store deletes when the session ends (or the node's next session
// deletes, when it finds it left behind: see register). A runner that was paused
// past its session cannot write; when it runs again it finds itself fenced
// and stops. The session's loss also cancels the member role, and the
// quorum waits for the runner to return before its local deadline.
package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/taskd/taskd/internal/backoff"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/metrics"
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/txnbatch"
)

// Config tunes a runner.
type Config struct {
	Node string
	// Capacity is the most attempts it runs at once.
	Capacity int
	// TypeCapacity limits single types further.
	TypeCapacity map[string]int
	// Deadline is the local deadline of a session: from it on, attempts
	// stop counting themselves active. It is the quorum's own function
	// (quorum.Config.DeadlineOf), so the runner never outlives the fence.
	Deadline func(coord.Session) time.Time
	// ProgressInterval is the least time between two progress-only writes.
	ProgressInterval time.Duration
	// BatchWrites joins the attempts' concurrent writes (checkpoints,
	// progress, outcomes) into one store transaction each round
	// (internal/txnbatch); each keeps its own conditions.
	BatchWrites bool
	// Backoff gives the wait before retry n (task.Backoff if nil).
	Backoff func(retry int) time.Duration
	// Metrics, when set, counts ended attempts.
	Metrics *metrics.Set
	// Clock is the time of the local deadline, of progress writes and of
	// the attempts' retry waits (the real clock if nil); tests inject one.
	Clock Clock
}

// Clock is the runner's local time.
type Clock interface {
	Now() time.Time
	// After is backoff.Clock's: a channel that receives once d has
	// passed, and a stop function that releases the timer.
	After(d time.Duration) (<-chan time.Time, func())
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) After(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTimer(d)
	return t.C, func() { t.Stop() }
}

// DefaultConfig runs 8 tasks at once.
func DefaultConfig() Config {
	return Config{Capacity: 8, Deadline: quorum.DefaultConfig().DeadlineOf, ProgressInterval: time.Second, Backoff: task.Backoff}
}

// Validate checks the settings.
func (c Config) Validate() error {
	var errs []error
	if c.Capacity < 1 || c.Capacity > 10000 {
		errs = append(errs, fmt.Errorf("runner capacity %d: use 1..10000", c.Capacity))
	}
	for t, n := range c.TypeCapacity {
		if n < 1 {
			errs = append(errs, fmt.Errorf("runner capacity for type %s: %d must be at least 1", t, n))
		}
	}
	if c.Deadline == nil {
		errs = append(errs, errors.New("runner: no local deadline function (use the quorum's DeadlineOf)"))
	}
	if c.ProgressInterval <= 0 {
		errs = append(errs, fmt.Errorf("progress interval %v must be positive", c.ProgressInterval))
	}
	return errors.Join(errs...)
}

// Runner runs attempts on this node.
type Runner struct {
	cfg   Config
	clock Clock
	store *task.Store
	log   *slog.Logger
}

// New returns a runner; Run it from the member role.
func New(cfg Config, store *task.Store, log *slog.Logger) (*Runner, error) {
	if cfg.Backoff == nil {
		cfg.Backoff = task.Backoff
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	clock := cfg.Clock
	if clock == nil {
		clock = realClock{}
	}
	return &Runner{cfg: cfg, clock: clock, store: store, log: log}, nil
}

// Stop causes: why an attempt's context was cancelled.
var (
	errCancelled  = fmt.Errorf("cancelled by a user: %w", task.ErrStopAsked)
	errPaused     = fmt.Errorf("paused by a user: %w", task.ErrStopAsked)
	errReassigned = fmt.Errorf("the task was reassigned: %w", task.ErrFenced)
	errDrained    = fmt.Errorf("runner drained: %w", task.ErrStopAsked)
	errWindow     = fmt.Errorf("outside its run window: %w", task.ErrStopAsked)
	errShutdown   = errors.New("runner stopping: session ended or node shutting down")
)

// session is one Run: the runner on one coord session.
type session struct {
	r     *Runner
	sess  coord.Session
	fence coord.Cond
	log   *slog.Logger
	ctx   context.Context

	mu       sync.Mutex
	attempts map[string]*attempt // by task id
	wg       sync.WaitGroup
	kick     chan struct{} // an attempt ended: look at its task again
	ended    []string      // tasks whose attempts ended, for the loop
	// txn is the store transaction of the attempts' writes: the store's
	// own, or the session's batcher's.
	txn task.TxnFunc
	// ran is the highest attempt of each task this session has run. An
	// attempt number is started at most once: the watch may still show a
	// record the attempt itself has just moved on.
	ran map[string]int
}

// Run registers the runner for sess and runs attempts until ctx ends. It
// returns after every attempt has stopped.
func (r *Runner) Run(ctx context.Context, sess coord.Session) error {
	log := r.log.With("session", sess.ID())
	types := r.store.Types().Names()
	info := task.RunnerInfo{
		Node: r.cfg.Node, Session: sess.ID(), Capacity: r.cfg.Capacity, TypeCapacity: r.cfg.TypeCapacity,
		Types: types, Started: time.Now().UTC(),
	}
	fence, err := r.register(ctx, sess, info, log)
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		return nil
	}
	s := &session{r: r, sess: sess, fence: fence, log: log, ctx: ctx, attempts: map[string]*attempt{}, kick: make(chan struct{}, 1), ran: map[string]int{}, txn: r.store.Txn}
	if r.cfg.BatchWrites {
		// The batcher outlives the attempts (their last writes go
		// through it): it stops once they have all returned.
		b := txnbatch.New(r.store.Txn, 0)
		if m := r.cfg.Metrics; m != nil {
			b.Observe = func(calls int, joined bool) {
				if joined {
					m.RunnerBatches.Inc()
					m.RunnerWrites.WithLabelValues("joined").Add(float64(calls))
				} else {
					m.RunnerWrites.WithLabelValues("alone").Inc()
				}
			}
		}
		s.txn = b.Txn
		bctx, stop := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan struct{})
		go func() { defer close(done); b.Run(bctx) }()
		defer func() { stop(); <-done }()
	}
	defer s.wg.Wait()
	defer s.stopAll(errShutdown)
	return s.loop(ctx)
}

// register creates the runner's keys. A key left by this node's previous
// session is ended at once (task.Store.EndStaleRunner: that session's
// process is gone, or its fence in this process stopped its attempts);
// failing that, it blocks registration until the store deletes it with
// that session, and the runners watch says when.
func (r *Runner) register(ctx context.Context, sess coord.Session, info task.RunnerInfo, log *slog.Logger) (coord.Cond, error) {
	key, err := r.store.Layout().RunnerKey(info.Node)
	if err != nil {
		return coord.Cond{}, err
	}
	var w *coord.Watcher // the runners directory, once a stale key is seen
	defer func() {
		if w != nil {
			w.Close()
		}
	}()
	retry := backoff.New(100*time.Millisecond, 2*time.Second)
	ended := false // the previous session's records were ended (or found changing)
	for {
		fence, err := r.store.Register(ctx, sess, info)
		if err == nil {
			log.Info("runner registered", "capacity", info.Capacity, "types", info.Types)
			return fence, nil
		}
		if ctx.Err() != nil {
			return coord.Cond{}, nil
		}
		if !errors.Is(err, coord.ErrConflict) {
			// The store may be electing a leader or unreachable for a
			// moment; the runner must not give up for the session.
			log.Warn("runner registration failed; retrying", "err", err, "in", retry.Next())
			if retry.Wait(ctx) != nil {
				return coord.Cond{}, nil
			}
			continue
		}
		if !ended {
			old, err := r.store.EndStaleRunner(ctx, sess, info.Node)
			switch {
			case err == nil && old != "":
				// Once: a key that is back after that is not our past.
				ended = true
				log.Info("ended the runner records of this node's previous session: its tasks are given back now, not when the store expires it", "old_session", old)
				continue
			case err == nil:
				ended = true // changed meanwhile: the store's own removal comes
			default:
				// The store may be electing a leader: try again (or
				// register, once the store has expired that session).
				log.Warn("cannot end the runner records of this node's previous session; retrying", "err", err, "in", retry.Next())
				if retry.Wait(ctx) != nil {
					return coord.Cond{}, nil
				}
				continue
			}
		}
		if w == nil {
			log.Info("runner key of a previous session still exists; waiting for the store to remove it")
			w = r.store.WatchRunners(ctx)
		}
		if !waitDeleted(ctx, w.Events(), key) {
			return coord.Cond{}, nil
		}
	}
}

// waitDeleted returns true when key is absent from the watched directory
// (after a sync or on its delete event), false when ctx ends.
func waitDeleted(ctx context.Context, events <-chan coord.Event, key string) bool {
	present := false
	for {
		select {
		case <-ctx.Done():
			return false
		case ev, ok := <-events:
			if !ok {
				return false
			}
			switch {
			case ev.Type == coord.EventPut && ev.KV.Key == key:
				present = true
			case ev.Type == coord.EventDelete && ev.KV.Key == key:
				return true
			case ev.Type == coord.EventSynced && !present:
				return true
			}
		}
	}
}

// loop follows the tasks and the runner's marks. A task event is handled
// for that task alone; marks, the window timer and a resync look at all.
func (s *session) loop(ctx context.Context) error {
	lay := s.r.store.Layout()
	assignDir, err := lay.AssignDir(s.r.cfg.Node)
	if err != nil {
		return err
	}
	markKey, err := lay.RunnerConfigKey(s.r.cfg.Node)
	if err != nil {
		return err
	}
	taskWatch, err := s.r.store.WatchAssigned(ctx, s.r.cfg.Node)
	if err != nil {
		return err
	}
	defer taskWatch.Close()
	markWatch := s.r.store.WatchMarks(ctx)
	defer markWatch.Close()
	tasks, marks := taskWatch.Events(), markWatch.Events()
	// records holds the tasks assigned to this node, as their assignment
	// keys hold them (version unknown: an attempt reads before it writes).
	records := map[string]*task.Record{}
	var myMarks task.Marks
	windowTimer := time.NewTimer(time.Hour)
	windowTimer.Stop()
	defer windowTimer.Stop()
	var nextClose time.Time
	setTimer := func(t time.Time) {
		if t.IsZero() || (!nextClose.IsZero() && !t.Before(nextClose)) {
			return
		}
		nextClose = t
		windowTimer.Reset(max(time.Until(t), 0))
	}
	all := func() {
		nextClose = time.Time{}
		windowTimer.Stop()
		setTimer(s.reconcile(records, myMarks))
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-tasks:
			if !ok {
				return nil
			}
			if ev.Type == coord.EventSynced {
				all()
				continue
			}
			// An assignment whose key or record has no valid task id was
			// written around taskd: it is never started.
			id, err := keys.Child(assignDir, ev.KV.Key, keys.ValidTaskID)
			if err != nil {
				s.log.Warn("ignoring an assignment key that is not a valid task id", "key", keys.Quote(ev.KV.Key), "err", err)
				continue
			}
			delete(records, id)
			if ev.Type == coord.EventPut {
				rec, err := task.Decode(ev.KV.Key, ev.KV.Value, 0)
				if err != nil {
					s.log.Warn("skipping unreadable assignment", "key", ev.KV.Key, "err", err)
					continue
				}
				if rec.Runner == s.r.cfg.Node {
					records[id] = rec
				}
			}
			setTimer(s.check(id, records[id], myMarks, s.r.store.Now()))
		case ev, ok := <-marks:
			if !ok {
				return nil
			}
			if ev.KV.Key != markKey {
				continue
			}
			myMarks = task.Marks{}
			if ev.Type == coord.EventPut {
				if err := json.Unmarshal(ev.KV.Value, &myMarks); err != nil {
					s.log.Error("unreadable runner marks; ignoring them", "err", err)
				}
			}
			all()
		case <-windowTimer.C:
			all()
		case <-s.kick:
			now := s.r.store.Now()
			for _, id := range s.takeEnded() {
				setTimer(s.check(id, records[id], myMarks, now))
			}
		}
	}
}

// reconcile checks every task this runner has or is assigned, and returns
// when the next run window closes (zero: none).
func (s *session) reconcile(records map[string]*task.Record, marks task.Marks) time.Time {
	now := s.r.store.Now()
	s.mu.Lock()
	ids := make([]string, 0, len(s.attempts)+len(records))
	for id := range s.attempts {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	for id := range records {
		ids = append(ids, id)
	}
	var next time.Time
	for _, id := range ids {
		if c := s.check(id, records[id], marks, now); !c.IsZero() && (next.IsZero() || c.Before(next)) {
			next = c
		}
	}
	return next
}

// check starts the attempt rec assigns to this session, or stops the local
// attempt of task id if it must stop. It returns when the attempt's run
// window closes (zero: no window).
func (s *session) check(id string, rec *task.Record, marks task.Marks, now time.Time) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, running := s.attempts[id]
	if !running {
		if rec == nil {
			delete(s.ran, id)
			return time.Time{}
		}
		if !rec.Owns(s.r.cfg.Node, s.sess.ID(), rec.Attempt) || rec.Attempt <= s.ran[id] {
			return time.Time{}
		}
		if _, err := s.r.store.Types().Lookup(rec.Type); err != nil {
			return time.Time{} // a type this build does not know; the leader gives it back when we go
		}
		a = s.start(rec)
	}
	if rec != nil {
		a.setRate(rec.RateLimit, rec.RateLimitSet)
	}
	switch {
	case a.finishing():
		return time.Time{} // its own final write moves the record on
	case rec == nil || !rec.Owns(s.r.cfg.Node, s.sess.ID(), a.n):
		a.stop(errReassigned)
		return time.Time{}
	case rec.Request == task.RequestCancel:
		a.stop(errCancelled)
	case rec.Request == task.RequestPause:
		a.stop(errPaused)
	case marks.Draining:
		a.stop(errDrained)
	}
	w, err := rec.Window.Parse()
	if err != nil || !w.IsSet() {
		return time.Time{}
	}
	if !w.Contains(now) {
		a.stop(errWindow)
		return time.Time{}
	}
	return w.NextClose(now)
}

// takeEnded returns the tasks whose attempts ended since the last call.
func (s *session) takeEnded() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := s.ended
	s.ended = nil
	return ids
}

func (s *session) stopAll(cause error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.attempts {
		a.stop(cause)
	}
}

// start runs an attempt; s.mu is held.
func (s *session) start(rec *task.Record) *attempt {
	actx, cancel := context.WithCancelCause(s.ctx)
	a := &attempt{s: s, id: rec.ID, n: rec.Attempt, rec: rec.Clone(), ctx: actx, cancel: cancel,
		log: s.log.With("task", rec.ID, "attempt", rec.Attempt, "type", rec.Type)}
	a.setRate(rec.RateLimit, rec.RateLimitSet)
	s.attempts[rec.ID] = a
	s.ran[rec.ID] = rec.Attempt
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer cancel(nil)
		a.run()
		s.mu.Lock()
		if s.attempts[rec.ID] == a {
			delete(s.attempts, rec.ID)
		}
		s.ended = append(s.ended, rec.ID)
		s.mu.Unlock()
		select {
		case s.kick <- struct{}{}:
		default: // a look is already pending; it takes this id too
		}
	}()
	return a
}
