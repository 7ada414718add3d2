// Package tasktype holds the built-in task types: sleep and noop, used by
// tests and benchmarks, and copy, the volume copy.
//
// Test aids: the sleep task's "ledger" (a file, named in the spec, that
// each unit of work appends a line to) exists only in binaries built with
// -tags testaids, as the test harness builds taskd. A production binary
// refuses a spec that names it, like any unknown field: a request must not
// make a root daemon write to a path it chooses.
package tasktype

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/taskd/taskd/internal/metrics"
	"github.com/taskd/taskd/internal/task"
)

// Builtin returns the registry of every built-in type; cp carries this
// node's confinement of copy endpoints and its copy memory pool; m
// (optional) receives copy figures.
func Builtin(cp Copy, log *slog.Logger, m *metrics.Set) task.Registry {
	cp.Log, cp.Metrics = log, m
	return task.Registry{"sleep": Sleep{}, "noop": Noop{}, "copy": cp}
}

// Noop succeeds at once; it measures the task machinery itself.
type Noop struct{}

// Validate accepts an empty spec or an empty object.
func (Noop) Validate(spec json.RawMessage) error {
	if len(spec) == 0 {
		return nil
	}
	var m map[string]any
	if err := json.Unmarshal(spec, &m); err != nil || len(m) != 0 {
		return fmt.Errorf("%w: noop takes no spec (got %s)", task.ErrInvalid, spec)
	}
	return nil
}

// Run returns nil.
func (Noop) Run(context.Context, json.RawMessage, []byte, task.Reporter) error { return nil }

// Sleep waits for a duration, checkpointing its elapsed time.
type Sleep struct{}

type sleepSpec struct {
	Duration           duration `json:"duration"`
	CheckpointInterval duration `json:"checkpoint_interval"`
	// FailAfter fails each attempt this long after it starts.
	FailAfter duration `json:"fail_after"`
	// Permanent makes the FailAfter error permanent (no retry).
	Permanent bool `json:"permanent"`
	// sleepAids holds the test aids (the ledger) in binaries built with
	// -tags testaids, and nothing otherwise: a production binary refuses
	// a spec that names one, as any unknown field.
	sleepAids
}

type sleepCheckpoint struct {
	ElapsedMS int64 `json:"elapsed_ms"`
}

// duration is a time.Duration in JSON as "5s".
type duration time.Duration

func (d *duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string such as \"5s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = duration(v)
	return nil
}

func parseSleep(raw json.RawMessage) (sleepSpec, error) {
	s := sleepSpec{CheckpointInterval: duration(time.Second)}
	dec := json.NewDecoder(bytesReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return s, fmt.Errorf("%w: sleep spec: %w", task.ErrInvalid, err)
	}
	switch {
	case s.Duration <= 0:
		return s, fmt.Errorf("%w: sleep spec: duration must be positive, e.g. {\"duration\": \"5s\"}", task.ErrInvalid)
	case s.CheckpointInterval < duration(10*time.Millisecond):
		return s, fmt.Errorf("%w: sleep spec: checkpoint_interval must be at least 10ms", task.ErrInvalid)
	case s.FailAfter < 0:
		return s, fmt.Errorf("%w: sleep spec: fail_after must not be negative", task.ErrInvalid)
	}
	return s, nil
}

// Validate implements task.Type.
func (Sleep) Validate(spec json.RawMessage) error { _, err := parseSleep(spec); return err }

// Run implements task.Type.
func (Sleep) Run(ctx context.Context, raw json.RawMessage, cp []byte, r task.Reporter) error {
	s, err := parseSleep(raw)
	if err != nil {
		return task.Permanent(err)
	}
	var c sleepCheckpoint
	if len(cp) > 0 {
		if err := json.Unmarshal(cp, &c); err != nil {
			return task.Permanent(fmt.Errorf("sleep checkpoint %q: %w", cp, err))
		}
	}
	total := time.Duration(s.Duration)
	elapsed := time.Duration(c.ElapsedMS) * time.Millisecond
	started := time.Now()
	t := time.NewTimer(0)
	defer t.Stop()
	<-t.C
	for elapsed < total {
		step := min(time.Duration(s.CheckpointInterval), total-elapsed)
		if s.FailAfter > 0 {
			if left := time.Duration(s.FailAfter) - time.Since(started); left < step {
				step = max(left, 0)
			}
		}
		t.Reset(step)
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-t.C:
		}
		if s.FailAfter > 0 && time.Since(started) >= time.Duration(s.FailAfter) {
			err := fmt.Errorf("sleep: failing after %v as the spec asks", time.Duration(s.FailAfter))
			if s.Permanent {
				return task.Permanent(err)
			}
			return err
		}
		at := time.Now()
		if !r.Active() {
			return fmt.Errorf("sleep: attempt no longer active: %w", task.ErrFenced)
		}
		elapsed += step
		if err := s.record(r, elapsed, at); err != nil {
			return err
		}
		p := task.Progress{Done: elapsed.Milliseconds(), Total: total.Milliseconds()}
		if err := r.Checkpoint(mustJSON(sleepCheckpoint{ElapsedMS: elapsed.Milliseconds()}), p); err != nil {
			return err
		}
	}
	return nil
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // plain structs only
	}
	return b
}
