package task

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/taskd/taskd/internal/keys"
)

// MaxAfter bounds how many tasks one task may wait for.
const MaxAfter = 32

// After policies: when a dependency that did not succeed lets the
// dependent run.
const (
	// AfterSucceeded (the default, stored as ""): every dependency must
	// succeed; one that fails or is cancelled fails the dependent.
	AfterSucceeded = "succeeded"
	// AfterFinished: the dependent runs once every dependency has ended,
	// however it ended.
	AfterFinished = "finished"
)

// CodeDependency is the error code of a task failed because a task it
// waited for did not succeed.
const CodeDependency = "dependency_failed"

// checkAfter validates the dependencies of a new task with id self and
// returns the policy to store.
func checkAfter(self string, after []string, policy string) (string, error) {
	switch policy {
	case "", AfterSucceeded:
		policy = ""
	case AfterFinished:
	default:
		return "", fmt.Errorf("%w: after policy %s: use %s or %s", ErrInvalid, keys.Quote(policy), AfterSucceeded, AfterFinished)
	}
	if len(after) == 0 {
		if policy != "" {
			return "", fmt.Errorf("%w: an after policy without tasks to wait for", ErrInvalid)
		}
		return "", nil
	}
	if len(after) > MaxAfter {
		return "", fmt.Errorf("%w: waits for %d tasks; at most %d", ErrInvalid, len(after), MaxAfter)
	}
	for i, id := range after {
		if err := keys.ValidTaskID(id); err != nil {
			return "", err
		}
		if id == self || slices.Contains(after[:i], id) {
			return "", fmt.Errorf("%w: --after %s is given twice or is the task itself", ErrInvalid, id)
		}
	}
	return policy, nil
}

// depsExist refuses a new task that waits for a task that does not exist;
// since every dependency exists before its dependent, there are no cycles.
func (s *Store) depsExist(ctx context.Context, r *Record) error {
	for _, id := range r.After {
		if _, err := s.Get(ctx, id); errors.Is(err, ErrNotFound) {
			return fmt.Errorf("%w: --after %s: no such task", ErrNotFound, id)
		} else if err != nil {
			return err
		}
	}
	return nil
}

// AfterReason says whether r may start as far as the tasks it waits for
// go: wait names one that has not ended; fail, when not nil, is the error
// r must fail with (a dependency failed, was cancelled or is gone, under
// the default policy). deps holds the dependencies found; a missing one
// is gone.
func (r *Record) AfterReason(deps map[string]*Record) (wait string, fail *TaskError) {
	for _, id := range r.After {
		d := deps[id]
		switch {
		case d == nil:
			if r.AfterPolicy == "" {
				return "", &TaskError{Code: CodeDependency, Message: fmt.Sprintf("task %s it waited for no longer exists", id)}
			}
		case !d.State.Final():
			return fmt.Sprintf("waiting for task %s (%s)", id, d.State), nil
		case d.State != Succeeded && r.AfterPolicy == "":
			msg := fmt.Sprintf("task %s it waited for ended %s", id, d.State)
			if d.Error != nil {
				msg += ": " + d.Error.Message
			}
			return "", &TaskError{Code: CodeDependency, Message: msg}
		}
	}
	return "", nil
}

// FailWaiting fails a waiting task that can never run (a dependency
// failed) and moves it to the finished tasks, in the caller's fenced
// transaction.
func (s *Store) FailWaiting(ctx context.Context, txn TxnFunc, r *Record, why *TaskError) error {
	if r.State != Waiting && r.State != Paused {
		return fmt.Errorf("fail task %s in state %s: %w", r.ID, r.State, ErrState)
	}
	r.State, r.Error = Failed, why
	return s.Finish(ctx, txn, r)
}
