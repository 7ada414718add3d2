package schedule

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/task"
)

// maxSteps bounds the actions of one evaluation of one schedule (a
// missed run, a waiting tick, a trigger, a tick...).
const maxSteps = 16

// evaluate takes every step that is due for schedule name and sets its
// next wake time.
func (r *Leader) evaluate(ctx context.Context, l *quorum.Leadership, w *world, name string, since time.Time, log *slog.Logger) error {
	sc, ok := w.defs[name]
	if !ok {
		// Deleted (its state and triggers went with it), or unreadable.
		delete(w.wakeAt, name)
		return nil
	}
	conflicts := 0
	for range maxSteps {
		v := w.view(sc)
		now := r.store.Now()
		a, wake := plan(v, now, since)
		if a.next == nil && len(a.cancel) == 0 {
			w.setWake(name, wake)
			return r.prune(ctx, l, w, sc, log)
		}
		if a.next != nil {
			rec, err := r.write(ctx, l, v, a)
			if errors.Is(err, coord.ErrConflict) && conflicts < 3 {
				// Someone else wrote first (an operator's pause, a
				// trigger, our own earlier write): read and decide again.
				conflicts++
				if err := r.reload(ctx, w, name); err != nil {
					return err
				}
				if sc, ok = w.defs[name]; !ok {
					return nil
				}
				continue
			}
			if err != nil {
				return err
			}
			w.states[sc.UID] = a.next
			if rec != nil { // its watch event may come later than our next step
				if w.open[name] == nil {
					w.open[name] = map[string]*task.Record{}
				}
				w.open[name][rec.ID], w.taskOf[rec.ID] = rec, name
			}
			if a.dropTrigger != nil {
				w.dropTrigger(name, a.dropTrigger.id)
			}
			for _, line := range a.logs {
				line.emit(log)
			}
		}
		for _, id := range a.cancel {
			if _, err := r.store.tasks.Cancel(ctx, id); err != nil && !errors.Is(err, task.ErrState) {
				return fmt.Errorf("cancel previous run %s: %w", id, err)
			}
			log.Info("schedule cancelled its previous run", "schedule", name, "task", id, "reason", "overlap policy cancel-previous")
			if rec := w.open[name][id]; rec != nil {
				c := rec.Clone()
				c.Request = task.RequestCancel
				w.open[name][id] = c
			}
		}
	}
	// More steps remain (a long backlog of triggers): continue soon.
	w.setWake(name, r.store.Now())
	return nil
}

// view assembles what plan needs for sc.
func (w *world) view(sc *Schedule) view {
	st := w.states[sc.UID]
	if st == nil {
		st = &State{UID: sc.UID, Name: sc.Name}
	}
	mine := map[string]bool{}
	for _, id := range st.Made {
		mine[id] = true
	}
	var open []*task.Record
	for id, rec := range w.open[sc.Name] {
		if mine[id] {
			open = append(open, rec)
		}
	}
	sortOpen(open)
	return view{sc: sc, tt: w.tts[sc.Name], st: st, open: open, triggers: w.triggers[sc.Name]}
}

// write applies an action in one transaction, fenced by the epoch and
// conditional on the schedule, its state and the trigger it consumes. It
// returns the task it created, if any.
func (r *Leader) write(ctx context.Context, l *quorum.Leadership, v view, a action) (*task.Record, error) {
	lay := r.store.layout
	dkey, err := lay.DefKey(v.sc.Name)
	if err != nil {
		return nil, err
	}
	skey, err := lay.StateKey(v.sc.UID)
	if err != nil {
		return nil, err
	}
	conds := []coord.Cond{coord.VersionIs(dkey, v.sc.version), coord.VersionIs(skey, v.st.version)}
	var ops []coord.Op
	var rec *task.Record
	if m := a.create; m != nil {
		rec, err = r.store.tasks.Prepare(taskRequest(v.sc, m.id, m.tick))
		if err != nil {
			// The template no longer makes a valid task (a type this
			// version lacks): record the tick as skipped with why.
			markInvalid(a, m, err)
			rec = nil
		} else if op, oerr := r.store.tasks.CreateOp(rec); oerr != nil {
			markInvalid(a, m, oerr)
			rec = nil
		} else {
			ops = append(ops, op)
		}
	}
	if v.st.version == 0 {
		ops = append(ops, coord.CreateOp(skey, encode(a.next), nil))
	} else {
		ops = append(ops, coord.PutOp(skey, encode(a.next)))
	}
	if t := a.dropTrigger; t != nil {
		conds = append(conds, coord.VersionIs(t.key, t.version))
		ops = append(ops, coord.DeleteOp(t.key))
	}
	vers, err := l.Txn(ctx, conds, ops)
	if errors.Is(err, coord.ErrConflict) && a.create != nil {
		// The task may exist already although the state does not say
		// so (the state was restored from an old copy): never make it
		// twice; record the run without creating it.
		if _, gerr := r.store.tasks.Get(ctx, a.create.id); gerr == nil {
			a.create = nil
			_, err := r.write(ctx, l, v, a)
			return nil, err
		}
	}
	if err != nil {
		return nil, fmt.Errorf("schedule %s: %w", v.sc.Name, err)
	}
	a.next.version = vers[len(ops)-1]
	if a.dropTrigger != nil {
		a.next.version = vers[len(ops)-2]
	}
	return rec, nil
}

