package peerwatch

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"path"
	"slices"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/quorum"
)

// Member is a live member as the decision needs it.
type Member struct {
	Name, SessionID string
}

// record is one member's silence record as last read.
type record struct {
	version int64
	silent  map[string]int64
}

// doomed are the members whose session to revoke: every other node the
// cluster knows (known: the known-member records, which outlive a
// session; and every live member) is a live member with a record naming
// it silent. A known node without a session blocks the decision: it may
// still be a live etcd member, even the raft leader, and a member that
// reaches it renews its lease through it. self (the leader, alive by
// definition) is never doomed, nor is a member with no other node to
// vouch for its death. With known empty (not read yet) nothing is.
func doomed(members []Member, known []string, records map[string]record, self string) []Member {
	if len(known) == 0 {
		return nil
	}
	live := map[string]bool{}
	for _, m := range members {
		if m.SessionID != "" {
			live[m.Name] = true
		}
	}
	others := func(m string) []string {
		var out []string
		for _, n := range known {
			if n != m && !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
		for _, s := range members {
			if s.Name != m && !slices.Contains(out, s.Name) {
				out = append(out, s.Name)
			}
		}
		return out
	}
	var out []Member
	for _, m := range members {
		if m.Name == self || m.SessionID == "" {
			continue
		}
		witnesses := others(m.Name)
		all := len(witnesses) > 0
		for _, s := range witnesses {
			rec, ok := records[s]
			if _, silent := rec.silent[m.Name]; !live[s] || !ok || !silent {
				all = false
				break
			}
		}
		if all {
			out = append(out, m)
		}
	}
	return out
}

// Reaper is the leader's side: it revokes the sessions that doomed names.
type Reaper struct {
	store   coord.Store
	revoker coord.SessionRevoker
	lay     keys.Quorum
	self    string
	log     *slog.Logger
}

// NewReaper revokes through revoker the sessions of members silent to
// every other live member under root; self is the leader's node name.
func NewReaper(store coord.Store, revoker coord.SessionRevoker, root keys.Root, self string, log *slog.Logger) *Reaper {
	return &Reaper{store: store, revoker: revoker, lay: root.Quorum(), self: self, log: log}
}

// retryRevoke is how soon a failed decision or revoke is tried again.
const retryRevoke = 500 * time.Millisecond

// Run follows the silence records and the membership, and revokes, until
// ctx ends or the leadership is fenced.
func (r *Reaper) Run(ctx context.Context, l *quorum.Leadership, view func() (quorum.View, <-chan struct{})) error {
	w := r.store.Watch(ctx, r.lay.SilenceDir())
	defer w.Close()
	records := map[string]record{}
	revoked := map[string]bool{} // session IDs already revoked
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	synced := false
	for {
		v, changed := view()
		if synced {
			err := r.reap(ctx, l, v, records, revoked)
			if errors.Is(err, quorum.ErrFenced) {
				return nil // the role ends with the fence
			}
			if err != nil {
				r.log.Warn("cannot end a silent member's session yet", "err", err)
				retry.Reset(retryRevoke)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-retry.C:
		case ev, ok := <-w.Events():
			if !ok {
				return nil
			}
			synced = synced || ev.Type == coord.EventSynced
			r.apply(records, ev)
		}
	}
}

// apply folds a watch event into records.
func (r *Reaper) apply(records map[string]record, ev coord.Event) {
	name := path.Base(ev.KV.Key)
	switch ev.Type {
	case coord.EventDelete:
		delete(records, name)
	case coord.EventPut:
		if keys.ValidName(name) != nil {
			return
		}
		var rep Report
		if err := json.Unmarshal(ev.KV.Value, &rep); err != nil {
			r.log.Warn("ignoring an unreadable silence record", "key", ev.KV.Key, "err", err)
			delete(records, name)
			return
		}
		records[name] = record{version: ev.KV.Version, silent: rep.Silent}
	}
}

// reap revokes the sessions doomed names, each after a fenced check that
// the leadership and every report it rests on are still current.
func (r *Reaper) reap(ctx context.Context, l *quorum.Leadership, v quorum.View, records map[string]record, revoked map[string]bool) error {
	members := make([]Member, 0, len(v.Members))
	for _, m := range v.Members {
		members = append(members, Member{Name: m.Name, SessionID: m.SessionID})
	}
	known := make([]string, 0, len(v.Known))
	for _, k := range v.Known {
		known = append(known, k.Name)
	}
	for _, m := range doomed(members, known, records, r.self) {
		if revoked[m.SessionID] {
			continue
		}
		var conds []coord.Cond
		var witnesses []string
		silentFor := map[string]int64{}
		for _, s := range members {
			if s.Name == m.Name {
				continue
			}
			key, err := r.lay.SilenceKey(s.Name)
			if err != nil {
				return err
			}
			conds = append(conds, coord.VersionIs(key, records[s.Name].version))
			witnesses = append(witnesses, s.Name)
			silentFor[s.Name] = records[s.Name].silent[m.Name]
		}
		if _, err := l.Txn(ctx, conds, nil); err != nil {
			if errors.Is(err, coord.ErrConflict) {
				continue // a report changed: the watch brings the new one
			}
			return err
		}
		if err := r.revoker.RevokeSession(ctx, m.SessionID); err != nil {
			return err
		}
		revoked[m.SessionID] = true
		slices.Sort(witnesses)
		r.log.Warn("ended the session of a member every other member's raft transport has not reached for a session timeout (its lease would have outlived it)",
			events.SessionRevoked.Attr(), "member", m.Name, "session_id", m.SessionID, "witnesses", witnesses, "silent_ms", silentFor, "epoch", l.Epoch())
	}
	return nil
}
