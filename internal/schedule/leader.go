package schedule

import (
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/taskd/taskd/internal/keys"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/task"
)

// Leader fires the ticks of every schedule. Run it from the leader role,
// next to the dispatcher.
//
// It is event-driven: it follows watches of the schedules, their state
// records, the trigger requests and the unfinished tasks, and keeps one
// timer for the earliest next tick of all schedules. Between ticks it does
// nothing.
type Leader struct {
	store *Store
	log   *slog.Logger
	// maxSleep bounds one timer, so that a step of the wall clock is
	// noticed within it even without steps.
	maxSleep time.Duration
	// steps signals that the wall clock was set (WithClockSteps): every
	// schedule is planned again at once, against the new time.
	steps <-chan struct{}
}

// WithClockSteps makes the leader plan every schedule again when ch
// signals that the wall clock was set. Without it, a step is noticed at
// the next event or timer (at most maxSleep).
func (r *Leader) WithClockSteps(ch <-chan struct{}) *Leader {
	r.steps = ch
	return r
}

// NewLeader returns the leader component of store.
func NewLeader(store *Store, log *slog.Logger) *Leader {
	return &Leader{store: store, log: log, maxSleep: 10 * time.Minute}
}

// world is the leader's view, fed by the watches.
type world struct {
	lay      Layout
	tasksDir string                // the active tasks' directory
	defs     map[string]*Schedule  // by name
	tts      map[string]*Timetable // by name
	states   map[string]*State     // by uid
	triggers map[string][]trigger  // by schedule name, oldest first
	open     map[string]map[string]*task.Record
	taskOf   map[string]string // open task id -> schedule name
	synced   [4]bool
	dirty    map[string]bool
	wakes    wakeHeap
	wakeAt   map[string]time.Time
}

const (
	wDefs = iota
	wStates
	wTriggers
	wTasks
)

// Run fires ticks until ctx ends (nil) or the leadership is fenced.
func (r *Leader) Run(ctx context.Context, l *quorum.Leadership) error {
	lay, kv := r.store.layout, r.store.kv
	watchers := [4]*coord.Watcher{
		kv.Watch(ctx, lay.DefsDir()),
		kv.Watch(ctx, lay.StateDir()),
		kv.Watch(ctx, lay.TriggersDir()),
		kv.Watch(ctx, r.store.tasks.Layout().ActiveDir()),
	}
	defer func() {
		for _, w := range watchers {
			w.Close()
		}
	}()
	var watches [4]<-chan coord.Event
	for i, w := range watchers {
		watches[i] = w.Events()
	}
	w := &world{lay: lay, tasksDir: r.store.tasks.Layout().ActiveDir(), defs: map[string]*Schedule{}, tts: map[string]*Timetable{}, states: map[string]*State{},
		triggers: map[string][]trigger{}, open: map[string]map[string]*task.Record{}, taskOf: map[string]string{},
		dirty: map[string]bool{}, wakeAt: map[string]time.Time{}}
	log := r.log.With("epoch", l.Epoch())
	// The view is filled by the watches' first contents, applied as they
	// arrive; both backends read them in parallel (ZooKeeper: one
	// pipelined read per child). A listing of its own at start read every
	// record a second time, with the watches' reads competing on the same
	// connection, and made the first tick wait for it.
	var since time.Time
	timer := time.NewTimer(r.maxSleep)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			log.Info("scheduler stopped")
			return nil
		case ev, ok := <-watches[wDefs]:
			if !ok {
				return nil
			}
			w.apply(wDefs, ev, log)
		case ev, ok := <-watches[wStates]:
			if !ok {
				return nil
			}
			w.apply(wStates, ev, log)
		case ev, ok := <-watches[wTriggers]:
			if !ok {
				return nil
			}
			w.apply(wTriggers, ev, log)
		case ev, ok := <-watches[wTasks]:
			if !ok {
				return nil
			}
			w.apply(wTasks, ev, log)
		case <-r.steps:
			// Wake times were computed by the old clock: plan everything
			// again (and rewind a state decided ahead of the clock).
			log.Info("wall clock was set; planning every schedule again", events.ScheduleClockStep.Attr())
			for name := range w.defs {
				w.dirty[name] = true
			}
		case <-timer.C:
			now := r.store.Now()
			for w.wakes.Len() > 0 && !w.wakes[0].at.After(now) {
				e := heap.Pop(&w.wakes).(wake)
				if at, ok := w.wakeAt[e.name]; ok && at.Equal(e.at) {
					delete(w.wakeAt, e.name)
					w.dirty[e.name] = true
				}
			}
		}
		if !w.drain(ctx, watches, log) {
			return nil
		}
		if !w.synced[0] || !w.synced[1] || !w.synced[2] || !w.synced[3] {
			continue
		}
		if since.IsZero() {
			// Ticks due before now came due while no leader fired them.
			since = r.store.Now()
			log.Info("scheduler started", "schedules", len(w.defs))
			for name := range w.defs {
				w.dirty[name] = true
			}
		}
		if len(w.dirty) > 1 {
			names := slices.Sorted(maps.Keys(w.dirty))
			for i := 0; i < len(names); i += batchSize {
				err := r.fireBatch(ctx, l, w, names[i:min(i+batchSize, len(names))], since, log)
				if errors.Is(err, quorum.ErrFenced) {
					log.Warn("scheduler fenced", "err", err)
					return err
				}
				// Other errors: each schedule's own step retries.
			}
		}
		for name := range w.dirty {
			delete(w.dirty, name)
			if err := r.evaluate(ctx, l, w, name, since, log); err != nil {
				if errors.Is(err, quorum.ErrFenced) {
					log.Warn("scheduler fenced", "err", err)
					return err
				}
				if ctx.Err() != nil {
					return nil
				}
				// A store error has no event to retry on: again soon.
				log.Warn("schedule step failed; retrying in a second", "schedule", name, "err", err)
				w.setWake(name, r.store.Now().Add(time.Second))
			}
		}
		timer.Stop()
		if w.wakes.Len() > 0 {
			timer.Reset(min(max(w.wakes[0].at.Sub(r.store.Now()), 0), r.maxSleep))
		}
	}
}

