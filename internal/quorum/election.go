package quorum

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/keys"
)

// election is one session's view of members, the leader record and the
// priority configuration, and the decisions taken from it. It runs as a
// single goroutine; all its state is owned by that goroutine.
type election struct {
	q    *Quorum
	sess coord.Session
	log  *slog.Logger

	members   map[string]Member
	leader    *LeaderRecord
	leaderVer int64
	priority  map[string]int // operator-set priorities
	specified []string       // who may lead; empty: everyone
	synced    [3]bool

	myVer     int64 // version of our own member record
	lead      *running
	absentAt  time.Time            // when the leader record was first seen absent
	better    map[string]time.Time // members seen outranking us, since when
	holdUntil time.Time            // no campaign before this (after a failed leader role)
	timer     *time.Timer
}

// running is the leader role while it runs.
type running struct {
	l      *Leadership
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

func newElection(q *Quorum, sess coord.Session, log *slog.Logger) *election {
	return &election{
		q: q, sess: sess, log: log,
		members: make(map[string]Member), priority: make(map[string]int), better: make(map[string]time.Time),
	}
}

const (
	srcMembers = iota
	srcElection
	srcPriority
)

func (e *election) run(ctx context.Context) {
	watches := [3]*coord.Watcher{
		e.q.store.Watch(ctx, e.q.membersDir()),
		e.q.store.Watch(ctx, e.q.electionDir()),
		e.q.store.Watch(ctx, e.q.priorityDir()),
	}
	chans := [3]<-chan coord.Event{watches[0].Events(), watches[1].Events(), watches[2].Events()}
	e.timer = time.NewTimer(time.Hour)
	defer func() {
		e.stopLeading("membership term ended")
		e.timer.Stop()
		for _, w := range watches {
			w.Close()
		}
	}()
	for {
		var leadDone chan struct{}
		if e.lead != nil {
			leadDone = e.lead.done
		}
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-chans[srcMembers]:
			if !ok {
				return
			}
			e.applyMember(ev)
		case ev, ok := <-chans[srcElection]:
			if !ok {
				return
			}
			e.applyElection(ev)
		case ev, ok := <-chans[srcPriority]:
			if !ok {
				return
			}
			e.applyPriority(ev)
		case <-e.timer.C:
		case <-e.q.kick:
		case <-leadDone:
			err := e.lead.err
			e.log.Error("leader role stopped on its own; resigning leadership", "err", err)
			e.resign(ctx, fmt.Sprintf("leader role failed: %v", err))
			e.holdUntil = time.Now().Add(e.q.cfg.YieldGrace + e.q.cfg.CampaignStagger)
		}
		if e.synced[srcMembers] && e.synced[srcElection] && e.synced[srcPriority] {
			e.reconcile(ctx)
		}
	}
}

func (e *election) applyMember(ev coord.Event) {
	if ev.Type == coord.EventSynced {
		e.synced[srcMembers] = true
		e.publish()
		return
	}
	// A member is named by its key; a key or a record that names no valid
	// member (written around taskd) is never counted, ranked or dialled.
	name, err := keys.Child(e.q.membersDir(), ev.KV.Key, keys.ValidName)
	if err != nil {
		e.log.Warn("ignoring a member key that names no valid member", "key", keys.Quote(ev.KV.Key), "err", err)
		return
	}
	switch ev.Type {
	case coord.EventPut:
		m, err := decode[Member](ev.KV.Value)
		if err == nil && m.Name != name {
			err = fmt.Errorf("%w: the record names %s", keys.ErrInvalid, keys.Quote(m.Name))
		}
		if err != nil {
			e.log.Warn("ignoring undecodable member record", "key", ev.KV.Key, "err", err)
			return
		}
		m.joinOrder = ev.KV.CreateOrder
		e.members[m.Name] = m
		if m.Name == e.q.cfg.Name && m.SessionID == e.sess.ID() {
			e.myVer = ev.KV.Version
		}
	case coord.EventDelete:
		delete(e.members, name)
		delete(e.better, name)
	}
	e.publish()
}

