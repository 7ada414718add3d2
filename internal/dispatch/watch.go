package dispatch

import (
	"context"
	"encoding/json"
	"log/slog"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/task"
)

// drain applies every event already waiting, without blocking.
func (d *Dispatcher) drain(ctx context.Context, st *state, watches [numWatches]<-chan coord.Event, log *slog.Logger) bool {
	for range 10000 {
		var ok bool
		var ev coord.Event
		var i watchIndex
		select {
		case ev, ok = <-watches[watchTasks]:
			i = watchTasks
		case ev, ok = <-watches[watchRunners]:
			i = watchRunners
		case ev, ok = <-watches[watchMarks]:
			i = watchMarks
		case ev, ok = <-watches[watchLimits]:
			i = watchLimits
		default:
			return ctx.Err() == nil
		}
		if !st.apply(i, ev, ok, log) {
			return false
		}
	}
	return ctx.Err() == nil
}

// apply feeds one event of watch i; false when the watch has closed.
func (st *state) apply(i watchIndex, ev coord.Event, ok bool, log *slog.Logger) bool {
	if !ok {
		return false
	}
	switch i {
	case watchTasks:
		if st.applyTask(ev, log) {
			st.dirty = true
		}
		return true
	case watchRunners:
		applyJSON(st.runners, &st.synced[watchRunners], st.lay.RunnersDir(), keys.ValidName, ev, log, func(kv coord.KV) (task.RunnerInfo, error) {
			return task.DecodeRunner(st.lay.RunnersDir(), kv)
		})
	case watchMarks:
		applyJSON(st.marks, &st.synced[watchMarks], st.lay.RunnerConfigDir(), keys.ValidName, ev, log, func(kv coord.KV) (task.Marks, error) {
			var m task.Marks
			err := json.Unmarshal(kv.Value, &m)
			return m, err
		})
	case watchLimits:
		applyJSON(st.limits, &st.synced[watchLimits], st.lay.TypeLimitsDir(), keys.ValidTaskType, ev, log, func(kv coord.KV) (int, error) {
			_, n, err := task.DecodeTypeLimit(st.lay, kv)
			return n, err
		})
	}
	st.dirty = true
	return true
}

// applyTask reports whether the event changed the view: the echo of the
// dispatcher's own write does not.
func (st *state) applyTask(ev coord.Event, log *slog.Logger) bool {
	if ev.Type == coord.EventSynced {
		st.synced[watchTasks] = true
		return true
	}
	// A key or record with an invalid id was written around taskd: it is
	// never assigned, given back or collected, so no key is built from it.
	id, err := keys.Child(st.lay.ActiveDir(), ev.KV.Key, keys.ValidTaskID)
	if err != nil {
		log.Warn("ignoring a task key that is not a valid task id", "key", keys.Quote(ev.KV.Key), "err", err)
		return false
	}
	switch ev.Type {
	case coord.EventDelete:
		delete(st.tasks, id)
	case coord.EventPut:
		// Our own writes come back through the watch; keep the newer.
		// Versions of one key only grow while it exists.
		if cur, ok := st.tasks[id]; ok && cur.Version() >= ev.KV.Version {
			return false
		}
		r, err := task.Decode(ev.KV.Key, ev.KV.Value, ev.KV.Version)
		if err != nil {
			log.Warn("skipping unreadable task record", "key", ev.KV.Key, "err", err)
			return false
		}
		st.tasks[id] = r
	}
	return true
}

// applyJSON feeds a runner, marks or type limit event of dir, whose keys
// are named by node (or type: valid checks the name); decode reads a
// record. A key with a name valid refuses, or a record decode refuses, is
// skipped.
func applyJSON[T any](m map[string]T, synced *bool, dir string, valid func(string) error, ev coord.Event, log *slog.Logger, decode func(coord.KV) (T, error)) {
	if ev.Type == coord.EventSynced {
		*synced = true
		return
	}
	name, err := keys.Child(dir, ev.KV.Key, valid)
	if err != nil {
		log.Warn("ignoring a key that names nothing valid", "key", keys.Quote(ev.KV.Key), "err", err)
		return
	}
	switch ev.Type {
	case coord.EventDelete:
		delete(m, name)
	case coord.EventPut:
		v, err := decode(ev.KV)
		if err != nil {
			log.Warn("skipping unreadable record", "key", ev.KV.Key, "err", err)
			return
		}
		m[name] = v
	}
}
