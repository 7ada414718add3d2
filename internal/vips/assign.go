package vips

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/taskd/taskd/internal/backoff"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/vipaddr"
)

// Assigner writes the holder assignments while its node leads.
type Assigner struct {
	store coord.Store
	l     keys.VIPs
	self  string
	// grace is how long a live holder may be unhealthy before its VIPs
	// move; when every member turns unhealthy within it, nothing moves.
	grace time.Duration
	seed  []vipaddr.Spec
	log   *slog.Logger
}

// NewAssigner returns the assigner of node self. seed are VIPs to create
// when absent (taskd's --vip flag).
func NewAssigner(store coord.Store, root keys.Root, self string, grace time.Duration, seed []vipaddr.Spec, log *slog.Logger) *Assigner {
	return &Assigner{store: store, l: root.VIPs(), self: self, grace: grace, seed: seed, log: log}
}

// Run assigns every VIP until ctx ends, and returns an error wrapping
// quorum.ErrFenced if the leadership was lost under it. It is driven by the
// store's watches and the node's view; a timer only ends a grace period.
func (a *Assigner) Run(ctx context.Context, l *quorum.Leadership, view func() (quorum.View, <-chan struct{})) error {
	reg := &Registry{store: a.store, l: a.l}
	seeds := a.seed
	cfgs := watchDir(ctx, a.store, a.l.ConfigDir())
	defer cfgs.close()
	asg := watchDir(ctx, a.store, a.l.AssignDir())
	defer asg.close()
	pols := watchDir(ctx, a.store, a.l.NodesDir())
	defer pols.close()
	hist := newHealthHistory()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	// Writes that fail (etcd drops proposals while its raft leader moves,
	// which a taskd election often causes) are retried soon, then less
	// often.
	const firstRetry, maxRetry = 50 * time.Millisecond, 2 * time.Second
	retry := backoff.New(firstRetry, maxRetry)
	for {
		v, changed := view()
		now := time.Now()
		hist.observe(v.Members, now, a.grace)
		var errs []error
		for cfgs.synced && len(seeds) > 0 {
			if _, ok := cfgs.keys[seeds[0].Service]; ok {
				seeds = seeds[1:]
				continue
			}
			if err := reg.Seed(ctx, seeds[0]); err != nil {
				errs = append(errs, err)
				break
			}
			seeds = seeds[1:]
		}
		var next time.Time
		if cfgs.synced && asg.synced && pols.synced {
			n, err := a.reconcile(ctx, l, v, cfgs, asg, policiesOf(pols.keys), hist, now)
			if errors.Is(err, quorum.ErrFenced) {
				return err
			}
			next = n
			errs = append(errs, err)
		}
		if err := errors.Join(errs...); err != nil && ctx.Err() == nil {
			a.log.Warn("vip assignment failed; retrying", "err", err, "retry_in", retry.Next())
			next = now.Add(retry.Advance())
		} else {
			retry.Reset()
		}
		if !next.IsZero() {
			timer.Reset(time.Until(next))
		}
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-cfgs.ch:
			if !cfgs.apply(ev, ok) || !cfgs.drain() {
				return nil
			}
		case ev, ok := <-asg.ch:
			if !asg.apply(ev, ok) || !asg.drain() {
				return nil
			}
		case ev, ok := <-pols.ch:
			if !pols.apply(ev, ok) || !pols.drain() {
				return nil
			}
		case <-changed:
		case <-timer.C:
		}
	}
}