func (e *election) applyElection(ev coord.Event) {
	if ev.Type == coord.EventSynced {
		e.synced[srcElection] = true
		return
	}
	if ev.KV.Key == e.q.specifiedKey() {
		e.specified = nil
		if ev.Type == coord.EventPut {
			rec, err := decode[specifiedRecord](ev.KV.Value)
			if err != nil {
				e.log.Warn("ignoring undecodable specified-members record", "err", err)
				return
			}
			e.specified = rec.Members
		}
		e.log.Info("specified members changed", "specified_members", e.specified)
		e.publish()
		return
	}
	if ev.KV.Key != e.q.leaderKey() {
		return
	}
	if ev.Type == coord.EventDelete {
		e.leader, e.leaderVer = nil, 0
	} else {
		rec, err := decode[LeaderRecord](ev.KV.Value)
		if err != nil {
			e.log.Warn("ignoring undecodable leader record", "err", err)
			return
		}
		e.leader, e.leaderVer = &rec, ev.KV.Version
	}
	e.publish()
}

func (e *election) applyPriority(ev coord.Event) {
	if ev.Type == coord.EventSynced {
		e.synced[srcPriority] = true
		return
	}
	name, err := keys.Child(e.q.priorityDir(), ev.KV.Key, keys.ValidName)
	if err != nil {
		e.log.Warn("ignoring a priority key that names no valid node", "key", keys.Quote(ev.KV.Key), "err", err)
		return
	}
	switch ev.Type {
	case coord.EventPut:
		pr, err := decode[priorityRecord](ev.KV.Value)
		if err != nil {
			e.log.Warn("ignoring undecodable priority record", "key", ev.KV.Key, "err", err)
			return
		}
		e.priority[name] = pr.Priority
	case coord.EventDelete:
		delete(e.priority, name)
	}
}

