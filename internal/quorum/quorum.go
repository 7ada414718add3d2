// Package quorum runs a node's membership, the priority election and the
// session lifecycle with fencing.
//
// Guarantees:
//   - The process never exits because a session was lost. A lost session
//     (expired, or silent past the local deadline) fences the node and the
//     node joins again with a new session.
//   - Fencing cancels every role-bound context (leader duties, member duties)
//     and waits until the roles have returned, before the session could expire
//     on the server: the local deadline is last confirmed contact +
//     DeadlineFraction × SessionTimeout, and Config.Validate keeps a budget
//     between it and the timeout. Each fence is reported with its timing.
//   - Every leader write made through Leadership.Txn is conditional on the
//     leader's epoch still being current; the store rejects it otherwise
//     (ErrFenced), so a paused or partitioned former leader cannot overwrite
//     its successor's writes.
//   - The leader yields only to a member with a strictly higher current
//     priority that has been seen for YieldGrace: leadership does not flap,
//     and when every member is unhealthy it stays where it is.
//
// Non-guarantees:
//   - The local deadline assumes the node's clock and the store's advance at
//     about the same rate. A process stopped (SIGSTOP, a VM pause) cannot
//     fence while stopped; it fences as soon as it runs again, and its writes
//     in between are rejected by the epoch check.
//   - Another member's "session" field is what that member last wrote.
package quorum

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/taskd/taskd/internal/backoff"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/keys"
)

// ErrDuplicateName: a live member with another node id uses this name.
var ErrDuplicateName = errors.New("quorum: node name already in use by another live member")

// ErrFenced: the node no longer holds the epoch (or session) a write needs.
var ErrFenced = errors.New("quorum: fenced: this node no longer holds the current epoch")

// ErrInvalid: an argument is out of range or malformed. It is
// keys.ErrInvalid, so either matches with errors.Is.
var ErrInvalid = keys.ErrInvalid

// ErrNotMember: set-priority named a node that is not a live member.
var ErrNotMember = errors.New("quorum: no live member has that name")

// Roles are the components whose lifetime is bound to the node's standing.
// Each runs in a context that fencing cancels; fencing waits for it.
type Roles struct {
	// Leader runs while this node leads. ctx ends when leadership ends.
	Leader func(ctx context.Context, l *Leadership) error
	// Member runs while this node is a joined member on one session.
	Member func(ctx context.Context, s coord.Session) error
}

// FenceReport describes one fence.
type FenceReport struct {
	Reason   string        `json:"reason"`
	Started  time.Time     `json:"started"`
	Finished time.Time     `json:"finished"`
	Duration time.Duration `json:"duration_ns"`
	// LastContact + SessionTimeout: the earliest moment the store could
	// have expired the session. Finished must come before it.
	EarliestExpiry time.Time `json:"earliest_expiry"`
	BeforeExpiry   bool      `json:"before_expiry"`
}

// View is a snapshot of the cluster as this node sees it.
type View struct {
	Self    string `json:"self"`
	Session string `json:"session"`
	// SessionSince is when Session last changed.
	SessionSince time.Time `json:"session_since"`
	SessionID    string    `json:"session_id"`
	Ready        bool      `json:"ready"`
	Leader       string    `json:"leader"`
	Epoch        int64     `json:"epoch"`
	ElectedAt    time.Time `json:"elected_at"`
	Members      []Member  `json:"members"`
	Specified    []string  `json:"specified_members,omitempty"`
	// Known are the known-member records as last read: every node that
	// has joined, live or not (kept when the session is lost).
	Known       []KnownMember `json:"known,omitempty"`
	LastContact time.Time     `json:"last_contact"`
	LastFence   *FenceReport  `json:"last_fence,omitempty"`
	StartedAt   time.Time     `json:"started_at"`
	JoinError   string        `json:"join_error,omitempty"`
	// SelfStarved is this node's own starvation, live (its member record
	// carries it too, but only while the node has a session).
	SelfStarved       bool          `json:"self_starved,omitempty"`
	SelfStarvedReason string        `json:"self_starved_reason,omitempty"`
	Timeout           time.Duration `json:"-"`
	// DeadlineFraction of Timeout after the last contact, the node fences.
	DeadlineFraction float64 `json:"-"`
}