// reconcile writes what differs; it returns when to look again (zero: at
// the next change). A member whose published policy refuses a VIP is left
// out of that VIP's choice, as if it were not a member.
func (a *Assigner) reconcile(ctx context.Context, l *quorum.Leadership, v quorum.View, cfgs, asg *mirror, policies map[string]vipaddr.Policy, hist *healthHistory, now time.Time) (time.Time, error) {
	var next time.Time
	var errs []error
	for svc, ckv := range cfgs.keys {
		c, err := decode[ServiceVIP](ckv.Key, ckv.Value)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if c.Service != svc {
			// Written around taskd: never assigned, so no key is built
			// from the name it carries.
			a.log.Warn("ignoring a vip record that names another service", "key", ckv.Key, "service", keys.Quote(c.Service))
			continue
		}
		var cur *Assignment
		akv, hasAsg := asg.keys[svc]
		if hasAsg {
			if x, err := decode[Assignment](akv.Key, akv.Value); err == nil {
				cur = &x
			}
		}
		members, refused := v.Members, ""
		if spec, err := c.Spec(); err == nil {
			members, refused = allowing(spec, v.Members, policies)
		}
		d := choose(c, cur, a.self, members, hist, now, a.grace)
		if refused != "" {
			d.reason += "; " + refused
		}
		if !d.recheck.IsZero() && (next.IsZero() || d.recheck.Before(next)) {
			next = d.recheck
		}
		if d.node == "" {
			continue
		}
		reassign := cur == nil || cur.Node != d.node || cur.Session != d.session
		if !reassign && !d.dropPref {
			continue
		}
		var conds []coord.Cond
		var ops []coord.Op
		if reassign {
			rec := encode(Assignment{Node: d.node, Session: d.session, Epoch: l.Epoch(), Since: now.UTC(), Reason: d.reason})
			if hasAsg {
				conds = append(conds, coord.VersionIs(akv.Key, akv.Version))
				ops = append(ops, coord.PutOp(akv.Key, rec))
			} else {
				key, err := a.l.AssignKey(svc)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				conds = append(conds, coord.VersionIs(key, 0))
				ops = append(ops, coord.CreateOp(key, rec, nil))
			}
		}
		if d.dropPref {
			a.log.Info("vip's preferred node is gone or unhealthy; the preference is dropped", events.VIPPreferenceDropped.Attr(), "service", svc, "node", c.Preferred)
			c.Preferred, c.UpdatedAt = "", now.UTC()
			conds = append(conds, coord.VersionIs(ckv.Key, ckv.Version))
			ops = append(ops, coord.PutOp(ckv.Key, encode(c)))
		}
		vers, err := l.Txn(ctx, conds, ops)
		if err != nil {
			if errors.Is(err, quorum.ErrFenced) {
				return next, err
			}
			if !errors.Is(err, coord.ErrConflict) { // a conflict: the watch brings the news
				errs = append(errs, fmt.Errorf("assign vip %s to %s: %w", svc, d.node, err))
			}
			continue
		}
		if reassign { // ops[0] is the assignment
			asg.keys[svc] = coord.KV{Key: ops[0].Key, Value: ops[0].Value, Version: vers[0]}
			a.log.Info("vip assigned", events.VIPAssign.Attr(), "service", svc, "node", d.node, "reason", d.reason)
		}
		if d.dropPref { // the last op is the configuration
			cfgs.keys[svc] = coord.KV{Key: ckv.Key, Value: ops[len(ops)-1].Value, Version: vers[len(vers)-1]}
		}
	}
	for svc, akv := range asg.keys {
		if _, ok := cfgs.keys[svc]; ok {
			continue
		}
		if _, err := l.Txn(ctx, []coord.Cond{coord.VersionIs(akv.Key, akv.Version)}, []coord.Op{coord.DeleteOp(akv.Key)}); err != nil {
			if errors.Is(err, quorum.ErrFenced) {
				return next, err
			}
			if !errors.Is(err, coord.ErrConflict) {
				errs = append(errs, fmt.Errorf("remove the assignment of deleted vip %s: %w", svc, err))
			}
			continue
		}
		delete(asg.keys, svc)
		a.log.Info("vip unassigned (deleted)", events.VIPUnassign.Attr(), "service", svc)
	}
	return next, errors.Join(errs...)
}

// allowing returns the members whose policy allows spec, and a note
// naming those that refuse it ("" when none does).
func allowing(spec vipaddr.Spec, members []quorum.Member, policies map[string]vipaddr.Policy) ([]quorum.Member, string) {
	no := refusals(spec, members, policies)
	if len(no) == 0 {
		return members, ""
	}
	out := make([]quorum.Member, 0, len(members))
	for _, m := range members {
		if _, ok := no[m.Name]; !ok {
			out = append(out, m)
		}
	}
	names := slices.Sorted(maps.Keys(no))
	for i, n := range names {
		names[i] = n + " refuses it (" + no[n] + ")"
	}
	return out, strings.Join(names, "; ")
}

// healthHistory is what the assigner has seen of the members' health
// while it runs.
type healthHistory struct {
	unhealthy map[string]time.Time // since when a member is unhealthy
	recovered map[string]time.Time // when a member turned healthy again (until stable)
}

func newHealthHistory() *healthHistory {
	return &healthHistory{unhealthy: map[string]time.Time{}, recovered: map[string]time.Time{}}
}

