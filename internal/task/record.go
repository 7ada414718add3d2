// Package task is the task model: the record kept in the coordination store,
// its states, the store layout, and the writes that move a task between
// states. The store is the source of truth; the dispatcher (leader) and the
// runners (every node) only ever change a record with a compare-and-swap on
// its version, so concurrent writers cannot lose each other's updates.
//
// Layout under the root (default /taskd; keys.Tasks builds every key):
//
//	tasks/active/ID          unfinished records (waiting, running, paused)
//	tasks/done/XY/ID         finished records, sharded by the id's first two
//	                         hex digits so that no directory holds more than
//	                         a few hundred children at 100k retained tasks
//	assigned/NODE/ID         one key per task running on NODE; the runner
//	                         watches this small directory
//	runners/NODE             a live runner (bound to its session)
//	sessions/SESSION         bound to a runner's session, never modified: the
//	                         fencing condition of every runner write
//	config/runners/NODE      cordon and drain marks set by operators
//
// Fencing: a runner's write carries two conditions checked by the store: the
// record's version (any reassignment changes it) and the existence of the
// runner's own session key (the store deletes it when the session ends). A
// runner that was paused or partitioned past its session cannot write.
package task

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/window"
)

// State is a task's lifecycle state.
type State string

// States. Succeeded, failed and cancelled are final.
const (
	Waiting   State = "waiting"
	Running   State = "running"
	Paused    State = "paused"
	Succeeded State = "succeeded"
	Failed    State = "failed"
	Cancelled State = "cancelled"
)

// Final reports whether no further change can happen.
func (s State) Final() bool { return s == Succeeded || s == Failed || s == Cancelled }

// ParseState accepts a state name.
func ParseState(s string) (State, error) {
	switch st := State(s); st {
	case Waiting, Running, Paused, Succeeded, Failed, Cancelled:
		return st, nil
	}
	return "", fmt.Errorf("%w: state %q: use waiting, running, paused, succeeded, failed or cancelled", ErrInvalid, s)
}

// Request is a user's pending request to a running task.
type Request string

// Requests a runner acts on at the task's next checkpoint.
const (
	RequestNone   Request = ""
	RequestPause  Request = "pause"
	RequestCancel Request = "cancel"
)

// Sentinel errors.
var (
	// ErrInvalid: bad input; nothing was changed. It is keys.ErrInvalid.
	ErrInvalid  = keys.ErrInvalid
	ErrNotFound = errors.New("task not found")
	// ErrRunnerNotFound: no runner of that name; errors.Is(err,
	// ErrNotFound) holds too, so callers map both alike.
	ErrRunnerNotFound error = runnerNotFound{}
	// ErrState: the task's state does not allow the request (for example
	// cancel on a finished task).
	ErrState = errors.New("task state does not allow this")
	// ErrFenced: the writer no longer owns the task's current attempt.
	ErrFenced = errors.New("fenced: this runner no longer owns the task's attempt")
	// ErrStopAsked is the context cause of an attempt asked to stop
	// while it still owns the task (cancel, pause, drain, window): it may
	// finish its unit of work and checkpoint. Any other cause (fenced,
	// reassigned, the session ending) gives it no time.
	ErrStopAsked = errors.New("stop asked")
)

type runnerNotFound struct{}

func (runnerNotFound) Error() string        { return "runner not found" }
func (runnerNotFound) Is(target error) bool { return target == ErrNotFound }

// Progress is what a task reports about its work.
type Progress struct {
	Done  int64 `json:"done"`
	Total int64 `json:"total"`
	Bytes int64 `json:"bytes,omitempty"`
	// Rate in bytes (or units) per second, measured by the task.
	Rate float64 `json:"rate,omitempty"`
	// ETASeconds is the estimated time left; 0 when unknown.
	ETASeconds float64 `json:"eta_seconds,omitempty"`
}

