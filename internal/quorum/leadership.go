package quorum

import (
	"context"
	"errors"
	"fmt"

	"github.com/taskd/taskd/internal/coord"
)

// Leadership is held by the leader role for one epoch. Its writes are fenced:
// the store applies them only while the epoch key still holds this epoch.
type Leadership struct {
	q     *Quorum
	sess  coord.Session
	epoch int64
	token int64 // version of the epoch key that holds our epoch
}

// Epoch is the election's sequence number.
func (l *Leadership) Epoch() int64 { return l.epoch }

// Session is the session the leadership is bound to.
func (l *Leadership) Session() coord.Session { return l.sess }

// Fence is the condition every leader write carries.
func (l *Leadership) Fence() coord.Cond { return coord.VersionIs(l.q.epochKey(), l.token) }

// Txn applies ops if the epoch is still ours and conds hold. It returns an
// error wrapping ErrFenced when the epoch has moved on, and coord.ErrConflict
// when only one of conds failed. Like coord.Store.Txn it returns the new
// version of each op's key.
func (l *Leadership) Txn(ctx context.Context, conds []coord.Cond, ops []coord.Op) ([]int64, error) {
	vers, err := l.q.store.Txn(ctx, append([]coord.Cond{l.Fence()}, conds...), ops)
	if !errors.Is(err, coord.ErrConflict) {
		return vers, err
	}
	kv, gerr := l.q.store.Get(ctx, l.q.epochKey())
	if gerr != nil || kv.Version != l.token {
		return nil, fmt.Errorf("leader write of epoch %d rejected: %w", l.epoch, ErrFenced)
	}
	return nil, err
}
