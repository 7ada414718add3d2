// Package schedule is recurring tasks: a schedule record in the store (a
// cron expression in an IANA zone, or an interval; the task template it
// makes; the overlap policy, catch-up window, jitter, pause and keep-last),
// its timetable, and the leader component that fires its ticks.
//
// Guarantees:
//   - Exactly once per tick. The task made for a tick has an id derived from
//     the schedule's uid and the tick (UUIDv5), and the leader creates it in
//     the same transaction that advances the schedule's state record past
//     the tick, conditional on the leader's epoch and on the state record's
//     version. A leader that dies at the tick either wrote both or neither;
//     its successor reads the state and fires what is left, once.
//   - Ticks that came due while no leader ran are caught up: the latest
//     one, if it is within the catch-up window, runs; older ones are
//     reported missed.
//   - Daylight saving time: a tick in a skipped hour runs once when the gap
//     ends; a tick in a repeated hour runs once (see Timetable).
//
// Non-guarantees:
//   - A tick runs at its time plus jitter, on the leader's wall clock; a
//     leader whose clock is wrong fires at the wrong instant (once).
//   - cancel-previous cancels the previous runs through the task store's
//     cancel path, which is not fenced by the epoch: a deposed leader may
//     still ask a previous run to stop, which its successor would do too.
package schedule

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/google/uuid"
)

// Overlap is what a tick does while the schedule's previous task is
// unfinished.
type Overlap string

// Overlap policies.
const (
	// OverlapSkip: the tick is skipped (the default).
	OverlapSkip Overlap = "skip"
	// OverlapBufferOne: the tick waits until the previous task ends; at
	// most one tick waits, later ones are skipped.
	OverlapBufferOne Overlap = "buffer-one"
	// OverlapCancelPrevious: the previous tasks are cancelled, and the
	// tick runs when they have ended.
	OverlapCancelPrevious Overlap = "cancel-previous"
	// OverlapAllow: the tick runs at once, alongside the previous task.
	OverlapAllow Overlap = "allow"
)

// ParseOverlap accepts a policy name ("" is skip).
func ParseOverlap(s string) (Overlap, error) {
	switch o := Overlap(s); o {
	case "":
		return OverlapSkip, nil
	case OverlapSkip, OverlapBufferOne, OverlapCancelPrevious, OverlapAllow:
		return o, nil
	}
	return "", fmt.Errorf("%w: overlap policy %s: use skip, buffer-one, cancel-previous or allow", ErrInvalid, quote(s))
}

// Defaults and limits of the settings.
const (
	DefaultCatchUp  = time.Hour
	MaxCatchUp      = 366 * 24 * time.Hour
	MaxJitter       = time.Hour
	DefaultKeepLast = 10
	MaxKeepLast     = 1000
	MaxNote         = 200
	// runsKept is how many recent runs the state record keeps.
	runsKept = 20
	// triggersKept is how many handled trigger ids it remembers.
	triggersKept = 100
)

// Template is the task a tick makes; the fields mean what they mean for
// `task create`.
type Template struct {
	Type       string          `json:"type"`
	Spec       json.RawMessage `json:"spec,omitempty"`
	Priority   int             `json:"priority,omitempty"`
	Node       string          `json:"node,omitempty"`
	Window     string          `json:"window,omitempty"`
	WindowZone string          `json:"window_zone,omitempty"`
	MaxRetries *int            `json:"max_retries,omitempty"`
}

// Schedule is the record an operator sets, at schedules/defs/NAME.
type Schedule struct {
	Name string `json:"name"`
	// UID is new for every schedule created, so that a schedule deleted
	// and created again under its name starts afresh (new task ids, new
	// state record).
	UID      string   `json:"uid"`
	Spec     Spec     `json:"spec"`
	Template Template `json:"template"`
	Overlap  Overlap  `json:"overlap"`
	// CatchUp is how late a tick may still run after no leader ran at
	// its time (0: never).
	CatchUp Duration `json:"catch_up"`
	// Jitter delays each tick by a fixed amount in [0, Jitter) derived
	// from the tick, the same on every leader.
	Jitter   Duration `json:"jitter,omitempty"`
	KeepLast int      `json:"keep_last"`
	Paused   bool     `json:"paused,omitempty"`
	Note     string   `json:"note,omitempty"`
	// Since is when ticks start to count: creation, or the last resume
	// (ticks while paused are not run later).
	Since   time.Time `json:"since"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`

	version int64
}

