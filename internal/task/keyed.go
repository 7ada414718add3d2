package task

import (
	"fmt"
	"strings"

	"github.com/taskd/taskd/internal/keys"
)

// MaxKeyLimit bounds a concurrency key's limit.
const MaxKeyLimit = 1000

// keyLimit validates a concurrency key and its limit; it returns the
// limit to store (1 when none is given).
func keyLimit(key string, limit int) (int, error) {
	if key == "" {
		if limit != 0 {
			return 0, fmt.Errorf("%w: a key limit without a key", ErrInvalid)
		}
		return 0, nil
	}
	if err := keys.ValidConcurrencyKey(key); err != nil {
		return 0, err
	}
	if limit == 0 {
		limit = 1
	}
	if limit < 1 || limit > MaxKeyLimit {
		return 0, fmt.Errorf("%w: key limit %d: use 1..%d", ErrInvalid, limit, MaxKeyLimit)
	}
	return limit, nil
}

// KeyUse lists, per concurrency key, the tasks running with it.
type KeyUse map[string][]string

// Add counts r if it has a key.
func (u KeyUse) Add(r *Record) {
	if r.Key != "" {
		u[r.Key] = append(u[r.Key], r.ID)
	}
}

// KeyReason says why r may not start because of its concurrency key: ""
// when the key has a free slot (or r has no key). The limit is r's own.
func (r *Record) KeyReason(u KeyUse) string {
	held := u[r.Key]
	if r.Key == "" || len(held) < r.KeyLimit {
		return ""
	}
	shown := held[:min(len(held), 3)]
	more := ""
	if len(held) > len(shown) {
		more = fmt.Sprintf(" and %d more", len(held)-len(shown))
	}
	return fmt.Sprintf("waiting for key %s: %d of %d running (%s%s)", keys.Quote(r.Key), len(held), r.KeyLimit, strings.Join(shown, ", "), more)
}
