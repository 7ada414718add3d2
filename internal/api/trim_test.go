package api

import (
	"errors"
	"fmt"
	"testing"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/internal/bootstrap"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/task"
)

// TestOnePrefix (issue 13): taskctl printed "invalid_argument: invalid
// argument: ..." and "failed_precondition: task state does not allow this:
// ...". The message no longer repeats its code; errors.Is still works on
// the server side.
func TestOnePrefix(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("%w: unknown task type %q", keys.ErrInvalid, "x"), `invalid_argument: unknown task type "x"`},
		{fmt.Errorf("%w: the task was already cancelled (cannot cancel a finished task)", task.ErrState), "failed_precondition: the task was already cancelled (cannot cancel a finished task)"},
		{fmt.Errorf("%w: 0000", task.ErrNotFound), "not_found: task not found: 0000"},
		{fmt.Errorf("%w: no live runner named x", task.ErrRunnerNotFound), "not_found: runner not found: no live runner named x"},
		{keys.ErrInvalid, "invalid_argument: invalid argument"},
		// The join client wraps the answer in the same words again; the
		// log read "join not possible now: unavailable: join not possible now: etcd: ...".
		{fmt.Errorf("%w: etcd: too many learners", bootstrap.ErrUnavailable), "unavailable: etcd: too many learners"},
	} {
		ce := toConnect(tc.err)
		if ce.Error() != tc.want {
			t.Errorf("toConnect(%v) = %q, want %q", tc.err, ce.Error(), tc.want)
		}
		if !errors.Is(ce, tc.err) && !errors.Is(ce, errors.Unwrap(tc.err)) {
			t.Errorf("toConnect(%v) lost the error chain", tc.err)
		}
	}
	if c := connect.CodeOf(toConnect(fmt.Errorf("%w: x", task.ErrRunnerNotFound))); c != connect.CodeNotFound {
		t.Errorf("runner not found: code %v", c)
	}
}
