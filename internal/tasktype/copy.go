package tasktype

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/metrics"
	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/volcopy"
	"github.com/taskd/taskd/internal/volume"
)

// Copy is the volume copy as a task: the copy engine with its checkpoints
// stored in the task record, so that another runner resumes it.
//
// Its endpoints come from API callers, so they are confined to what this
// node allows: file:// paths under Roots, nbd+unix sockets under
// NBDSocketDirs, nbd:// hosts in NBDAllowHosts. With an empty list, that
// kind of endpoint is refused (permanently, naming the flag to set).
type Copy struct {
	Roots         []string // --volume-root
	NBDSocketDirs []string // --nbd-socket-dir
	NBDAllowHosts []string // --nbd-allow-host
	// Memory is the node's copy buffer pool (--copy-memory-limit);
	// optional.
	Memory  *volcopy.MemoryPool
	Log     *slog.Logger
	Metrics *metrics.Set // optional
}

// RateLimited: a copy applies a rate set on its task (task set-rate).
func (Copy) RateLimited() {}

// copySpec is volcopy.Spec plus the node that holds its file endpoints.
type copySpec struct {
	volcopy.Spec
	// Node runs the copy; required when an endpoint is a local file.
	Node string `json:"node,omitempty"`
}

func parseCopy(raw json.RawMessage) (copySpec, error) {
	var s copySpec
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return s, fmt.Errorf("%w: copy spec: %w", task.ErrInvalid, err)
	}
	if s.Source == "" || s.Target == "" {
		return s, fmt.Errorf("%w: copy spec: source and target are required", task.ErrInvalid)
	}
	local := false
	for _, u := range []string{s.Source, s.Target, s.Base} {
		if u == "" {
			continue
		}
		p, err := url.Parse(u)
		if err != nil {
			return s, fmt.Errorf("%w: copy spec: %q: %w", task.ErrInvalid, u, err)
		}
		switch p.Scheme {
		case "file":
			local = true
		case "nbd", "nbd+unix":
			local = local || p.Scheme == "nbd+unix"
		default:
			return s, fmt.Errorf("%w: copy spec: %q: use file://, nbd:// or nbd+unix://", task.ErrInvalid, u)
		}
	}
	if s.Rate < 0 || s.Workers < 0 || s.RequestSize < 0 || s.ExtentSize < 0 {
		return s, fmt.Errorf("%w: copy spec: rate, workers and sizes must not be negative", task.ErrInvalid)
	}
	// Same endpoints, a dirty bitmap without an NBD source or with a
	// base, buffers over the cap.
	if err := volcopy.CheckSpec(s.Spec); err != nil {
		return s, fmt.Errorf("%w: copy spec: %w", task.ErrInvalid, err)
	}
	if local && s.Node == "" {
		return s, fmt.Errorf("%w: copy spec: a file:// or nbd+unix:// endpoint is local to one node: give its node", task.ErrInvalid)
	}
	if s.Node != "" {
		if err := keys.ValidName(s.Node); err != nil {
			return s, fmt.Errorf("copy spec: %w", err)
		}
	}
	return s, nil
}

// Validate implements task.Type.
func (Copy) Validate(spec json.RawMessage) error { _, err := parseCopy(spec); return err }

// env is how this node opens a task's endpoints.
func (c Copy) env() volume.Options {
	return volume.Options{Confined: true, Roots: c.Roots, NBDSocketDirs: c.NBDSocketDirs, NBDAllowHosts: c.NBDAllowHosts}
}

// Preflight implements task.Preflighter. Validate has checked the spec's
// text (on every node). On the node that runs the copy (runsHere: the spec
// pins the copy to it because an endpoint is local), it also checks the
// endpoints with volcopy.Check under the confinement the copy runs with:
// the files exist (the target's directory, for a new target) under
// --volume-root, no symlink leaves it, NBD endpoints are allowed here, and
// a target file or device is not smaller than a source file or device.
// Elsewhere the endpoints are another node's, under its roots: they are
// checked when the copy starts there. Nothing connects to an NBD server,
// so an NBD server that is down passes (the copy retries it).
func (c Copy) Preflight(ctx context.Context, raw json.RawMessage, runsHere bool) error {
	s, err := parseCopy(raw)
	if err != nil || !runsHere {
		return err
	}
	if err := volcopy.Check(ctx, s.Spec, c.env()); err != nil {
		by := "the node that runs it"
		if s.Node != "" {
			by = "node " + s.Node
		}
		return fmt.Errorf("%w: copy refused by %s: %w", task.ErrInvalid, by, err)
	}
	return nil
}

