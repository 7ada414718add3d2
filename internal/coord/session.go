package coord

import (
	"context"
	"sync"
	"time"
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
	state       SessionState
	changed     chan struct{}
	lastContact time.Time
	done        chan struct{}
	kick        chan struct{} // asks the heartbeat to confirm contact now
	// observe is told how late each scheduled heartbeat was sent.
	observe HeartbeatObserver
}

// HeartbeatObserver is told, for every scheduled heartbeat (keepalive) of a
// session, how late it was sent against its schedule, and how long its
// round trip took (to the answer or the failure). A node starved of CPU
// sends its heartbeats late, or cannot process their answers, long before
// its session is in danger. It must not block.
type HeartbeatObserver func(late, roundTrip time.Duration)

// HeartbeatReporter is a Store whose sessions report their heartbeats'
// lateness. Both backends implement it; ObserveHeartbeats applies to the
// sessions opened after it.
type HeartbeatReporter interface {
	ObserveHeartbeats(HeartbeatObserver)
}

// ObserveLateness sets the observer of this session's heartbeats. Call it
// before RunHeartbeat starts.
func (c *SessionCore) ObserveLateness(f HeartbeatObserver) { c.observe = f }

// NewSessionCore starts in StateRunning with contact confirmed at sentAt.
func NewSessionCore(timeout time.Duration, sentAt time.Time) *SessionCore {
	return &SessionCore{
		timeout:     timeout,
		state:       StateRunning,
		changed:     make(chan struct{}),
		lastContact: sentAt,
		done:        make(chan struct{}),
		kick:        make(chan struct{}, 1),
	}
}

// Timeout is the session timeout.
func (c *SessionCore) Timeout() time.Duration { return c.timeout }

// State returns the state and a channel closed at the next change.
func (c *SessionCore) State() (SessionState, <-chan struct{}) {
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
	if c.state == StateExpired || c.state == StateStopped {
		return
	}
	if sentAt.After(c.lastContact) {
		c.lastContact = sentAt
	}
	c.setLocked(StateRunning)
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
	if c.state == StateRunning {
		c.setLocked(StateConnecting)
	}
}

// End moves to a final state (StateExpired or StateStopped) and closes Done.
// Only the first call has an effect.
func (c *SessionCore) End(final SessionState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == StateExpired || c.state == StateStopped {
		return
	}
	c.setLocked(final)
	close(c.done)
}

func (c *SessionCore) setLocked(s SessionState) {
	if c.state == s {
		return
	}
	c.state = s
	close(c.changed)
	c.changed = make(chan struct{})
}

// HeartbeatInterval is how often backends confirm contact: a sixth of the
// timeout, so that LastContact is never more than that stale while healthy.
func HeartbeatInterval(timeout time.Duration) time.Duration { return timeout / 6 }

// RunHeartbeat confirms contact every interval with ping until ctx ends or
// the session ends. ping returns expired=true when the store reports the
// session gone. When no confirmation has arrived for a whole timeout the
// session is ended as expired locally: the server may already have expired it.
func RunHeartbeat(ctx context.Context, c *SessionCore, ping func(ctx context.Context) (expired bool, err error)) {
	interval := HeartbeatInterval(c.timeout)
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
			c.End(StateExpired)
			return
		case err == nil:
			c.Confirm(sent)
		default:
			c.Disconnected()
			if time.Since(c.LastContact()) >= c.timeout {
				c.End(StateExpired)
				return
			}
		}
		due = sent.Add(interval)
		t.Reset(time.Until(due))
	}
}