// TaskError is why an attempt or a task failed.
type TaskError struct {
	// Code: "retryable", "permanent", "runner_lost", "invalid_spec".
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Attempt is one entry of the task's history.
type Attempt struct {
	N        int       `json:"n"`
	Runner   string    `json:"runner"`
	Started  time.Time `json:"started"`
	Ended    time.Time `json:"ended,omitzero"`
	Outcome  string    `json:"outcome,omitempty"`
	Error    string    `json:"error,omitempty"`
	Resumed  bool      `json:"resumed_from_checkpoint,omitempty"`
	Progress int64     `json:"progress_done,omitempty"`
}

// historyLen bounds the kept attempts: the first and the latest ones.
const historyLen = 10

// Window is a task's daily run window as stored.
type Window struct {
	Spec string `json:"spec"` // HH:MM-HH:MM
	Zone string `json:"zone"` // IANA zone name
}

// Parse turns the stored window into a window.Window.
func (w *Window) Parse() (window.Window, error) {
	if w == nil || w.Spec == "" {
		return window.Window{}, nil
	}
	loc, err := time.LoadLocation(w.Zone)
	if err != nil {
		return window.Window{}, fmt.Errorf("%w: time zone %q: %w", ErrInvalid, w.Zone, err)
	}
	return window.Parse(w.Spec, loc)
}

// Record is a task as kept in the store.
type Record struct {
	ID       string          `json:"id"`
	Type     string          `json:"type"`
	Spec     json.RawMessage `json:"spec"`
	State    State           `json:"state"`
	Request  Request         `json:"request,omitempty"`
	Priority int             `json:"priority"`
	// Node, when set, is the only runner the task may go to.
	Node       string  `json:"node,omitempty"`
	Window     *Window `json:"window,omitempty"`
	MaxRetries int     `json:"max_retries"`
	// RateLimit (bytes per second, 0 unlimited), when RateLimitSet,
	// overrides the spec's rate; a running attempt applies a change at
	// once (task types that throttle I/O: copy).
	RateLimit    int64 `json:"rate_limit,omitempty"`
	RateLimitSet bool  `json:"rate_limit_set,omitempty"`

	Attempt       int    `json:"attempt"`
	Runner        string `json:"runner,omitempty"`
	RunnerSession string `json:"runner_session,omitempty"`
	// Retries counts failed attempts that were retried.
	Retries   int       `json:"retries,omitempty"`
	NotBefore time.Time `json:"not_before,omitzero"`

	Progress   Progress   `json:"progress"`
	Checkpoint []byte     `json:"checkpoint,omitempty"`
	Error      *TaskError `json:"error,omitempty"`
	// Parked says why a task that ran was put back (window closed,
	// runner drained, runner lost); Explain uses it.
	Parked string `json:"parked,omitempty"`

	Created  time.Time `json:"created"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	Updated  time.Time `json:"updated"`

	History []Attempt `json:"history,omitempty"`

	// Schedule is the schedule that made the task, and Tick the tick it
	// was made for (empty for a task a user created).
	Schedule string    `json:"schedule,omitempty"`
	Tick     time.Time `json:"tick,omitzero"`
	// IdempotencyKey is the key the task was created with, if any.
	IdempotencyKey string `json:"idempotency_key,omitempty"`
	// Key is the task's concurrency key: at most KeyLimit tasks with it
	// run at once, cluster-wide (the dispatcher enforces it).
	Key      string `json:"key,omitempty"`
	KeyLimit int    `json:"key_limit,omitempty"`
	// After are tasks that must end before this one starts; AfterPolicy
	// "" needs them to succeed, AfterFinished only to end.
	After       []string `json:"after,omitempty"`
	AfterPolicy string   `json:"after_policy,omitempty"`

	// version is the store version the record was read at.
	version int64
	// held is the runner whose assignment key exists for the stored
	// version ("" when the stored record is not running).
	held string
}

// Version is the store version this copy was read at (0: not from the store).
func (r *Record) Version() int64 { return r.version }

// Clone returns a deep copy.
func (r *Record) Clone() *Record {
	c := *r
	c.Spec = append(json.RawMessage(nil), r.Spec...)
	c.Checkpoint = append([]byte(nil), r.Checkpoint...)
	c.History = append([]Attempt(nil), r.History...)
	c.After = append([]string(nil), r.After...)
	if r.Window != nil {
		w := *r.Window
		c.Window = &w
	}
	if r.Error != nil {
		e := *r.Error
		c.Error = &e
	}
	return &c
}

// Decode reads the record stored at key (an active, finished or
// assignment key; the last segment is the task id). A record is refused
// (an error wrapping ErrInvalid) unless its id is a valid task id equal to
// the key's last segment, and its runner, runner session and node are
// valid names when set: a record written around taskd with a crafted id or
// name is never acted on.
func Decode(key string, b []byte, version int64) (*Record, error) {
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("decode task record %s: %w", keys.Quote(key), err)
	}
	if err := r.check(key); err != nil {
		return nil, fmt.Errorf("task record %s: %w", keys.Quote(key), err)
	}
	r.version = version
	if r.State == Running {
		r.held = r.Runner
	}
	return &r, nil
}

// check validates the names a stored record carries into keys.
func (r *Record) check(key string) error {
	if err := keys.ValidTaskID(r.ID); err != nil {
		return err
	}
	if !strings.HasSuffix(key, "/"+r.ID) {
		return fmt.Errorf("%w: the record's id %s is not its key's", ErrInvalid, r.ID)
	}
	if err := keys.ValidTaskType(r.Type); err != nil {
		return err
	}
	for _, n := range []string{r.Runner, r.Node} {
		if n != "" {
			if err := keys.ValidName(n); err != nil {
				return err
			}
		}
	}
	if r.RunnerSession != "" {
		return keys.ValidSession(r.RunnerSession)
	}
	return nil
}

func (r *Record) encode() []byte {
	b, err := json.Marshal(r)
	if err != nil {
		// Every field is a plain value; Marshal cannot fail on it.
		panic(fmt.Sprintf("task: encode record: %v", err))
	}
	return b
}

// Owns reports whether runner on session owns the current attempt n.
func (r *Record) Owns(runner, session string, attempt int) bool {
	return r.State == Running && r.Runner == runner && r.RunnerSession == session && r.Attempt == attempt
}

// endAttempt closes the latest history entry.
func (r *Record) endAttempt(now time.Time, outcome, errMsg string) {
	if n := len(r.History); n > 0 && r.History[n-1].N == r.Attempt && r.History[n-1].Ended.IsZero() {
		h := &r.History[n-1]
		h.Ended, h.Outcome, h.Error, h.Progress = now, outcome, errMsg, r.Progress.Done
	}
}

func (r *Record) addAttempt(a Attempt) {
	r.History = append(r.History, a)
	if len(r.History) > historyLen {
		// keep the first attempt and the latest ones
		r.History = append(r.History[:1], r.History[len(r.History)-historyLen+1:]...)
	}
}

// Shards lists every possible shard name of DoneDir.
func Shards() []string {
	const hex = "0123456789abcdef"
	out := make([]string, 0, 256)
	for _, a := range hex {
		for _, b := range hex {
			out = append(out, string(a)+string(b))
		}
	}
	return out
}