// Version is the store version the record was read at.
func (s *Schedule) Version() int64 { return s.version }

// Duration is a time.Duration stored as a Go duration string.
type Duration time.Duration

// MarshalJSON writes "1h30m0s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Validate checks the record's own fields and their relations; the task
// template's type and spec are checked against the task types by the
// store (task.Store.Prepare).
func (s *Schedule) Validate() error {
	_, err := s.compile()
	return err
}

// compile validates the record and returns its timetable: one compile of
// the spec, where Validate then Timetable would make two (a new leader
// takes in every schedule at once).
func (s *Schedule) compile() (*Timetable, error) {
	if err := ValidName(s.Name); err != nil {
		return nil, err
	}
	if err := validUID("schedule uid", s.UID); err != nil {
		return nil, err
	}
	tt, err := s.Spec.Compile(s.Created)
	if err != nil {
		return nil, err
	}
	if _, err := ParseOverlap(string(s.Overlap)); err != nil || s.Overlap == "" {
		return nil, fmt.Errorf("%w: overlap policy %s: use skip, buffer-one, cancel-previous or allow", ErrInvalid, quote(string(s.Overlap)))
	}
	if d := time.Duration(s.CatchUp); d < 0 || d > MaxCatchUp {
		return nil, fmt.Errorf("%w: catch-up window %v: use 0 (never catch up) to %v", ErrInvalid, d, MaxCatchUp)
	}
	j := time.Duration(s.Jitter)
	if j < 0 || j > MaxJitter {
		return nil, fmt.Errorf("%w: jitter %v: use 0 to %v", ErrInvalid, j, MaxJitter)
	}
	if tt.IsInterval() && j >= tt.Every() {
		return nil, fmt.Errorf("%w: jitter %v must be shorter than the interval %v", ErrInvalid, j, tt.Every())
	}
	if s.KeepLast < 1 || s.KeepLast > MaxKeepLast {
		return nil, fmt.Errorf("%w: keep-last %d: use 1 to %d", ErrInvalid, s.KeepLast, MaxKeepLast)
	}
	if err := validNote(s.Note); err != nil {
		return nil, err
	}
	if s.Template.Type == "" {
		return nil, fmt.Errorf("%w: the task template needs a type", ErrInvalid)
	}
	if s.Created.IsZero() || s.Since.IsZero() {
		return nil, fmt.Errorf("%w: schedule %s has no creation time", ErrInvalid, s.Name)
	}
	return tt, nil
}

func validNote(n string) error {
	if len(n) > MaxNote {
		return fmt.Errorf("%w: note of %d bytes: use at most %d", ErrInvalid, len(n), MaxNote)
	}
	if strings.IndexFunc(n, unicode.IsControl) >= 0 {
		return fmt.Errorf("%w: note %s contains a control character", ErrInvalid, quote(n))
	}
	return nil
}

// Timetable compiles the record's spec (valid records only).
func (s *Schedule) Timetable() (*Timetable, error) { return s.Spec.Compile(s.Created) }

// JitterOf is the delay of tick: the same on every node, in [0, Jitter).
func (s *Schedule) JitterOf(tick time.Time) time.Duration {
	j := time.Duration(s.Jitter).Milliseconds()
	if j <= 0 {
		return 0
	}
	h := fnv.New64a()
	fmt.Fprintf(h, "%s|%d", s.UID, tick.UnixNano())
	return time.Duration(h.Sum64()%uint64(j)) * time.Millisecond
}

// idSpace is the UUIDv5 namespace of task ids made by schedules.
var idSpace = uuid.MustParse("5d0c6f9e-8d1b-4f43-9a3e-2f1d7c9b6a10")

// TickTaskID is the id of the task made for tick: the same on every
// leader, so the store refuses a second one.
func TickTaskID(uid string, tick time.Time) string {
	return uuid.NewSHA1(idSpace, []byte(uid+"|tick|"+tick.UTC().Format(time.RFC3339Nano))).String()
}

// TriggerTaskID is the id of the task made for trigger request id.
func TriggerTaskID(uid, id string) string {
	return uuid.NewSHA1(idSpace, []byte(uid+"|trigger|"+id)).String()
}

