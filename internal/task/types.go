package task

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Reporter is what a running attempt uses to publish its state.
type Reporter interface {
	// Checkpoint stores cp and p, fenced by the attempt's assignment. It
	// returns an error wrapping ErrFenced when the attempt is no longer
	// current, and the context's cause when the attempt was asked to stop
	// (cancel, pause, window closed, drain): the task must return then.
	// A checkpoint is a promise: everything it covers is durable.
	Checkpoint(cp []byte, p Progress) error
	// Progress records progress between checkpoints. It is written to the
	// store at most about once a second; it never blocks for long.
	Progress(p Progress)
	// Active reports whether this attempt may still do work: its runner's
	// session is alive by the local deadline and the attempt has not been
	// told to stop. A task checks it right before each unit of work that
	// must not overlap with another attempt.
	Active() bool
	// Attempt is the attempt number (1 for the first run).
	Attempt() int
	// TaskID is the task's id.
	TaskID() string
	// RateLimit is the rate (bytes per second, 0 unlimited) a user set on
	// the task, if set; changed is closed when it changes. Types that
	// throttle I/O apply it over their spec's rate.
	RateLimit() (limit int64, set bool, changed <-chan struct{})
}

// Type is one kind of task.
type Type interface {
	// Validate checks a spec without side effects; errors wrap ErrInvalid.
	Validate(spec json.RawMessage) error
	// Run executes (or resumes, when checkpoint is not nil) the task. It
	// returns nil when the task is complete. It must return promptly once
	// ctx ends. Errors are retryable unless wrapped with Permanent.
	Run(ctx context.Context, spec json.RawMessage, checkpoint []byte, r Reporter) error
}

// RateLimited is implemented by types that throttle their I/O and apply a
// rate set on the task (Reporter.RateLimit); only their tasks take one.
type RateLimited interface {
	RateLimited()
}

// Constrainer is implemented by types whose spec pins the task to a node
// (for example a copy from a local file).
type Constrainer interface {
	Node(spec json.RawMessage) string
}

// Preflighter is implemented by types whose spec can be checked against a
// node's resources before the task is created (a copy: its files exist,
// lie under the roots, and fit). The API runs it on the node that receives
// the create, so that bad input is refused there and no record is written.
type Preflighter interface {
	// Preflight checks a spec that Validate accepted, without side
	// effects. runsHere says whether this node is the one that will run
	// the task (the task is pinned to it); when false, only what holds on
	// every node can be checked. Errors wrap ErrInvalid; a resource that
	// is only unavailable for now is no error.
	Preflight(ctx context.Context, spec json.RawMessage, runsHere bool) error
}

type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent marks err as not worth retrying: the task fails at once.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// IsPermanent reports whether err was marked with Permanent.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

// Registry maps type names to types.
type Registry map[string]Type

// Lookup finds a type, with an error naming the known ones.
func (r Registry) Lookup(name string) (Type, error) {
	t, ok := r[name]
	if !ok {
		return nil, fmt.Errorf("%w: unknown task type %q (known: %s)", ErrInvalid, name, strings.Join(r.Names(), ", "))
	}
	return t, nil
}

// Names lists the registered types, sorted.
func (r Registry) Names() []string { return slices.Sorted(maps.Keys(r)) }
