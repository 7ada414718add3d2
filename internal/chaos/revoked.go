package chaos

import (
	"encoding/json"
	"slices"
	"strings"
	"time"
)

// revokingKinds are the faults after which the leader may end a member's
// session early (internal/peerwatch): the member's process is gone or
// cannot reach its peers.
var revokingKinds = []string{faultKillLeader, faultKill, faultStoreLeader, faultStop, faultPartition, faultStarve}

// checkRevocations: every session_revoked event by the leader names a member that was
// under a fault that silences it (killed, stopped, partitioned, starved)
// when its session was ended. Ending a live, connected member's session
// would be a violation: it would leave a live process believing in a
// session the store has dropped.
func (r *run) checkRevocations() {
	r.eachLogLine(func(n string, line []byte) {
		var l struct {
			Time   time.Time `json:"time"`
			Event  string    `json:"event"`
			Member string    `json:"member"`
		}
		if json.Unmarshal(line, &l) != nil || l.Event != "session_revoked" {
			return
		}
		r.mu.Lock()
		r.rep.Revoked++
		// A node ending its own previous session as it rejoins is excused:
		// its data directory lock proves that process gone.
		excused := l.Member == n || slices.ContainsFunc(r.spans, func(s faultSpan) bool {
			return slices.Contains(revokingKinds, s.kind) && names(s.what, l.Member) &&
				!l.Time.Before(s.began) && !l.Time.After(s.whole.Add(r.cfg.SessionTimeout))
		})
		r.mu.Unlock()
		if !excused {
			r.violation("the leader ended the session of %s at %s, which was under no fault that silences it", l.Member, l.Time.Format(time.StampMilli))
		}
	})
}

// names reports whether a fault's description names node as a word.
func names(what, node string) bool {
	return slices.Contains(strings.FieldsFunc(what, func(c rune) bool { return c == ' ' || c == '(' || c == ')' || c == ':' || c == ';' || c == ',' }), node)
}
