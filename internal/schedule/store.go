package schedule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/taskd/taskd/internal/keys"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/task"
)

// Sentinel errors.
var (
	ErrNotFound = errors.New("schedule not found")
	ErrExists   = errors.New("schedule already exists")
)

// casRetries bounds a read-modify-write loop that keeps losing races.
const casRetries = 50

// Store reads and writes schedules; every node's API has one.
type Store struct {
	kv     coord.Store
	layout Layout
	tasks  *task.Store
}

// NewStore binds the schedules under root to kv; tasks validates and
// makes the tasks (its clock is the schedules' clock).
func NewStore(kv coord.Store, root keys.Root, tasks *task.Store) *Store {
	return &Store{kv: kv, layout: newLayout(root), tasks: tasks}
}

// Layout is the store layout in use.
func (s *Store) Layout() Layout { return s.layout }

// Now is the clock of the task center.
func (s *Store) Now() time.Time { return s.tasks.Now() }

// CreateRequest is a new schedule.
type CreateRequest struct {
	Name     string
	Spec     Spec
	Template Template
	Overlap  string
	// CatchUp nil: DefaultCatchUp. KeepLast 0: DefaultKeepLast.
	CatchUp  *time.Duration
	Jitter   time.Duration
	KeepLast int
	Paused   bool
	Note     string
	// DryRun validates and returns the schedule without storing it.
	DryRun bool
}

// taskRequest is the task a tick of sc makes.
func taskRequest(sc *Schedule, id string, tick time.Time) task.CreateRequest {
	t := sc.Template
	return task.CreateRequest{Type: t.Type, Spec: t.Spec, Priority: t.Priority, Node: t.Node, Window: t.Window,
		Zone: t.WindowZone, MaxRetries: t.MaxRetries, ID: id, Schedule: sc.Name, Tick: tick}
}

// Create validates req and stores the schedule; nothing is written when
// req is invalid or the name is taken.
func (s *Store) Create(ctx context.Context, req CreateRequest) (*Schedule, error) {
	now := s.Now().UTC()
	ov, err := ParseOverlap(req.Overlap)
	if err != nil {
		return nil, err
	}
	catchUp := DefaultCatchUp
	if req.CatchUp != nil {
		catchUp = *req.CatchUp
	}
	keep := req.KeepLast
	if keep == 0 {
		keep = DefaultKeepLast
	}
	spec := req.Template.Spec
	if len(spec) == 0 {
		spec = json.RawMessage("{}")
	}
	sc := &Schedule{
		Name: req.Name, UID: uuid.NewString(), Spec: req.Spec, Overlap: ov, CatchUp: Duration(catchUp),
		Jitter: Duration(req.Jitter), KeepLast: keep, Paused: req.Paused, Note: req.Note,
		Since: now, Created: now, Updated: now, Template: req.Template,
	}
	sc.Template.Spec = spec
	if req.Note != "" && !req.Paused {
		return nil, fmt.Errorf("%w: a note goes with a paused schedule (--paused)", ErrInvalid)
	}
	if err := sc.Validate(); err != nil {
		return nil, err
	}
	// The template must make a valid task (type, spec, node, window):
	// check it now, not at the first tick.
	r, err := s.tasks.Prepare(taskRequest(sc, TickTaskID(sc.UID, now), now))
	if err != nil {
		return nil, fmt.Errorf("task template: %w", err)
	}
	// Store what the task store resolved (the node a spec pins, the
	// window's zone), so every tick makes the same task.
	sc.Template.Node = r.Node
	if r.Window != nil {
		sc.Template.WindowZone = r.Window.Zone
	}
	key, err := s.layout.DefKey(sc.Name)
	if err != nil || req.DryRun {
		return sc, err
	}
	kv, err := s.kv.Create(ctx, key, encode(sc))
	if errors.Is(err, coord.ErrExists) {
		return nil, fmt.Errorf("%w: %s (delete it first, or pick another name)", ErrExists, sc.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("store schedule %s: %w", sc.Name, err)
	}
	sc.version = kv.Version
	return sc, nil
}

// Get reads a schedule and its state (nil before its first tick).
func (s *Store) Get(ctx context.Context, name string) (*Schedule, *State, error) {
	key, err := s.layout.DefKey(name)
	if err != nil {
		return nil, nil, err
	}
	kv, err := s.kv.Get(ctx, key)
	if errors.Is(err, coord.ErrNotFound) {
		return nil, nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read schedule %s: %w", name, err)
	}
	sc, err := decodeSchedule(kv.Value, kv.Version)
	if err != nil {
		return nil, nil, err
	}
	st, err := s.state(ctx, sc.UID)
	return sc, st, err
}

func (s *Store) state(ctx context.Context, uid string) (*State, error) {
	key, err := s.layout.StateKey(uid)
	if err != nil {
		return nil, err
	}
	kv, err := s.kv.Get(ctx, key)
	if errors.Is(err, coord.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read schedule state: %w", err)
	}
	return decodeState(kv.Value, kv.Version)
}

// Status is a schedule with its state, as list and show give it.
type Status struct {
	Schedule *Schedule
	State    *State // nil before the first tick
}

// List returns every schedule, by name.
func (s *Store) List(ctx context.Context) ([]Status, error) {
	defs, err := s.kv.List(ctx, s.layout.DefsDir())
	if err != nil {
		return nil, fmt.Errorf("list schedules: %w", err)
	}
	states, err := s.kv.List(ctx, s.layout.StateDir())
	if err != nil {
		return nil, fmt.Errorf("list schedule states: %w", err)
	}
	byUID := map[string]*State{}
	for _, kv := range states {
		if st, err := decodeState(kv.Value, kv.Version); err == nil {
			byUID[st.UID] = st
		}
	}
	out := make([]Status, 0, len(defs))
	for _, kv := range defs {
		sc, err := decodeSchedule(kv.Value, kv.Version)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", kv.Key, err)
		}
		out = append(out, Status{Schedule: sc, State: byUID[sc.UID]})
	}
	slices.SortFunc(out, func(a, b Status) int { return strings.Compare(a.Schedule.Name, b.Schedule.Name) })
	return out, nil
}