// Quorum is one node's participation in the cluster.
type Quorum struct {
	cfg       Config
	lay       keys.Quorum
	store     coord.Store
	log       *slog.Logger
	roles     Roles
	startedAt time.Time

	ready    atomic.Bool
	kick     chan struct{} // health/priority changed: re-evaluate
	onFence  func(FenceReport)
	mu       sync.Mutex
	view     View
	healthy  bool
	hReason  string
	starved  bool
	sReason  string
	viewSubs chan struct{}
}

// Option customises a Quorum.
type Option func(*Quorum)

// WithFenceHook is called after every fence.
func WithFenceHook(f func(FenceReport)) Option { return func(q *Quorum) { q.onFence = f } }

// New validates cfg and returns a Quorum ready to Run.
func New(cfg Config, store coord.Store, roles Roles, log *slog.Logger, opts ...Option) (*Quorum, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("quorum config: %w", err)
	}
	root, err := keys.NewRoot(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("quorum config: %w", err)
	}
	q := &Quorum{
		cfg: cfg, lay: root.Quorum(), store: store, log: log.With("node", cfg.Name), roles: roles,
		startedAt: time.Now(), kick: make(chan struct{}, 1), healthy: true,
		viewSubs: make(chan struct{}),
	}
	q.view = View{Self: cfg.Name, Session: coord.StateStopped.String(), SessionSince: q.startedAt, StartedAt: q.startedAt, Timeout: cfg.SessionTimeout, DeadlineFraction: cfg.DeadlineFraction}
	for _, o := range opts {
		o(q)
	}
	return q, nil
}

func (q *Quorum) membersDir() string   { return q.lay.MembersDir() }
func (q *Quorum) electionDir() string  { return q.lay.ElectionDir() }
func (q *Quorum) leaderKey() string    { return q.lay.LeaderKey() }
func (q *Quorum) epochKey() string     { return q.lay.EpochKey() }
func (q *Quorum) specifiedKey() string { return q.lay.SpecifiedKey() }
func (q *Quorum) priorityDir() string  { return q.lay.PriorityDir() }

// Ready reports whether the node has joined with a live session.
func (q *Quorum) Ready() bool { return q.ready.Load() }

// View returns the current snapshot and a channel closed at the next change.
func (q *Quorum) View() (View, <-chan struct{}) {
	q.mu.Lock()
	defer q.mu.Unlock()
	v := q.view
	v.Members = slices.Clone(v.Members)
	v.Known = slices.Clone(v.Known)
	return v, q.viewSubs
}

func (q *Quorum) updateView(f func(*View)) {
	q.mu.Lock()
	defer q.mu.Unlock()
	before := q.view.Session
	f(&q.view)
	if q.view.Session != before {
		q.view.SessionSince = time.Now()
	}
	close(q.viewSubs)
	q.viewSubs = make(chan struct{})
}

// SetHealth records the node's health. An unhealthy node advertises current
// priority 0, so a healthy member can take over after the yield grace.
func (q *Quorum) SetHealth(ok bool, reason string) {
	q.mu.Lock()
	changed := q.healthy != ok || q.hReason != reason
	q.healthy, q.hReason = ok, reason
	q.mu.Unlock()
	if changed {
		q.log.Info("health changed", events.Health.Attr(), "healthy", ok, "reason", reason)
		q.poke()
	}
}

// SetStarved records whether the node is starved of CPU. A starved node
// advertises current priority 0, like an unhealthy one, so it neither takes
// nor wins back the leadership; a starved leader yields at once to a member
// that outranks it, before its starved heartbeats cost it the session.
func (q *Quorum) SetStarved(starved bool, reason string) {
	q.mu.Lock()
	changed := q.starved != starved || q.sReason != reason
	q.starved, q.sReason = starved, reason
	q.mu.Unlock()
	if changed {
		q.updateView(func(v *View) { v.SelfStarved, v.SelfStarvedReason = starved, reason })
		q.poke()
	}
}

func (q *Quorum) starvation() (bool, string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.starved, q.sReason
}

func (q *Quorum) poke() {
	select {
	case q.kick <- struct{}{}:
	default: // a poke is pending; the receiver re-reads all state
	}
}

func (q *Quorum) health() (bool, string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.healthy, q.hReason
}

