package task

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/keys"
)

// IdempotencyWindow is how long an idempotency key keeps answering with
// the task it made. After it, the key makes a new task.
const IdempotencyWindow = 24 * time.Hour

// ErrKeyReused: an idempotency key within its window names a task made
// from a different request.
var ErrKeyReused = errors.New("idempotency key already used for a different request")

// idemRecord is what tasks/idem/SHA256 holds.
type idemRecord struct {
	Key     string    `json:"key"`
	Task    string    `json:"task"`
	Request string    `json:"request"` // fingerprint of the request
	Created time.Time `json:"created"`
}

// createTries bounds the retries of a creation that raced another one
// with the same key.
const createTries = 3

// CreateOnce is Create with an idempotency key: within
// IdempotencyWindow, the same key and the same request return the task
// the first call made (existing true) instead of making another; the same
// key with a different request is ErrKeyReused. The key record and the
// task are written in one transaction, so two racing calls make one task.
func (s *Store) CreateOnce(ctx context.Context, req CreateRequest) (r *Record, existing bool, err error) {
	return s.CreateOnceChecked(ctx, req, nil)
}

// CreateOnceChecked is CreateOnce that runs check (when not nil) once
// before it makes a new task, and not when it answers with the task an
// earlier call made: a retry is not refused because the world changed
// since the first call (a copy's target written meanwhile).
func (s *Store) CreateOnceChecked(ctx context.Context, req CreateRequest, check func() error) (r *Record, existing bool, err error) {
	checked := false
	runCheck := func() error {
		if check == nil || checked {
			return nil
		}
		checked = true
		return check()
	}
	if req.IdempotencyKey == "" {
		if err := runCheck(); err != nil {
			return nil, false, err
		}
		r, err := s.Create(ctx, req)
		return r, false, err
	}
	ikey, err := s.layout.IdemKey(req.IdempotencyKey)
	if err != nil {
		return nil, false, err
	}
	r, err = s.Prepare(req)
	if err != nil {
		return nil, false, err
	}
	if err := s.depsExist(ctx, r); err != nil {
		return nil, false, err
	}
	fp, err := fingerprint(r)
	if err != nil {
		return nil, false, err
	}
	tkey, err := s.layout.ActiveKey(r.ID)
	if err != nil {
		return nil, false, err
	}
	rec, err := json.Marshal(idemRecord{Key: req.IdempotencyKey, Task: r.ID, Request: fp, Created: r.Created})
	if err != nil {
		return nil, false, fmt.Errorf("encode idempotency record: %w", err)
	}
	for range createTries {
		kv, err := s.kv.Get(ctx, ikey)
		var conds []coord.Cond
		var claim coord.Op
		switch {
		case errors.Is(err, coord.ErrNotFound):
			claim = coord.CreateOp(ikey, rec, nil)
		case err != nil:
			return nil, false, fmt.Errorf("read idempotency key: %w", err)
		default:
			var old idemRecord
			if err := json.Unmarshal(kv.Value, &old); err != nil {
				return nil, false, fmt.Errorf("idempotency record %s: %w", ikey, err)
			}
			if s.now().Sub(old.Created) < IdempotencyWindow {
				if old.Request != fp {
					return nil, false, fmt.Errorf("%w: key %s made task %s at %s", ErrKeyReused,
						keys.Quote(req.IdempotencyKey), old.Task, old.Created.UTC().Format(time.RFC3339))
				}
				prev, err := s.Get(ctx, old.Task)
				if err == nil {
					return prev, true, nil
				}
				if !errors.Is(err, ErrNotFound) {
					return nil, false, err
				}
				// The task it made is gone (deleted): make a new one.
			}
			conds = []coord.Cond{coord.VersionIs(ikey, kv.Version)}
			claim = coord.PutOp(ikey, rec)
		}
		if err := runCheck(); err != nil {
			return nil, false, err
		}
		vers, err := s.kv.Txn(ctx, conds, []coord.Op{claim, coord.CreateOp(tkey, r.encode(), nil)})
		if errors.Is(err, coord.ErrConflict) || errors.Is(err, coord.ErrExists) {
			continue // another call claimed the key first: answer with its task
		}
		if err != nil {
			return nil, false, fmt.Errorf("store task %s with its idempotency key: %w", r.ID, err)
		}
		r.version = vers[1]
		return r, false, nil
	}
	return nil, false, fmt.Errorf("%w: idempotency key %s: %d tries raced other calls", coord.ErrConflict, keys.Quote(req.IdempotencyKey), createTries)
}

// fingerprint identifies what a creation asked for, so that a retry of the
// same request is told from another request that reuses the key.
func fingerprint(r *Record) (string, error) {
	var spec bytes.Buffer
	if err := json.Compact(&spec, r.Spec); err != nil {
		return "", fmt.Errorf("%w: spec: %w", ErrInvalid, err)
	}
	b, err := json.Marshal(struct {
		Type       string          `json:"type"`
		Spec       json.RawMessage `json:"spec"`
		Priority   int             `json:"priority"`
		Node       string          `json:"node"`
		Window     *Window         `json:"window"`
		MaxRetries int             `json:"max_retries"`
		Key        string          `json:"key,omitempty"`
		KeyLimit   int             `json:"key_limit,omitempty"`
		After      []string        `json:"after,omitempty"`
		Policy     string          `json:"after_policy,omitempty"`
	}{r.Type, spec.Bytes(), r.Priority, r.Node, r.Window, r.MaxRetries, r.Key, r.KeyLimit, r.After, r.AfterPolicy})
	if err != nil {
		return "", fmt.Errorf("fingerprint: %w", err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// SweepIdempotency deletes the idempotency records older than the window,
// each only if unchanged since read. It returns how many it deleted.
func (s *Store) SweepIdempotency(ctx context.Context) (int, error) {
	kvs, err := s.kv.List(ctx, s.layout.IdemDir())
	if errors.Is(err, coord.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("list idempotency keys: %w", err)
	}
	n := 0
	for _, kv := range kvs {
		var rec idemRecord
		if json.Unmarshal(kv.Value, &rec) == nil && s.now().Sub(rec.Created) < IdempotencyWindow {
			continue
		}
		err := s.kv.Delete(ctx, kv.Key, kv.Version)
		if errors.Is(err, coord.ErrConflict) || errors.Is(err, coord.ErrNotFound) {
			continue // reused or swept meanwhile
		}
		if err != nil {
			return n, fmt.Errorf("delete idempotency key %s: %w", kv.Key, err)
		}
		n++
	}
	return n, nil
}

// SweepEvery is how often the leader sweeps expired idempotency keys.
const SweepEvery = time.Hour

// RunIdempotencySweeper sweeps expired idempotency records at once and
// then every interval until ctx ends; the leader runs it. A failed sweep
// is logged and tried again at the next interval: stale records only
// take space, they never make a key answer wrongly (CreateOnce checks
// the time itself).
func (s *Store) RunIdempotencySweeper(ctx context.Context, every time.Duration, log *slog.Logger) error {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if n, err := s.SweepIdempotency(ctx); err != nil && ctx.Err() == nil {
			log.Warn("sweep of expired idempotency keys failed; trying again later", "err", err, "deleted", n)
		} else if n > 0 {
			log.Info("swept expired idempotency keys", "deleted", n)
		}
		t.Reset(every)
	}
}