// modify runs f on the current record until its write wins.
func (s *Store) modify(ctx context.Context, name string, f func(sc *Schedule) (bool, error)) (*Schedule, error) {
	key, err := s.layout.DefKey(name)
	if err != nil {
		return nil, err
	}
	for range casRetries {
		sc, _, err := s.Get(ctx, name)
		if err != nil {
			return nil, err
		}
		changed, err := f(sc)
		if err != nil || !changed {
			return sc, err
		}
		sc.Updated = s.Now().UTC()
		kv, err := s.kv.Update(ctx, key, encode(sc), sc.version)
		if errors.Is(err, coord.ErrConflict) {
			continue
		}
		if errors.Is(err, coord.ErrNotFound) {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
		}
		if err != nil {
			return nil, fmt.Errorf("write schedule %s: %w", name, err)
		}
		sc.version = kv.Version
		return sc, nil
	}
	return nil, fmt.Errorf("schedule %s: gave up after %d conflicting writes: %w", name, casRetries, coord.ErrConflict)
}

// Pause stops the schedule's ticks until Resume; ticks while paused are
// not run later. Pausing a paused schedule only changes its note.
func (s *Store) Pause(ctx context.Context, name, note string) (*Schedule, error) {
	if err := validNote(note); err != nil {
		return nil, err
	}
	return s.modify(ctx, name, func(sc *Schedule) (bool, error) {
		if sc.Paused && sc.Note == note {
			return false, nil
		}
		sc.Paused, sc.Note = true, note
		return true, nil
	})
}

// Resume lets the schedule tick again, from now on.
func (s *Store) Resume(ctx context.Context, name string) (*Schedule, error) {
	return s.modify(ctx, name, func(sc *Schedule) (bool, error) {
		if !sc.Paused {
			return false, nil
		}
		sc.Paused, sc.Note, sc.Since = false, "", s.Now().UTC()
		return true, nil
	})
}

// Delete removes the schedule, its state and its pending triggers in one
// transaction. The tasks it made stay (finished ones until the task
// retention).
func (s *Store) Delete(ctx context.Context, name string) error {
	key, err := s.layout.DefKey(name)
	if err != nil {
		return err
	}
	for range casRetries {
		sc, st, err := s.Get(ctx, name)
		if err != nil {
			return err
		}
		conds := []coord.Cond{coord.VersionIs(key, sc.version)}
		ops := []coord.Op{coord.DeleteOp(key)}
		if st != nil {
			sk, err := s.layout.StateKey(sc.UID)
			if err != nil {
				return err
			}
			conds = append(conds, coord.VersionIs(sk, st.version))
			ops = append(ops, coord.DeleteOp(sk))
		}
		trigs, err := s.kv.List(ctx, s.layout.TriggersDir())
		if err != nil {
			return fmt.Errorf("list triggers: %w", err)
		}
		for _, kv := range trigs {
			if n, _, err := s.layout.parseTriggerKey(kv.Key); err == nil && n == name {
				conds = append(conds, coord.VersionIs(kv.Key, kv.Version))
				ops = append(ops, coord.DeleteOp(kv.Key))
			}
		}
		_, err = s.kv.Txn(ctx, conds, ops)
		if errors.Is(err, coord.ErrConflict) {
			continue
		}
		if err != nil {
			return fmt.Errorf("delete schedule %s: %w", name, err)
		}
		return nil
	}
	return fmt.Errorf("schedule %s: gave up after %d conflicting writes: %w", name, casRetries, coord.ErrConflict)
}