// SetPriority stores an operator's priority for node. Without force the node
// must be a live member, which catches typos.
func (q *Quorum) SetPriority(ctx context.Context, node string, priority int, force bool) error {
	if err := ValidatePriority(priority); err != nil {
		return err
	}
	member, err := q.lay.MemberKey(node)
	if err != nil {
		return err
	}
	k, err := q.lay.PriorityKey(node)
	if err != nil {
		return err
	}
	if !force {
		if _, err := q.store.Get(ctx, member); errors.Is(err, coord.ErrNotFound) {
			return fmt.Errorf("%s: %w (use --force to store a priority for a node that is not running)", node, ErrNotMember)
		} else if err != nil {
			return err
		}
	}
	rec := encode(priorityRecord{Priority: priority, SetAt: time.Now().UTC()})
	if _, err := q.store.Create(ctx, k, rec); errors.Is(err, coord.ErrExists) {
		_, err = q.store.Update(ctx, k, rec, 0)
		return err
	} else if err != nil {
		return err
	}
	return nil
}

// SetSpecified restricts leadership to names; an empty list lifts the
// restriction. Without force at least one named node must be a live member,
// so a typo cannot leave the cluster without an eligible leader.
func (q *Quorum) SetSpecified(ctx context.Context, names []string, force bool) error {
	seen := map[string]bool{}
	for _, n := range names {
		if err := keys.ValidName(n); err != nil {
			return err
		}
		if seen[n] {
			return fmt.Errorf("%w: node %q is listed twice", ErrInvalid, n)
		}
		seen[n] = true
	}
	if len(names) == 0 {
		err := q.store.Delete(ctx, q.specifiedKey(), 0)
		if errors.Is(err, coord.ErrNotFound) {
			return nil
		}
		return err
	}
	if !force {
		live, err := q.store.List(ctx, q.membersDir())
		if err != nil {
			return err
		}
		ok := false
		for _, kv := range live {
			if name, err := keys.Child(q.membersDir(), kv.Key, keys.ValidName); err == nil {
				ok = ok || seen[name]
			}
		}
		if !ok {
			return fmt.Errorf("%w: none of %v is a live member, so nobody could lead (use --force to set it anyway)", ErrNotMember, names)
		}
	}
	rec := encode(specifiedRecord{Members: names, SetAt: time.Now().UTC()})
	if _, err := q.store.Create(ctx, q.specifiedKey(), rec); errors.Is(err, coord.ErrExists) {
		_, err = q.store.Update(ctx, q.specifiedKey(), rec, 0)
		return err
	} else if err != nil {
		return err
	}
	return nil
}

// Run joins the cluster and keeps it joined until ctx ends, fencing and
// rejoining whenever a session is lost. It returns nil on shutdown, or
// ErrDuplicateName if the very first join finds the name taken by another
// node (a configuration error the operator must fix).
func (q *Quorum) Run(ctx context.Context) error {
	q.log.Info("quorum starting", "priority", q.cfg.Priority, "session_timeout", q.cfg.SessionTimeout,
		"local_deadline", q.cfg.LocalDeadline(), "root", q.cfg.Root)
	first := true
	retry := backoff.New(100*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		sess, err := q.openSession(ctx)
		if err != nil {
			break // ctx ended
		}
		joined, err := q.term(ctx, sess)
		if errors.Is(err, ErrDuplicateName) && first {
			return err
		}
		if err != nil {
			q.log.Error("membership term failed, rejoining", "err", err)
			q.updateView(func(v *View) { v.JoinError = err.Error() })
		}
		first = first && !joined
		if joined {
			retry.Reset()
			continue
		}
		if retry.Wait(ctx) != nil {
			break
		}
	}
	q.updateView(func(v *View) { v.Session = coord.StateStopped.String(); v.Ready = false })
	q.log.Info("quorum stopped")
	return nil
}