// markInvalid turns a run that would create a task into a skipped one.
func markInvalid(a action, m *made, err error) {
	st := a.next
	for i := range st.Runs {
		if st.Runs[i].Task == m.id {
			st.Runs[i].Outcome, st.Runs[i].Task = Skipped, ""
			st.Runs[i].Reason = "the task template is not valid here: " + err.Error()
		}
	}
	if n := len(st.Made); n > 0 && st.Made[n-1] == m.id {
		st.Made = st.Made[:n-1]
	}
}

// reload reads schedule name and its state from the store after a
// conflict.
func (r *Leader) reload(ctx context.Context, w *world, name string) error {
	sc, st, err := r.store.Get(ctx, name)
	if errors.Is(err, ErrNotFound) {
		delete(w.defs, name)
		return nil
	}
	if err != nil {
		return err
	}
	tt, err := sc.compile()
	if err != nil {
		delete(w.defs, name)
		return nil
	}
	w.defs[name], w.tts[name] = sc, tt
	if st != nil {
		w.states[sc.UID] = st
	} else {
		delete(w.states, sc.UID)
	}
	trs, err := r.store.kv.List(ctx, r.store.layout.TriggersDir())
	if err != nil {
		return fmt.Errorf("list triggers: %w", err)
	}
	delete(w.triggers, name)
	for _, kv := range trs {
		n, _, err := r.store.layout.parseTriggerKey(kv.Key)
		if err == nil && n == name {
			w.apply(wTriggers, coord.Event{Type: coord.EventPut, KV: kv}, slog.New(slog.DiscardHandler))
		}
	}
	return nil
}

func (w *world) dropTrigger(name, id string) {
	trs := w.triggers[name]
	for i, t := range trs {
		if t.id == id {
			w.triggers[name] = append(trs[:i:i], trs[i+1:]...)
			break
		}
	}
	if len(w.triggers[name]) == 0 {
		delete(w.triggers, name)
	}
}

// pruneBatch bounds the finished tasks deleted in one transaction.
const pruneBatch = 20

// prune deletes the schedule's finished tasks beyond its keep-last.
func (r *Leader) prune(ctx context.Context, l *quorum.Leadership, w *world, sc *Schedule, log *slog.Logger) error {
	st := w.states[sc.UID]
	if st == nil || len(st.Made) <= sc.KeepLast {
		return nil
	}
	excess := len(st.Made) - sc.KeepLast
	skey, err := r.store.layout.StateKey(sc.UID)
	if err != nil {
		return err
	}
	next := st.clone()
	next.Made = next.Made[:0]
	conds := []coord.Cond{coord.VersionIs(skey, st.version)}
	var ops []coord.Op
	var deleted []string
	for i, id := range st.Made {
		if excess == 0 || len(ops) == pruneBatch || w.open[sc.Name][id] != nil {
			next.Made = append(next.Made, st.Made[i])
			continue
		}
		rec, err := r.store.tasks.Get(ctx, id)
		switch {
		case errors.Is(err, task.ErrNotFound):
			// Collected by the task retention already.
		case err != nil:
			return err
		case !rec.State.Final():
			next.Made = append(next.Made, id)
			continue
		default:
			dk, err := r.store.tasks.Layout().DoneKey(id)
			if err != nil {
				return err
			}
			conds = append(conds, coord.VersionIs(dk, rec.Version()))
			ops = append(ops, coord.DeleteOp(dk))
			// Its index entry and its output log go with it.
			ic, iop, err := r.store.tasks.IndexDelete(ctx, rec)
			if err != nil {
				return err
			}
			conds, ops = append(conds, ic...), append(ops, iop...)
			if c, op, ok, err := r.store.tasks.LogDelete(ctx, id); err != nil {
				return err
			} else if ok {
				conds, ops = append(conds, c), append(ops, op)
			}
			deleted = append(deleted, id)
		}
		excess--
	}
	if len(next.Made) == len(st.Made) {
		return nil
	}
	ops = append(ops, coord.PutOp(skey, encode(next)))
	vers, err := l.Txn(ctx, conds, ops)
	if errors.Is(err, coord.ErrConflict) {
		return nil // changed meanwhile; its event brings the next step
	}
	if err != nil {
		return fmt.Errorf("prune tasks of schedule %s: %w", sc.Name, err)
	}
	next.version = vers[len(vers)-1]
	w.states[sc.UID] = next
	if len(deleted) > 0 {
		log.Info("schedule deleted finished tasks beyond keep-last", "schedule", sc.Name, "count", len(deleted), "keep_last", sc.KeepLast)
	}
	return nil
}