// triggerRecord is a pending `schedule trigger` request.
type triggerRecord struct {
	UID       string    `json:"uid"`
	Requested time.Time `json:"requested"`
}

// Trigger asks the leader to run the schedule now, once for id (a UUID
// the caller makes; a retried request with the same id runs once). It
// returns the id of the task the trigger makes.
func (s *Store) Trigger(ctx context.Context, name, id string) (string, error) {
	tkey, err := s.layout.TriggerKey(name, id)
	if err != nil {
		return "", err
	}
	dkey, err := s.layout.DefKey(name)
	if err != nil {
		return "", err
	}
	for range casRetries {
		sc, st, err := s.Get(ctx, name)
		if err != nil {
			return "", err
		}
		if st.handled(id) {
			return TriggerTaskID(sc.UID, id), nil // sent again: it ran once
		}
		if _, err := s.kv.Get(ctx, tkey); err == nil {
			return TriggerTaskID(sc.UID, id), nil // sent again: it is queued
		} else if !errors.Is(err, coord.ErrNotFound) {
			return "", fmt.Errorf("trigger schedule %s: %w", name, err)
		}
		rec := triggerRecord{UID: sc.UID, Requested: s.Now().UTC()}
		_, err = s.kv.Txn(ctx, []coord.Cond{coord.VersionIs(dkey, sc.version), coord.VersionIs(tkey, 0)},
			[]coord.Op{coord.CreateOp(tkey, encode(rec), nil)})
		if errors.Is(err, coord.ErrConflict) {
			continue // the schedule changed, or the same request raced us: look again
		}
		if err != nil {
			return "", fmt.Errorf("trigger schedule %s: %w", name, err)
		}
		return TriggerTaskID(sc.UID, id), nil
	}
	return "", fmt.Errorf("trigger schedule %s: gave up after %d conflicting writes: %w", name, casRetries, coord.ErrConflict)
}

// WaitTrigger waits until the leader has handled trigger id of the
// schedule, and returns its run.
func (s *Store) WaitTrigger(ctx context.Context, name, id string) (Run, error) {
	tkey, err := s.layout.TriggerKey(name, id)
	if err != nil {
		return Run{}, err
	}
	w := s.kv.Watch(ctx, s.layout.TriggersDir())
	defer w.Close()
	present := false
	for ev := range w.Events() {
		switch ev.Type {
		case coord.EventPut:
			present = present || ev.KV.Key == tkey
			continue
		case coord.EventDelete:
			if ev.KV.Key != tkey {
				continue
			}
			present = false
		}
		if present {
			continue
		}
		// Consumed: the leader deleted the request in the transaction
		// that recorded its run.
		_, st, err := s.Get(ctx, name)
		if err != nil {
			return Run{}, err
		}
		for _, r := range slices.Backward(st.runs()) {
			if r.Trigger == id {
				return r, nil
			}
		}
		return Run{}, fmt.Errorf("trigger %s of schedule %s was handled, but its run is no longer among the recent runs: %w", id, name, ErrNotFound)
	}
	if err := ctx.Err(); err != nil {
		return Run{}, fmt.Errorf("trigger %s of schedule %s is queued; no leader handled it yet: %w", id, name, err)
	}
	return Run{}, fmt.Errorf("watch of triggers ended: %w", coord.ErrUnavailable)
}

func (s *State) runs() []Run {
	if s == nil {
		return nil
	}
	return s.Runs
}

// NextRuns previews the next n fire times (tick plus jitter) after now,
// for a schedule with state st (nil before its first tick).
func NextRuns(sc *Schedule, st *State, now time.Time, n int) ([]time.Time, error) {
	tt, err := sc.Timetable()
	if err != nil {
		return nil, err
	}
	from := now
	if st != nil && st.LastTick.After(from) {
		from = st.LastTick
	}
	if sc.Since.After(from) {
		from = sc.Since
	}
	var out []time.Time
	for t := tt.Next(from); !t.IsZero() && len(out) < n; t = tt.Next(t) {
		if st != nil && st.madeAhead(t) {
			continue // ran ahead of time under a stepped clock
		}
		out = append(out, t.Add(sc.JitterOf(t)))
	}
	return out, nil
}