// openSession retries with backoff until a session opens or ctx ends.
func (q *Quorum) openSession(ctx context.Context) (coord.Session, error) {
	b := backoff.New(200*time.Millisecond, 5*time.Second)
	failures := 0
	for {
		octx, cancel := context.WithTimeout(ctx, q.cfg.SessionTimeout)
		sess, err := q.store.NewSession(octx, q.cfg.SessionTimeout)
		cancel()
		if err == nil {
			if failures > 0 {
				q.log.Info("coordinator reachable again", "after_failures", failures)
			}
			return sess, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		failures++
		if failures == 1 || failures%20 == 0 {
			q.log.Warn("cannot open a session with the coordinator; retrying with backoff", "failures", failures, "err", err)
		}
		q.updateView(func(v *View) { v.Session = coord.StateConnecting.String(); v.JoinError = err.Error() })
		if b.Wait(ctx) != nil {
			return nil, ctx.Err()
		}
	}
}

// term runs one session's worth of membership: join, roles, then fence.
func (q *Quorum) term(ctx context.Context, sess coord.Session) (joined bool, err error) {
	log := q.log.With("session", sess.ID())
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		start := time.Now()
		if cerr := sess.Close(cctx); cerr != nil {
			log.Warn("closing session failed; the store expires it", "err", cerr, "duration", time.Since(start))
			return
		}
		log.Info("session closed", "duration", time.Since(start))
	}()
	if err := q.join(ctx, sess, log); err != nil {
		return false, err
	}
	log.Info("session state changed", events.Session.Attr(), "from", "stopped", "to", "running", "reason", "joined the cluster")
	q.updateView(func(v *View) {
		v.Session, v.SessionID, v.JoinError, v.Ready = coord.StateRunning.String(), sess.ID(), "", true
	})
	q.ready.Store(true)

	termCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	el := newElection(q, sess, log)
	wg.Add(1)
	go func() { defer wg.Done(); el.run(termCtx) }()
	// The known-member record is bookkeeping, not fenced work: the fence
	// does not wait for it. A write of it that is in flight when the store
	// is cut off can block until the client's own timeout (ZooKeeper
	// requests take no context), which made fences finish after expiry.
	var known sync.WaitGroup
	known.Add(1)
	go func() { defer known.Done(); q.runKnown(termCtx, log) }()
	defer known.Wait()
	if q.roles.Member != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := q.roles.Member(termCtx, sess); err != nil && termCtx.Err() == nil {
				log.Error("member role stopped with an error", "err", err)
			}
		}()
	}

	reason := q.awaitEnd(ctx, sess, log)

	// Fence: cancel every role-bound context, then wait for the roles.
	q.ready.Store(false)
	started := time.Now()
	if ctx.Err() != nil {
		log.Info("fencing started", events.FenceStarted.Attr(), "reason", reason)
	} else {
		log.Warn("fencing started", events.FenceStarted.Attr(), "reason", reason)
	}
	cancel()
	wg.Wait()
	finished := time.Now()
	expiry := sess.LastContact().Add(q.cfg.SessionTimeout)
	rep := FenceReport{Reason: reason, Started: started, Finished: finished, Duration: finished.Sub(started),
		EarliestExpiry: expiry, BeforeExpiry: finished.Before(expiry)}
	if rep.BeforeExpiry || ctx.Err() != nil {
		log.Info("fencing finished", events.FenceFinished.Attr(), "reason", reason, "duration", rep.Duration, "margin_to_expiry", expiry.Sub(finished))
	} else {
		// Only a stopped process gets here: it could not run at its deadline.
		log.Error("fencing finished after the session may have expired (process was not running at its local deadline)", events.FenceFinished.Attr(),
			"reason", reason, "duration", rep.Duration, "late_by", finished.Sub(expiry))
	}
	q.updateView(func(v *View) {
		v.LastFence = &rep
		v.Ready = false
		if ctx.Err() == nil {
			v.Session = coord.StateExpired.String()
		}
	})
	if q.onFence != nil {
		q.onFence(rep)
	}
	return true, nil
}

// awaitEnd watches the session until it must end, logging each state change,
// and returns the reason.
func (q *Quorum) awaitEnd(ctx context.Context, sess coord.Session, log *slog.Logger) string {
	last := coord.StateRunning
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		st, changed := sess.State()
		lc := sess.LastContact()
		if st != last {
			log.Warn("session state changed", events.Session.Attr(), "from", last.String(), "to", st.String(), "last_contact", lc)
			last = st
		}
		q.updateView(func(v *View) { v.Session, v.LastContact = st.String(), lc })
		if st == coord.StateExpired || st == coord.StateStopped {
			return "session " + st.String()
		}
		deadline := lc.Add(q.cfg.LocalDeadline())
		wait := time.Until(deadline)
		if wait <= 0 {
			return fmt.Sprintf("local deadline passed: no confirmed contact for %v (deadline %v of a %v session)",
				time.Since(lc).Round(time.Millisecond), q.cfg.LocalDeadline(), q.cfg.SessionTimeout)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return "shutdown requested"
		case <-sess.Done():
		case <-changed:
		case <-timer.C:
		}
	}
}