// Node implements task.Constrainer: a copy with local endpoints runs on
// their node.
func (Copy) Node(spec json.RawMessage) string {
	s, err := parseCopy(spec)
	if err != nil {
		return ""
	}
	return s.Node
}

// Run implements task.Type.
func (c Copy) Run(ctx context.Context, raw json.RawMessage, cp []byte, r task.Reporter) error {
	s, err := parseCopy(raw)
	if err != nil {
		return task.Permanent(err)
	}
	log := c.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var last task.Progress
	var lastBytes int64
	var lastRate float64
	account := func(p volcopy.Progress, running bool) {
		if c.Metrics == nil {
			return
		}
		c.Metrics.CopyBytes.Add(float64(max(p.BytesWritten-lastBytes, 0)))
		lastBytes = p.BytesWritten
		rate := p.Rate
		if !running {
			rate = 0
		}
		c.Metrics.CopyRate.Add(rate - lastRate)
		lastRate = rate
	}
	defer func() { account(volcopy.Progress{BytesWritten: lastBytes}, false) }()
	opts := volcopy.Options{
		Resume:           cp,
		Logger:           log.With("task", r.TaskID(), "attempt", r.Attempt()),
		ProgressInterval: time.Second,
		OnProgress: func(p volcopy.Progress) {
			account(p, true)
			last = copyProgress(p)
			r.Progress(last)
		},
		OnCheckpoint: func(b []byte) error { return r.Checkpoint(b, last) },
		Memory:       c.Memory,
		// No target write once the attempt is no longer active: another
		// attempt may own the target by then.
		MayWrite: func() error {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			if !r.Active() {
				return fmt.Errorf("copy: attempt %d no longer active: %w", r.Attempt(), task.ErrFenced)
			}
			return nil
		},
	}
	job, err := volcopy.Prepare(ctx, s.Spec, c.env(), opts)
	if err != nil {
		if errors.Is(err, volcopy.ErrInvalid) {
			return task.Permanent(err)
		}
		return err
	}
	defer job.Close()
	// A rate set on the task (taskctl task set-rate) overrides the spec's,
	// at start and whenever it changes while the copy runs.
	rctx, stopRate := context.WithCancel(ctx)
	var rateWG sync.WaitGroup
	rateWG.Add(1)
	go func() {
		defer rateWG.Done()
		for first := true; ; first = false {
			limit, set, changed := r.RateLimit()
			if !set {
				limit = s.Rate
			}
			job.SetRate(limit)
			if !first {
				log.Info("copy rate changed", "task", r.TaskID(), "bytes_per_second", limit)
			}
			select {
			case <-rctx.Done():
				return
			case <-changed:
			}
		}
	}()
	p, err := job.Run(ctx)
	stopRate()
	rateWG.Wait()
	if err == nil {
		done := copyProgress(p)
		done.ETASeconds = 0
		r.Progress(done)
		return nil
	}
	if errors.Is(err, volcopy.ErrVerify) || errors.Is(err, volcopy.ErrInvalid) {
		return task.Permanent(err)
	}
	return err
}

// copyProgress is a copy's progress in allocated bytes, the data it has to
// read: the rate and the ETA are measured in them, so a sparse copy's
// progress and ETA stay steady instead of jumping over holes.
func copyProgress(p volcopy.Progress) task.Progress {
	return task.Progress{Done: p.AllocatedDone, Total: p.AllocatedTotal, Bytes: p.BytesWritten, Rate: p.Rate, ETASeconds: p.ETA.Seconds()}
}
