// Package sdk builds a taskd with your own task types, written in Go.
//
// A task type validates its spec and runs it; it reports progress and
// checkpoints through a Reporter, and a later attempt (on this node or
// another, after a crash) resumes from the last checkpoint. The program
// that calls Main is a complete taskd: the same flags, commands, exit
// codes and documentation as the stock binary, plus the types given.
//
//	func main() {
//		sdk.Main(sdk.WithType("resize", resize{}))
//	}
//
// See examples/gotype for a module outside this repository that does this,
// and docs/task-types.md.
package sdk

import (
	"os"

	"github.com/taskd/taskd/internal/daemon"
	"github.com/taskd/taskd/internal/task"
)

// Type is one kind of task: Validate checks a spec without side effects
// (wrap ErrInvalid); Run executes it, or resumes it when checkpoint is not
// nil, returns nil when it is complete, returns promptly once ctx ends,
// and returns a retryable error unless it is wrapped with Permanent.
type Type = task.Type

// Reporter is what a running attempt uses: Checkpoint (fenced: an error
// wrapping ErrFenced means another attempt owns the task; return), Progress,
// Active, Attempt, TaskID and RateLimit.
type Reporter = task.Reporter

// Progress is what an attempt reports: done and total in the type's own
// units, and optionally bytes, rate and ETA.
type Progress = task.Progress

// Errors a type returns or checks.
var (
	// ErrInvalid marks a bad spec (Validate): the task is refused.
	ErrInvalid = task.ErrInvalid
	// ErrFenced is wrapped by Reporter.Checkpoint when this attempt no
	// longer owns the task: stop at once, without side effects.
	ErrFenced = task.ErrFenced
)

// Permanent marks err as not worth retrying: the task fails at once.
func Permanent(err error) error { return task.Permanent(err) }

// Option adds to the taskd that Main runs.
type Option func(task.Registry)

// WithType adds the task type name (1-32 lower-case letters, digits, '-',
// '_', starting with a letter; not a built-in's name: taskd refuses to
// start otherwise, with exit 78).
func WithType(name string, t Type) Option { return func(r task.Registry) { r[name] = t } }

// Main runs taskd with the command line of the process and the types of
// opts, and exits with taskd's exit code (docs/exit-codes.md).
func Main(opts ...Option) {
	types := task.Registry{}
	for _, o := range opts {
		o(types)
	}
	os.Exit(daemon.MainWith(os.Args[1:], types))
}