// setWake sets when schedule name is next evaluated (zero: on an event
// only).
func (w *world) setWake(name string, at time.Time) {
	if at.IsZero() {
		delete(w.wakeAt, name)
		return
	}
	if cur, ok := w.wakeAt[name]; ok && cur.Equal(at) {
		return
	}
	w.wakeAt[name] = at
	heap.Push(&w.wakes, wake{at: at, name: name})
	// Stale entries are skipped when popped; rebuild when they pile up.
	if w.wakes.Len() > 2*len(w.wakeAt)+64 {
		w.wakes = w.wakes[:0]
		for n, t := range w.wakeAt {
			w.wakes = append(w.wakes, wake{at: t, name: n})
		}
		heap.Init(&w.wakes)
	}
}

type wake struct {
	at   time.Time
	name string
}

// wakeHeap orders wake times, earliest first.
type wakeHeap []wake

func (h wakeHeap) Len() int           { return len(h) }
func (h wakeHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h wakeHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *wakeHeap) Push(x any)        { *h = append(*h, x.(wake)) }
func (h *wakeHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// batchSize bounds the ticks written in one transaction: each takes up to
// three conditions and three operations, and etcd allows 128 of each.
const batchSize = 30

// fireBatch writes the due ticks of several schedules in one transaction,
// so that many schedules ticking at the same instant (nightly at 02:00)
// cost a few transactions, not one each. Whatever it does not write (a
// conflict, a step that is not a plain tick) the per-schedule evaluation
// does after it.
func (r *Leader) fireBatch(ctx context.Context, l *quorum.Leadership, w *world, names []string, since time.Time, log *slog.Logger) error {
	type item struct {
		name    string
		v       view
		a       action
		rec     *task.Record
		stateOp int
	}
	now := r.store.Now()
	var batch []item
	var conds []coord.Cond
	var ops []coord.Op
	for _, name := range names {
		sc, ok := w.defs[name]
		if !ok {
			continue
		}
		v := w.view(sc)
		a, _ := plan(v, now, since)
		if a.next == nil || a.create == nil || len(a.cancel) > 0 {
			continue
		}
		rec, err := r.store.tasks.Prepare(taskRequest(sc, a.create.id, a.create.tick))
		if err != nil {
			continue // the per-schedule step records why
		}
		dkey, err1 := r.store.layout.DefKey(sc.Name)
		skey, err2 := r.store.layout.StateKey(sc.UID)
		if err1 != nil || err2 != nil {
			continue
		}
		conds = append(conds, coord.VersionIs(dkey, sc.version), coord.VersionIs(skey, v.st.version))
		op, err := r.store.tasks.CreateOp(rec)
		if err != nil {
			continue // Prepare validated the id; unreachable in practice
		}
		ops = append(ops, op)
		it := item{name: name, v: v, a: a, rec: rec, stateOp: len(ops)}
		if v.st.version == 0 {
			ops = append(ops, coord.CreateOp(skey, encode(a.next), nil))
		} else {
			ops = append(ops, coord.PutOp(skey, encode(a.next)))
		}
		if t := a.dropTrigger; t != nil {
			conds = append(conds, coord.VersionIs(t.key, t.version))
			ops = append(ops, coord.DeleteOp(t.key))
		}
		batch = append(batch, it)
		if len(batch) == batchSize {
			break
		}
	}
	if len(batch) < 2 {
		return nil
	}
	vers, err := l.Txn(ctx, conds, ops)
	if errors.Is(err, coord.ErrConflict) {
		return nil // one changed: each is written on its own next
	}
	if err != nil {
		return fmt.Errorf("fire %d schedules: %w", len(batch), err)
	}
	for _, it := range batch {
		it.a.next.version = vers[it.stateOp]
		w.states[it.v.sc.UID] = it.a.next
		if w.open[it.name] == nil {
			w.open[it.name] = map[string]*task.Record{}
		}
		w.open[it.name][it.rec.ID], w.taskOf[it.rec.ID] = it.rec, it.name
		if it.a.dropTrigger != nil {
			w.dropTrigger(it.name, it.a.dropTrigger.id)
		}
		for _, line := range it.a.logs {
			line.emit(log)
		}
	}
	return nil
}