// Outcome is what became of a tick.
type Outcome string

// Outcomes of a tick, as the state records them and the timeline tells.
const (
	Fired     Outcome = "fired"
	CaughtUp  Outcome = "caught_up"
	Skipped   Outcome = "skipped"
	Missed    Outcome = "missed"
	Buffered  Outcome = "buffered"
	Triggered Outcome = "triggered"
)

// Run is one tick's outcome.
type Run struct {
	Tick    time.Time `json:"tick"`
	At      time.Time `json:"at"`
	Outcome Outcome   `json:"outcome"`
	Task    string    `json:"task,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	// Count of ticks a missed run stands for.
	Count int `json:"count,omitempty"`
	// After, on a missed run: it stands for the ticks after this time up
	// to Tick (the decided tick its walk started from, or the schedule's
	// Since); ticks at or before it were decided before it. Zero in runs
	// recorded before the field existed.
	After   time.Time `json:"after,omitzero"`
	Trigger string    `json:"trigger,omitempty"`
}

// Pending is a tick (or a trigger) that waits for the schedule's previous
// tasks to end.
type Pending struct {
	Tick    time.Time `json:"tick"`
	Trigger string    `json:"trigger,omitempty"`
}

// State is what the leader fired for a schedule, at schedules/state/UID.
// Only the leader writes it, fenced by its epoch, in the transaction that
// creates the tick's task.
type State struct {
	UID  string `json:"uid"`
	Name string `json:"name"`
	// LastTick is the latest tick decided (fired, skipped, missed or
	// buffered): ticks at or before it are never fired again.
	LastTick time.Time `json:"last_tick,omitzero"`
	// Pending is a tick waiting for the previous tasks to end
	// (buffer-one, cancel-previous).
	Pending *Pending `json:"pending,omitempty"`
	// Runs are the latest outcomes, newest last.
	Runs []Run `json:"runs,omitempty"`
	// Made are the ids of the tasks made, oldest first; finished ones
	// beyond KeepLast are deleted.
	Made []string `json:"made,omitempty"`
	// Triggers are the latest trigger requests handled, so that a
	// request sent again is not run again.
	Triggers []string `json:"triggers,omitempty"`
	// Ahead are ticks after LastTick that already made their task: a
	// leader whose clock was ahead fired them early, and a later leader
	// rewound LastTick to its own clock (plan's rewind). They are never
	// fired again.
	Ahead []time.Time `json:"ahead,omitempty"`

	version int64
}

// Version is the store version the state was read at (0: absent).
func (s *State) Version() int64 { return s.version }

func (s *State) clone() *State {
	c := *s
	if s.Pending != nil {
		p := *s.Pending
		c.Pending = &p
	}
	c.Runs = append([]Run(nil), s.Runs...)
	c.Made = append([]string(nil), s.Made...)
	c.Triggers = append([]string(nil), s.Triggers...)
	c.Ahead = append([]time.Time(nil), s.Ahead...)
	return &c
}

func (s *State) addRun(r Run) {
	s.Runs = append(s.Runs, r)
	if len(s.Runs) > runsKept {
		s.Runs = append([]Run(nil), s.Runs[len(s.Runs)-runsKept:]...)
	}
}

func (s *State) handled(trigger string) bool { return s != nil && slices.Contains(s.Triggers, trigger) }

func (s *State) addTrigger(id string) {
	s.Triggers = append(s.Triggers, id)
	if len(s.Triggers) > triggersKept {
		s.Triggers = append([]string(nil), s.Triggers[len(s.Triggers)-triggersKept:]...)
	}
}

// LastRun is the newest run, if any.
func (s *State) LastRun() (Run, bool) {
	if s == nil || len(s.Runs) == 0 {
		return Run{}, false
	}
	return s.Runs[len(s.Runs)-1], true
}

func decodeSchedule(b []byte, version int64) (*Schedule, error) {
	var s Schedule
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("decode schedule: %w", err)
	}
	s.version = version
	return &s, nil
}

func decodeState(b []byte, version int64) (*State, error) {
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("decode schedule state: %w", err)
	}
	s.version = version
	return &s, nil
}

func encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Plain values only; Marshal cannot fail on them.
		panic(fmt.Sprintf("schedule: encode: %v", err))
	}
	return b
}
