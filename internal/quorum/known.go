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

// ErrLive: the node named is a live member; it cannot be forgotten.
var ErrLive = errors.New("quorum: the node is a live member")

// KnownMember is the persistent record of a node that has joined the
// cluster, at ROOT/known/NAME. Unlike the member record it is not bound to
// a session: it survives the node's death, so that a member killed with
// kill -9 stays visible (down, last seen at LastSeen) until an operator
// forgets it (taskctl service forget).
type KnownMember struct {
	Name    string `json:"name"`
	NodeID  string `json:"node_id"`
	Address string `json:"address"`
	// FirstJoined is when the node first joined under this name.
	FirstJoined time.Time `json:"first_joined"`
	// LastSeen is the last time the node confirmed it was a live member:
	// written at each join and every Config.SeenInterval while joined.
	LastSeen time.Time `json:"last_seen"`
}

// DownMember is a member that was part of the cluster and has no live
// member record now.
type DownMember struct {
	Name    string
	Address string
	// LastSeen is its known record's last-seen time; zero when only the
	// embedded etcd's member list or the specified members name it.
	LastSeen time.Time
	// Sources say why it counts as a member: "known" (it joined),
	// "etcd" (an embedded etcd member), "specified" (may lead).
	Sources []string
}

// Down lists the members that were part of the cluster and are not live:
// known records, etcdMembers (the embedded etcd's member names) and the
// specified members, minus the live members and this node.
func (v View) Down(etcdMembers []string) []DownMember {
	live := map[string]bool{v.Self: true}
	for _, m := range v.Members {
		live[m.Name] = true
	}
	down := map[string]*DownMember{}
	add := func(name, source string) *DownMember {
		if live[name] || keys.ValidName(name) != nil {
			return nil
		}
		d := down[name]
		if d == nil {
			d = &DownMember{Name: name}
			down[name] = d
		}
		if !slices.Contains(d.Sources, source) {
			d.Sources = append(d.Sources, source)
		}
		return d
	}
	for _, k := range v.Known {
		if d := add(k.Name, "known"); d != nil {
			d.Address, d.LastSeen = k.Address, k.LastSeen
		}
	}
	for _, n := range etcdMembers {
		add(n, "etcd")
	}
	for _, n := range v.Specified {
		add(n, "specified")
	}
	out := make([]DownMember, 0, len(down))
	for _, d := range down {
		out = append(out, *d)
	}
	slices.SortFunc(out, func(a, b DownMember) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// runKnown keeps this node's known record while the term lasts (written at
// join, refreshed every SeenInterval) and follows every node's known
// record into the View. The View keeps the last records when the term
// ends, so a node that lost its session still knows who was a member.
func (q *Quorum) runKnown(ctx context.Context, log *slog.Logger) {
	key, err := q.lay.KnownKey(q.cfg.Name)
	if err != nil {
		return // Validate checked the name
	}
	first := time.Time{}
	seen := func() {
		wctx, cancel := context.WithTimeout(ctx, q.cfg.SessionTimeout)
		defer cancel()
		var werr error
		if first, werr = q.writeKnown(wctx, key, first); werr != nil && ctx.Err() == nil {
			log.Warn("cannot record this node as a known member; retrying", "err", werr)
		}
	}
	seen()
	w := q.store.Watch(ctx, q.lay.KnownDir())
	defer w.Close()
	tick := time.NewTicker(q.cfg.SeenInterval)
	defer tick.Stop()
	known := map[string]KnownMember{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			seen()
		case ev, ok := <-w.Events():
			if !ok {
				<-ctx.Done()
				return
			}
			if q.applyKnown(known, ev, log) {
				q.publishKnown(known)
			}
		}
	}
}

// writeKnown writes this node's known record with LastSeen now, keeping
// the first-joined time of an earlier record. It returns that time.
func (q *Quorum) writeKnown(ctx context.Context, key string, first time.Time) (time.Time, error) {
	now := time.Now().UTC()
	if first.IsZero() {
		first = now
		kv, err := q.store.Get(ctx, key)
		switch {
		case err == nil:
			if old, derr := decode[KnownMember](kv.Value); derr == nil && !old.FirstJoined.IsZero() && old.Name == q.cfg.Name {
				first = old.FirstJoined
			}
		case !errors.Is(err, coord.ErrNotFound):
			return time.Time{}, fmt.Errorf("read known member record: %w", err)
		}
	}
	rec := encode(KnownMember{Name: q.cfg.Name, NodeID: q.cfg.NodeID, Address: q.cfg.Address, FirstJoined: first, LastSeen: now})
	if _, err := q.store.Update(ctx, key, rec, 0); err == nil {
		return first, nil
	} else if !errors.Is(err, coord.ErrNotFound) {
		return time.Time{}, fmt.Errorf("write known member record: %w", err)
	}
	if _, err := q.store.Create(ctx, key, rec); err != nil && !errors.Is(err, coord.ErrExists) {
		return time.Time{}, fmt.Errorf("create known member record: %w", err)
	}
	return first, nil
}

// applyKnown applies one watch event; it reports whether to publish.
func (q *Quorum) applyKnown(known map[string]KnownMember, ev coord.Event, log *slog.Logger) bool {
	if ev.Type == coord.EventSynced {
		return true
	}
	name, err := keys.Child(q.lay.KnownDir(), ev.KV.Key, keys.ValidName)
	if err != nil {
		log.Warn("ignoring a known-member key that names no valid member", "key", keys.Quote(ev.KV.Key), "err", err)
		return false
	}
	switch ev.Type {
	case coord.EventPut:
		k, err := decode[KnownMember](ev.KV.Value)
		if err != nil || k.Name != name {
			log.Warn("ignoring a known-member record that does not match its key", "key", keys.Quote(ev.KV.Key))
			return false
		}
		known[name] = k
	case coord.EventDelete:
		delete(known, name)
	}
	return true
}

func (q *Quorum) publishKnown(known map[string]KnownMember) {
	ks := make([]KnownMember, 0, len(known))
	for _, k := range known {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, func(a, b KnownMember) int { return strings.Compare(a.Name, b.Name) })
	q.updateView(func(v *View) { v.Known = ks })
}

// Forgotten says what Forget removed.
type Forgotten struct {
	Known bool // the known-member record
	Etcd  bool // the embedded etcd member
}

// ErrSpecified: the node is one of the specified members.
var ErrSpecified = errors.New("quorum: the node is a specified member")

// ErrNotKnown: no known-member record or etcd member has that name.
var ErrNotKnown = errors.New("quorum: no known member has that name")

// Forget removes a decommissioned node, so that it no longer shows as
// down: its known-member record, and through removeEtcd (nil for external
// stores; it reports whether a member was removed) its embedded etcd
// member. A live member (one with a member record) is refused with
// ErrLive, a specified member with ErrSpecified, before anything changes;
// a name nothing knows is ErrNotKnown.
func (q *Quorum) Forget(ctx context.Context, name string, removeEtcd func(context.Context, string) (bool, error)) (Forgotten, error) {
	var f Forgotten
	member, err := q.lay.MemberKey(name)
	if err != nil {
		return f, err
	}
	key, err := q.lay.KnownKey(name)
	if err != nil {
		return f, err
	}
	if _, err := q.store.Get(ctx, member); err == nil {
		return f, fmt.Errorf("%w: %s has a live session; stop taskd on it before forgetting it", ErrLive, name)
	} else if !errors.Is(err, coord.ErrNotFound) {
		return f, err
	}
	switch kv, err := q.store.Get(ctx, q.specifiedKey()); {
	case err == nil:
		if rec, derr := decode[specifiedRecord](kv.Value); derr == nil && slices.Contains(rec.Members, name) {
			return f, fmt.Errorf("%w: %s may lead (specified members %v); change the list with taskctl service set-specified-members first",
				ErrSpecified, name, rec.Members)
		}
	case !errors.Is(err, coord.ErrNotFound):
		return f, err
	}
	switch err := q.store.Delete(ctx, key, 0); {
	case err == nil:
		f.Known = true
	case !errors.Is(err, coord.ErrNotFound):
		return f, err
	}
	if removeEtcd != nil {
		removed, err := removeEtcd(ctx, name)
		if err != nil {
			return f, err
		}
		f.Etcd = removed
	}
	if !f.Known && !f.Etcd {
		return f, fmt.Errorf("%s: %w", name, ErrNotKnown)
	}
	q.log.Info("member forgotten", events.MemberForgotten.Attr(), "member", name, "known_record", f.Known, "etcd_member", f.Etcd)
	return f, nil
}