// observe records the members' health as of now. A member that was healthy
// when the assigner started counts as stable.
func (h *healthHistory) observe(members []quorum.Member, now time.Time, grace time.Duration) {
	seen := map[string]bool{}
	for _, m := range members {
		seen[m.Name] = true
		switch _, was := h.unhealthy[m.Name]; {
		case m.Health != "ok":
			if !was {
				h.unhealthy[m.Name] = now
			}
			delete(h.recovered, m.Name)
		case was:
			delete(h.unhealthy, m.Name)
			h.recovered[m.Name] = now
		case now.Sub(h.recovered[m.Name]) >= grace:
			delete(h.recovered, m.Name)
		}
	}
	for n := range h.unhealthy {
		if !seen[n] {
			delete(h.unhealthy, n)
		}
	}
	for n := range h.recovered {
		if !seen[n] {
			delete(h.recovered, n)
		}
	}
}

// decision is where one VIP should be.
type decision struct {
	node, session, reason string
	dropPref              bool
	recheck               time.Time // a grace period ends then
}

// choose decides the holder of one VIP. A VIP leaves a live holder only
// for an eligible member: healthy, and healthy for at least grace if it
// recovered while the assigner watched, so that members recovering one
// after another do not move it once per member. In order:
//  1. its preferred node (set by a drain), while that node is eligible,
//     or live and unhealthy for less than grace, or live while no member
//     is eligible; otherwise the preference is dropped;
//  2. else the leader, when eligible;
//  3. else the current holder, while it is live and healthy, or unhealthy
//     for less than grace;
//  4. else the best eligible member (highest current priority, then name);
//  5. else the current holder if it is live (no carousel while the whole
//     access network is bad), or the leader.
func choose(c ServiceVIP, cur *Assignment, self string, members []quorum.Member, h *healthHistory, now time.Time, grace time.Duration) decision {
	byName := map[string]quorum.Member{}
	for _, m := range members {
		byName[m.Name] = m
	}
	healthy := func(n string) bool { m, ok := byName[n]; return ok && m.Health == "ok" }
	inGrace := func(n string) (time.Time, bool) {
		since, ok := h.unhealthy[n]
		end := since.Add(grace)
		return end, ok && now.Before(end)
	}
	curLive := false
	if cur != nil {
		m, ok := byName[cur.Node]
		curLive = ok && m.SessionID == cur.Session
	}
	// stableAt is when a recovering member becomes eligible; the earliest
	// one is when to look again.
	var stableAt time.Time
	eligible := func(n string) bool {
		if !healthy(n) || !curLive || n == cur.Node {
			return healthy(n)
		}
		rec, ok := h.recovered[n]
		if !ok || !now.Before(rec.Add(grace)) {
			return true
		}
		if stableAt.IsZero() || rec.Add(grace).Before(stableAt) {
			stableAt = rec.Add(grace)
		}
		return false
	}
	anyEligible := func() bool {
		found := false
		for _, m := range members {
			found = eligible(m.Name) || found // visit all: stableAt wants every recovering member
		}
		return found
	}
	to := func(n, reason string) decision {
		return decision{node: n, session: byName[n].SessionID, reason: reason}
	}
	var d decision
	if p := c.Preferred; p != "" {
		if eligible(p) {
			return to(p, "drained to "+p)
		}
		if _, live := byName[p]; live {
			if end, ok := inGrace(p); ok {
				d = to(p, "drained to "+p+"; unhealthy, within grace")
				d.recheck = end
				return d
			}
			if !anyEligible() {
				d = to(p, "drained to "+p+"; no other member is eligible")
				d.recheck = stableAt
				return d
			}
		}
		d.dropPref = true
	}
	pick := func(n, reason string) decision {
		x := to(n, reason)
		x.dropPref = d.dropPref
		return x
	}
	if eligible(self) {
		return pick(self, "leader")
	}
	if curLive {
		if healthy(cur.Node) {
			return pick(cur.Node, cur.Reason)
		}
		if end, ok := inGrace(cur.Node); ok {
			x := pick(cur.Node, cur.Reason)
			x.recheck = end
			return x
		}
	}
	var best *quorum.Member
	for _, m := range members {
		if !eligible(m.Name) {
			continue
		}
		if best == nil || m.CurrentPriority > best.CurrentPriority ||
			(m.CurrentPriority == best.CurrentPriority && cmp.Less(m.Name, best.Name)) {
			best = &m
		}
	}
	if best != nil {
		return pick(best.Name, "healthiest member (the leader is unhealthy)")
	}
	if curLive {
		x := pick(cur.Node, cur.Reason)
		x.recheck = stableAt
		return x
	}
	if _, ok := byName[self]; ok {
		return pick(self, "leader (no member is healthy)")
	}
	if len(members) > 0 {
		names := make([]string, 0, len(members))
		for _, m := range members {
			names = append(names, m.Name)
		}
		slices.Sort(names)
		return pick(names[0], "no member is healthy")
	}
	return d
}