// publish copies the state into the node's View.
func (e *election) publish() {
	ms := make([]Member, 0, len(e.members))
	for _, m := range e.members {
		ms = append(ms, m)
	}
	slices.SortFunc(ms, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	e.q.updateView(func(v *View) {
		v.Members = ms
		v.Specified = slices.Clone(e.specified)
		v.Leader, v.Epoch, v.ElectedAt = "", 0, time.Time{}
		if e.leader != nil {
			v.Leader, v.Epoch, v.ElectedAt = e.leader.Name, e.leader.Epoch, e.leader.ElectedAt
		}
	})
}

// reconcile brings our record, our leadership and our campaign in line
// with the current state.
func (e *election) reconcile(ctx context.Context) {
	e.updateOwnRecord(ctx)
	me, ok := e.members[e.q.cfg.Name]
	if !ok || me.SessionID != e.sess.ID() {
		return // our record is not visible yet (or was replaced): wait for it
	}
	now := time.Now()
	next := time.Time{}
	schedule := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	mine := e.leader != nil && e.leader.SessionID == e.sess.ID()
	if e.leader != nil {
		e.absentAt = time.Time{}
	}
	if e.lead != nil && (!mine || e.leader.Epoch != e.lead.l.epoch) {
		e.stopLeading("leader record no longer ours")
	}
	switch {
	case mine:
		if e.lead == nil {
			// Our record from a campaign whose role has not started (or was
			// stopped): an elected leader without a role is useless, resign.
			e.resign(ctx, "leader record without a running role")
			return
		}
		if !e.eligible(me.Name) {
			e.resign(ctx, fmt.Sprintf("not among the specified members %v", e.specified))
			e.holdUntil = time.Now().Add(e.q.cfg.CampaignStagger)
			return
		}
		if to, ok := e.yieldTarget(me, now, schedule); ok {
			why := fmt.Sprintf("stable for %v", e.q.cfg.YieldGrace)
			if me.Starved {
				why = "this node is starved of CPU: " + me.StarvedReason
			}
			e.resign(ctx, fmt.Sprintf("yielding to %s (current priority %d > %d, %s)",
				to.Name, to.CurrentPriority, me.CurrentPriority, why))
			// Leave the target time to campaign before we would.
			e.holdUntil = time.Now().Add(e.q.cfg.CampaignStagger)
		}
	case e.leader == nil:
		if e.absentAt.IsZero() {
			e.absentAt = now
		}
		rank := slices.IndexFunc(ranked(e.members, e.specified), func(m Member) bool { return m.Name == me.Name })
		if rank < 0 {
			break
		}
		at := e.absentAt.Add(time.Duration(rank) * e.q.cfg.CampaignStagger)
		if e.holdUntil.After(at) {
			at = e.holdUntil
		}
		if now.Before(at) {
			schedule(at)
			break
		}
		e.campaign(ctx)
	default:
		clear(e.better)
	}
	if !next.IsZero() {
		e.timer.Reset(time.Until(next))
	}
}

// yieldTarget returns a member with strictly higher current priority that has
// been seen for the whole grace period. Equal priorities never move the
// leadership: when all members are equally (un)healthy it stays put.
func (e *election) yieldTarget(me Member, now time.Time, schedule func(time.Time)) (Member, bool) {
	var best Member
	found := false
	// A starved leader yields at once: its own starvation has passed its
	// hysteresis already, and waiting the grace on late heartbeats would
	// risk being fenced instead of handing over.
	grace := e.q.cfg.YieldGrace
	if starved, _ := e.q.starvation(); starved {
		grace = 0
	}
	for name, m := range e.members {
		if m.CurrentPriority <= me.CurrentPriority || !e.eligible(name) || m.Starved {
			delete(e.better, name)
			continue
		}
		since, ok := e.better[name]
		if !ok {
			since = now
			e.better[name] = now
			e.log.Info("member outranks the leader; waiting for it to stay stable before yielding",
				"member", name, "its_priority", m.CurrentPriority, "our_priority", me.CurrentPriority, "grace", e.q.cfg.YieldGrace)
		}
		if now.Sub(since) < grace {
			schedule(since.Add(grace))
			continue
		}
		if !found || outranks(m, best) {
			best, found = m, true
		}
	}
	return best, found
}

// eligible reports whether name may lead under the specified-members list.
func (e *election) eligible(name string) bool {
	return len(e.specified) == 0 || slices.Contains(e.specified, name)
}

// updateOwnRecord rewrites our member record when priority or health changed.
func (e *election) updateOwnRecord(ctx context.Context) {
	me, ok := e.members[e.q.cfg.Name]
	if !ok || me.SessionID != e.sess.ID() || e.myVer == 0 {
		return
	}
	prio := e.q.cfg.Priority
	if p, ok := e.priority[e.q.cfg.Name]; ok {
		prio = p
	}
	healthy, reason := e.q.health()
	starved, sReason := e.q.starvation()
	want := me
	want.Priority, want.CurrentPriority = prio, currentPriority(prio, healthy && !starved)
	want.Health, want.HealthReason = healthWord(healthy), reason
	want.Starved, want.StarvedReason = starved, sReason
	if want.Priority == me.Priority && want.CurrentPriority == me.CurrentPriority && want.Health == me.Health && want.HealthReason == me.HealthReason &&
		want.Starved == me.Starved && want.StarvedReason == me.StarvedReason {
		return
	}
	key, err := e.q.lay.MemberKey(e.q.cfg.Name)
	if err != nil {
		e.log.Error("cannot name own member record", "err", err)
		return
	}
	kv, err := e.q.store.Update(ctx, key, encode(want), e.myVer)
	if err != nil {
		e.log.Warn("updating own member record failed; will retry on the next change", "err", err)
		e.timer.Reset(time.Second)
		return
	}
	e.myVer = kv.Version
	want.joinOrder = me.joinOrder
	e.members[want.Name] = want
	if want.Priority != me.Priority || want.CurrentPriority != me.CurrentPriority || want.Health != me.Health || want.HealthReason != me.HealthReason || want.Starved != me.Starved {
		e.log.Info("priority changed", events.Priority.Attr(), "priority", want.Priority, "current_priority", want.CurrentPriority, "health", want.Health, "starved", want.Starved)
	}
	e.publish()
}

// campaign tries to become leader: one transaction bumps the epoch (only if
// it is unchanged) and creates the leader record (only if absent).
func (e *election) campaign(ctx context.Context) {
	ekv, err := e.q.store.Get(ctx, e.q.epochKey())
	if errors.Is(err, coord.ErrNotFound) {
		if _, err = e.q.store.Create(ctx, e.q.epochKey(), encode(epochRecord{})); err != nil && !errors.Is(err, coord.ErrExists) {
			e.retryLater("create epoch record", err)
			return
		}
		ekv, err = e.q.store.Get(ctx, e.q.epochKey())
	}
	if err != nil {
		e.retryLater("read epoch", err)
		return
	}
	cur, err := decode[epochRecord](ekv.Value)
	if err != nil {
		e.log.Error("epoch record is corrupt; refusing to campaign", "err", err, "value", string(ekv.Value))
		return
	}
	rec := LeaderRecord{Name: e.q.cfg.Name, NodeID: e.q.cfg.NodeID, SessionID: e.sess.ID(), Epoch: cur.Epoch + 1, ElectedAt: time.Now().UTC()}
	_, err = e.q.store.Txn(ctx,
		[]coord.Cond{coord.VersionIs(e.q.epochKey(), ekv.Version), {Key: e.q.leaderKey()}},
		[]coord.Op{coord.PutOp(e.q.epochKey(), encode(epochRecord{Epoch: rec.Epoch})), coord.CreateOp(e.q.leaderKey(), encode(rec), e.sess)})
	if errors.Is(err, coord.ErrConflict) {
		e.log.Debug("campaign lost the race", "epoch", rec.Epoch)
		return
	}
	if err != nil {
		e.retryLater("campaign", err)
		return
	}
	// The fencing token is the epoch key's version holding our epoch.
	ekv, err = e.q.store.Get(ctx, e.q.epochKey())
	if err != nil {
		e.log.Warn("elected but cannot read the fencing token; resigning", "epoch", rec.Epoch, "err", err)
		e.deleteLeaderRecord(ctx)
		return
	}
	if got, derr := decode[epochRecord](ekv.Value); derr != nil || got.Epoch != rec.Epoch {
		e.log.Warn("elected but the epoch moved on at once; not leading", "epoch", rec.Epoch)
		return
	}
	e.leader = &rec
	e.startLeading(ctx, &Leadership{q: e.q, sess: e.sess, epoch: rec.Epoch, token: ekv.Version})
	e.log.Info("elected leader", events.Election.Attr(), "epoch", rec.Epoch, "reason", "best eligible candidate and no leader")
	e.publish()
}

func (e *election) retryLater(what string, err error) {
	e.log.Warn(what+" failed; retrying", "err", err)
	e.timer.Reset(500 * time.Millisecond)
}

func (e *election) startLeading(ctx context.Context, l *Leadership) {
	lctx, cancel := context.WithCancel(ctx)
	r := &running{l: l, cancel: cancel, done: make(chan struct{})}
	e.lead = r
	go func() {
		defer close(r.done)
		if e.q.roles.Leader != nil {
			r.err = e.q.roles.Leader(lctx, l)
			if r.err == nil && lctx.Err() == nil {
				<-lctx.Done() // a role with nothing left to do keeps the lead
			}
		} else {
			<-lctx.Done()
		}
	}()
}

// stopLeading cancels the leader role and waits until it has returned.
func (e *election) stopLeading(reason string) {
	if e.lead == nil {
		return
	}
	started := time.Now()
	e.lead.cancel()
	<-e.lead.done
	e.log.Info("leadership ended", "epoch", e.lead.l.epoch, "reason", reason, "stop_duration", time.Since(started))
	e.lead = nil
}

// resign stops the leader role, then deletes our leader record so that the
// best candidate can campaign at once.
func (e *election) resign(ctx context.Context, reason string) {
	e.stopLeading(reason)
	e.deleteLeaderRecord(ctx)
	clear(e.better)
}

// deleteLeaderRecord deletes the leader record only if it is ours: it
// re-reads it and deletes at the version read, so a successor's record is
// never touched.
func (e *election) deleteLeaderRecord(ctx context.Context) {
	kv, err := e.q.store.Get(ctx, e.q.leaderKey())
	if errors.Is(err, coord.ErrNotFound) {
		return
	}
	if err == nil {
		rec, derr := decode[LeaderRecord](kv.Value)
		if derr != nil || rec.SessionID != e.sess.ID() {
			return
		}
		err = e.q.store.Delete(ctx, e.q.leaderKey(), kv.Version)
	}
	if err != nil && !errors.Is(err, coord.ErrNotFound) && !errors.Is(err, coord.ErrConflict) {
		e.log.Warn("deleting our leader record failed; it ends with our session", "err", err)
	}
}