// join registers the member record, replacing a record left by an earlier
// incarnation of this node (same node id), and refusing one of another node.
func (q *Quorum) join(ctx context.Context, sess coord.Session, log *slog.Logger) error {
	prio := q.cfg.Priority
	pkey, err := q.lay.PriorityKey(q.cfg.Name)
	if err != nil {
		return err
	}
	key, err := q.lay.MemberKey(q.cfg.Name)
	if err != nil {
		return err
	}
	if kv, err := q.store.Get(ctx, pkey); err == nil {
		if pr, derr := decode[priorityRecord](kv.Value); derr == nil {
			prio = pr.Priority
		}
	} else if !errors.Is(err, coord.ErrNotFound) {
		return fmt.Errorf("read stored priority: %w", err)
	}
	ok, reason := q.health()
	starved, sReason := q.starvation()
	rec := Member{
		Name: q.cfg.Name, NodeID: q.cfg.NodeID, Address: q.cfg.Address, Version: q.cfg.Version,
		Priority: prio, CurrentPriority: currentPriority(prio, ok && !starved), Health: healthWord(ok), HealthReason: reason,
		Starved: starved, StarvedReason: sReason,
		Session: coord.StateRunning.String(), SessionID: sess.ID(), StartedAt: q.startedAt, JoinedAt: time.Now().UTC(),
	}
	for range 3 {
		_, err := q.store.Create(ctx, key, encode(rec), coord.WithSession(sess))
		if err == nil {
			return q.clearStaleLeader(ctx, sess, log)
		}
		if !errors.Is(err, coord.ErrExists) {
			return fmt.Errorf("register member %s: %w", q.cfg.Name, err)
		}
		kv, err := q.store.Get(ctx, key)
		if errors.Is(err, coord.ErrNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read existing member %s: %w", q.cfg.Name, err)
		}
		old, derr := decode[Member](kv.Value)
		if derr != nil || old.NodeID != q.cfg.NodeID {
			return fmt.Errorf("%w: %q is registered by node %s at %s (joined %s); give this node another --name",
				ErrDuplicateName, q.cfg.Name, old.NodeID, old.Address, old.JoinedAt.Format(time.RFC3339))
		}
		// Our own earlier incarnation (the data directory lock proves it is
		// gone) or our own fenced session: its record may be removed. Where
		// the store can, end that session outright: its runner and attempt
		// records go with it at once, and its tasks resume now rather than
		// when its lease expires (after a raft leader change, an election
		// and a whole timeout after the old process died).
		if rv, ok := q.store.(coord.SessionRevoker); ok && old.SessionID != "" && old.SessionID != sess.ID() {
			if err := rv.RevokeSession(ctx, old.SessionID); err == nil {
				log.Info("ended this node's previous session", events.SessionRevoked.Attr(), "member", q.cfg.Name, "session_id", old.SessionID, "why", "this process holds the node's data directory lock, so the process of that session is gone")
				continue
			} else {
				log.Warn("cannot end this node's previous session; removing its member record only", "old_session", old.SessionID, "err", err)
			}
		}
		log.Info("removing member record of this node's previous session", "old_session", old.SessionID)
		if err := q.store.Delete(ctx, key, kv.Version); err != nil && !errors.Is(err, coord.ErrNotFound) && !errors.Is(err, coord.ErrConflict) {
			return fmt.Errorf("remove stale member record: %w", err)
		}
	}
	return fmt.Errorf("register member %s: record keeps reappearing", q.cfg.Name)
}

// clearStaleLeader removes a leader record left by this node's previous
// session, so a restarted leader's successor need not wait for expiry.
func (q *Quorum) clearStaleLeader(ctx context.Context, sess coord.Session, log *slog.Logger) error {
	kv, err := q.store.Get(ctx, q.leaderKey())
	if errors.Is(err, coord.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read leader record: %w", err)
	}
	rec, derr := decode[LeaderRecord](kv.Value)
	if derr != nil || rec.NodeID != q.cfg.NodeID || rec.SessionID == sess.ID() {
		return nil
	}
	log.Info("removing leader record of this node's previous session", "epoch", rec.Epoch, "old_session", rec.SessionID)
	if err := q.store.Delete(ctx, q.leaderKey(), kv.Version); err != nil && !errors.Is(err, coord.ErrNotFound) && !errors.Is(err, coord.ErrConflict) {
		return fmt.Errorf("remove stale leader record: %w", err)
	}
	return nil
}

func currentPriority(prio int, healthy bool) int {
	if healthy {
		return prio
	}
	return 0
}

func healthWord(ok bool) string {
	if ok {
		return "ok"
	}
	return "unhealthy"
}
