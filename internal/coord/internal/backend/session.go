// Package backend is the plumbing the coordination store's backends
// (internal/coord/etcd, internal/coord/zk) share: the session bookkeeping
// fed by a heartbeat, and the cache that turns a fresh listing after a gap
// into the watch events a consumer missed. It is internal to coord: users of
// the store see only coord's Store and Session interfaces.
package backend

import (
	"context"
	"sync"
	"time"

	"github.com/taskd/taskd/internal/coord"
)

// SessionCore holds the bookkeeping every backend's Session shares: the
// state with change notification, the last confirmed contact and the Done
// channel. Backends embed it and feed it from their heartbeat.
//
// State changes are published by closing a channel, never by a buffered send,
// so no transition can be dropped however slow the reader is.
type SessionCore struct {
	timeout time.Duration

	mu          sync.Mutex
	state       coord.SessionState
	changed     chan struct{}
	lastContact time.Time
	done        chan struct{}
	kick        chan struct{} // asks the heartbeat to confirm contact now
	// observe is told how late each scheduled heartbeat was sent.
	observe coord.HeartbeatObserver
}

// ObserveLateness sets the observer of this session's heartbeats. Call it
// before RunHeartbeat starts.
func (c *SessionCore) ObserveLateness(f coord.HeartbeatObserver) { c.observe = f }

// NewSessionCore starts in coord.StateRunning with contact confirmed at sentAt.
func NewSessionCore(timeout time.Duration, sentAt time.Time) *SessionCore {
	return &SessionCore{
		timeout:     timeout,
		state:       coord.StateRunning,
		changed:     make(chan struct{}),
		lastContact: sentAt,
		done:        make(chan struct{}),
		kick:        make(chan struct{}, 1),
	}
}

// Timeout is the session timeout.
func (c *SessionCore) Timeout() time.Duration { return c.timeout }

// State returns the state and a channel closed at the next change.
func (c *SessionCore) State() (coord.SessionState, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state, c.changed
}

// LastContact is the send time of the last confirmed request.
func (c *SessionCore) LastContact() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastContact
}

// Done is closed when the session has ended.
func (c *SessionCore) Done() <-chan struct{} { return c.done }

// Confirm records a request sent at sentAt that the store answered while the
// session was alive.
func (c *SessionCore) Confirm(sentAt time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == coord.StateExpired || c.state == coord.StateStopped {
		return
	}
	if sentAt.After(c.lastContact) {
		c.lastContact = sentAt
	}
	c.setLocked(coord.StateRunning)
}

// Reconnected asks the heartbeat to confirm contact at once, so that a
// session regained on another server is confirmed in one round trip rather
// than at the next heartbeat tick. Pending kicks coalesce: one round trip
// answers them all.
func (c *SessionCore) Reconnected() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Disconnected records that contact is lost but the session may live.
func (c *SessionCore) Disconnected() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == coord.StateRunning {
		c.setLocked(coord.StateConnecting)
	}
}

// End moves to a final state (coord.StateExpired or coord.StateStopped) and closes Done.
// Only the first call has an effect.
func (c *SessionCore) End(final coord.SessionState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == coord.StateExpired || c.state == coord.StateStopped {
		return
	}
	c.setLocked(final)
	close(c.done)
}

func (c *SessionCore) setLocked(s coord.SessionState) {
	if c.state == s {
		return
	}
	c.state = s
	close(c.changed)
	c.changed = make(chan struct{})
}

// RunHeartbeat confirms contact every interval with ping until ctx ends or
// the session ends. ping returns expired=true when the store reports the
// session gone. When no confirmation has arrived for a whole timeout the
// session is ended as expired locally: the server may already have expired it.
func RunHeartbeat(ctx context.Context, c *SessionCore, ping func(ctx context.Context) (expired bool, err error)) {
	interval := coord.HeartbeatInterval(c.timeout)
	t := time.NewTimer(interval)
	defer t.Stop()
	due := time.Now().Add(interval)
	for {
		scheduled := false
		select {
		case <-ctx.Done():
			return
		case <-c.done:
			return
		case <-t.C:
			scheduled = true
		case <-c.kick:
		}
		sent := time.Now()
		pctx, cancel := context.WithTimeout(ctx, interval)
		expired, err := ping(pctx)
		cancel()
		if scheduled && c.observe != nil {
			c.observe(max(sent.Sub(due), 0), time.Since(sent))
		}
		switch {
		case expired:
			c.End(coord.StateExpired)
			return
		case err == nil:
			c.Confirm(sent)
		default:
			c.Disconnected()
			if time.Since(c.LastContact()) >= c.timeout {
				c.End(coord.StateExpired)
				return
			}
		}
		due = sent.Add(interval)
		t.Reset(time.Until(due))
	}
}