// drain applies every event already queued, so one step covers a burst.
func (w *world) drain(ctx context.Context, watches [4]<-chan coord.Event, log *slog.Logger) bool {
	for range 100000 {
		var ev coord.Event
		var ok bool
		var i int
		select {
		case ev, ok = <-watches[wDefs]:
		case ev, ok = <-watches[wStates]:
			i = wStates
		case ev, ok = <-watches[wTriggers]:
			i = wTriggers
		case ev, ok = <-watches[wTasks]:
			i = wTasks
		default:
			return ctx.Err() == nil
		}
		if !ok {
			return false
		}
		w.apply(i, ev, log)
	}
	return ctx.Err() == nil
}

// apply feeds one event of watch i and marks the schedules it concerns.
func (w *world) apply(i int, ev coord.Event, log *slog.Logger) {
	if ev.Type == coord.EventSynced {
		w.synced[i] = true
		return
	}
	switch i {
	case wDefs:
		name, err := keys.Child(w.lay.DefsDir(), ev.KV.Key, keys.ValidSchedule)
		if err != nil {
			log.Error("skipping a schedule key with an invalid name", "key", quote(ev.KV.Key))
			return
		}
		w.dirty[name] = true
		if ev.Type == coord.EventDelete {
			delete(w.defs, name)
			delete(w.tts, name)
			delete(w.wakeAt, name)
			return
		}
		sc, err := decodeSchedule(ev.KV.Value, ev.KV.Version)
		var tt *Timetable
		if err == nil {
			tt, err = sc.compile()
		}
		if err == nil && sc.Name != name {
			err = fmt.Errorf("record names %s", quote(sc.Name))
		}
		if err != nil {
			log.Error("skipping an unreadable schedule", "key", ev.KV.Key, "err", err)
			delete(w.defs, name)
			return
		}
		// A reload after a conflict reads a version the watch delivers later,
		// or an older one after a newer: keep the newer of one schedule.
		if cur, ok := w.defs[name]; ok && cur.UID == sc.UID && cur.version > sc.version {
			return
		}
		w.defs[name], w.tts[name] = sc, tt
	case wStates:
		uid, err := keys.Child(w.lay.StateDir(), ev.KV.Key, keys.ValidUID)
		if err != nil {
			return
		}
		if ev.Type == coord.EventDelete {
			delete(w.states, uid)
			return
		}
		st, err := decodeState(ev.KV.Value, ev.KV.Version)
		if err != nil || st.UID != uid {
			log.Error("skipping an unreadable schedule state", "key", ev.KV.Key, "err", err)
			return
		}
		// Our own writes come back through the watch; keep the newer.
		if cur, ok := w.states[uid]; ok && cur.version >= st.version {
			return
		}
		w.states[uid] = st
		w.dirty[st.Name] = true
	case wTriggers:
		name, id, err := w.lay.parseTriggerKey(ev.KV.Key)
		if err != nil {
			log.Error("skipping an invalid trigger key", "key", quote(ev.KV.Key), "err", err)
			return
		}
		trs := slices.DeleteFunc(w.triggers[name], func(t trigger) bool { return t.id == id })
		if ev.Type == coord.EventPut {
			var rec triggerRecord
			if err := json.Unmarshal(ev.KV.Value, &rec); err != nil {
				log.Error("skipping an unreadable trigger", "key", ev.KV.Key, "err", err)
				return
			}
			trs = append(trs, trigger{key: ev.KV.Key, id: id, version: ev.KV.Version, requested: rec.Requested})
			slices.SortFunc(trs, func(a, b trigger) int { return a.requested.Compare(b.requested) })
		}
		w.triggers[name] = trs
		if len(trs) == 0 {
			delete(w.triggers, name)
		}
		w.dirty[name] = true
	case wTasks:
		id, err := keys.Child(w.tasksDir, ev.KV.Key, keys.ValidTaskID)
		if err != nil {
			return
		}
		if ev.Type == coord.EventDelete {
			if name, ok := w.taskOf[id]; ok {
				delete(w.taskOf, id)
				delete(w.open[name], id)
				w.dirty[name] = true
			}
			return
		}
		r, err := task.Decode(ev.KV.Key, ev.KV.Value, ev.KV.Version)
		if err != nil || r.Schedule == "" {
			return
		}
		if w.open[r.Schedule] == nil {
			w.open[r.Schedule] = map[string]*task.Record{}
		}
		cur, known := w.open[r.Schedule][id]
		if known && cur.Version() > r.Version() {
			return
		}
		w.open[r.Schedule][id] = r
		w.taskOf[id] = r.Schedule
		if !known || r.Request == task.RequestCancel {
			w.dirty[r.Schedule] = true
		}
	}
}
