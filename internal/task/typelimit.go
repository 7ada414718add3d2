package task

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/keys"
)

// MaxTypeLimit bounds a cluster-wide limit per task type.
const MaxTypeLimit = 100000

// TypeLimits are the operators' cluster-wide limits of running tasks per
// type (`taskctl limits set TYPE N`); a type without one is bounded only by
// the runners' capacities.
type TypeLimits map[string]int

// typeLimitRecord is the stored value of one limit.
type typeLimitRecord struct {
	Limit int `json:"limit"`
}

// checkTypeLimit validates a type name and a limit.
func checkTypeLimit(typ string, limit int) error {
	if err := keys.ValidTaskType(typ); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if limit < 1 || limit > MaxTypeLimit {
		return fmt.Errorf("%w: limit %d for type %s: use 1..%d (unset removes it)", ErrInvalid, limit, typ, MaxTypeLimit)
	}
	return nil
}

// SetTypeLimit sets the cluster-wide limit of running tasks of typ. The
// type need not be known to this node (an exec type may exist only on
// other nodes). Running tasks over a lowered limit go on; no new one of
// the type starts until fewer run than the limit.
func (s *Store) SetTypeLimit(ctx context.Context, typ string, limit int) error {
	if err := checkTypeLimit(typ, limit); err != nil {
		return err
	}
	key, err := s.layout.TypeLimitKey(typ)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	enc, err := json.Marshal(typeLimitRecord{Limit: limit})
	if err != nil {
		return err
	}
	for range 10 {
		kv, err := s.kv.Get(ctx, key)
		switch {
		case errors.Is(err, coord.ErrNotFound):
			_, err = s.kv.Create(ctx, key, enc)
			if errors.Is(err, coord.ErrExists) {
				continue
			}
		case err == nil:
			_, err = s.kv.Update(ctx, key, enc, kv.Version)
			if errors.Is(err, coord.ErrConflict) || errors.Is(err, coord.ErrNotFound) {
				continue
			}
		}
		if err != nil {
			return fmt.Errorf("set the limit of type %s: %w", typ, err)
		}
		return nil
	}
	return fmt.Errorf("set the limit of type %s: %w", typ, coord.ErrConflict)
}

// UnsetTypeLimit removes typ's limit; ErrNotFound if it has none.
func (s *Store) UnsetTypeLimit(ctx context.Context, typ string) error {
	key, err := s.layout.TypeLimitKey(typ)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	err = s.kv.Delete(ctx, key, 0)
	if errors.Is(err, coord.ErrNotFound) {
		return fmt.Errorf("type %s has no limit: %w", typ, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("unset the limit of type %s: %w", typ, err)
	}
	return nil
}

// ReadTypeLimits reads every limit. A key that names no valid type or
// holds no valid limit (written around taskd) is left out.
func (s *Store) ReadTypeLimits(ctx context.Context) (TypeLimits, error) {
	kvs, err := s.kv.List(ctx, s.layout.TypeLimitsDir())
	if err != nil && !errors.Is(err, coord.ErrNotFound) {
		return nil, fmt.Errorf("read the type limits: %w", err)
	}
	out := TypeLimits{}
	for _, kv := range kvs {
		if typ, n, err := DecodeTypeLimit(s.layout, kv); err == nil {
			out[typ] = n
		}
	}
	return out, nil
}

// DecodeTypeLimit reads one stored limit.
func DecodeTypeLimit(lay keys.Tasks, kv coord.KV) (string, int, error) {
	typ, err := keys.Child(lay.TypeLimitsDir(), kv.Key, keys.ValidTaskType)
	if err != nil {
		return "", 0, err
	}
	var rec typeLimitRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return "", 0, fmt.Errorf("limit of type %s: %w", typ, err)
	}
	if err := checkTypeLimit(typ, rec.Limit); err != nil {
		return "", 0, err
	}
	return typ, rec.Limit, nil
}

// WatchTypeLimits watches the limits (the dispatcher).
func (s *Store) WatchTypeLimits(ctx context.Context) *coord.Watcher {
	return s.kv.Watch(ctx, s.layout.TypeLimitsDir())
}

// TypeUse lists, per task type, the tasks running with it.
type TypeUse map[string][]string

// Add counts r.
func (u TypeUse) Add(r *Record) { u[r.Type] = append(u[r.Type], r.ID) }

// TypeLimitReason says why r may not start because of its type's limit:
// "" when the type has no limit or a free slot.
func (r *Record) TypeLimitReason(l TypeLimits, u TypeUse) string {
	limit, ok := l[r.Type]
	held := u[r.Type]
	if !ok || len(held) < limit {
		return ""
	}
	shown := slices.Clone(held[:min(len(held), 3)])
	more := ""
	if len(held) > len(shown) {
		more = fmt.Sprintf(" and %d more", len(held)-len(shown))
	}
	return fmt.Sprintf("waiting for the limit of type %s: %d of %d running cluster-wide (%s%s)", r.Type, len(held), limit, strings.Join(shown, ", "), more)
}
