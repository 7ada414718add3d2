package task

import (
	"fmt"
	"time"
)

// Outcomes of an attempt that the dispatcher reads back: a retry avoids
// the runner an attempt ended with either on (see dispatch.pick).
const (
	OutcomeFailed     = "failed"
	OutcomeRunnerLost = "runner lost"
)

// Assign starts attempt Attempt+1 of a waiting task on runner.
func (r *Record) Assign(runner RunnerInfo, now time.Time) {
	r.State = Running
	r.Attempt++
	r.Runner, r.RunnerSession = runner.Node, runner.Session
	r.Parked = ""
	if r.Started.IsZero() {
		r.Started = now
	}
	r.addAttempt(Attempt{N: r.Attempt, Runner: runner.Node, Started: now, Resumed: len(r.Checkpoint) > 0})
}

// Park ends the current attempt and puts the task back: waiting (another
// runner may resume it from its checkpoint) or, when a pause was requested,
// paused. A requested cancel ends it cancelled; Park reports whether the
// record is now final.
func (r *Record) Park(now time.Time, outcome, why string) (final bool) {
	r.endAttempt(now, outcome, "")
	r.Runner, r.RunnerSession = "", ""
	switch r.Request {
	case RequestCancel:
		r.State = Cancelled
		return true
	case RequestPause:
		r.State = Paused
	default:
		r.State = Waiting
	}
	r.Request = RequestNone
	r.Parked = why
	return false
}

// Succeed ends the task successfully.
func (r *Record) Succeed(now time.Time) {
	r.endAttempt(now, "succeeded", "")
	r.State, r.Error = Succeeded, nil
}

// Fail records a failed attempt. A permanent error, or one retryable error
// too many, fails the task (final is true); otherwise the task waits until
// the backoff has passed.
func (r *Record) Fail(now time.Time, err error, permanent bool, backoff func(retry int) time.Duration) (final bool) {
	r.endAttempt(now, OutcomeFailed, err.Error())
	r.Runner, r.RunnerSession = "", ""
	if r.Request == RequestCancel {
		r.State, r.Request = Cancelled, RequestNone
		return true
	}
	if permanent {
		r.State, r.Error = Failed, &TaskError{Code: "permanent", Message: err.Error()}
		return true
	}
	if r.Retries >= r.MaxRetries {
		r.State = Failed
		r.Error = &TaskError{Code: "retryable", Message: fmt.Sprintf("%v (gave up after %d retries)", err, r.Retries)}
		return true
	}
	r.Retries++
	r.Error = &TaskError{Code: "retryable", Message: err.Error()}
	r.NotBefore = now.Add(backoff(r.Retries))
	if r.Request == RequestPause {
		r.State = Paused
	} else {
		r.State = Waiting
	}
	r.Request = RequestNone
	return false
}

// Backoff is the default retry backoff: 1 s doubling per retry, at most 5 min.
func Backoff(retry int) time.Duration {
	d := time.Second
	for i := 1; i < retry && d < 5*time.Minute; i++ {
		d *= 2
	}
	return min(d, 5*time.Minute)
}
