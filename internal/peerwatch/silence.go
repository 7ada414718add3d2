// Package peerwatch ends the session of an embedded etcd member whose
// process is gone, on time, when the store itself would keep it.
//
// Why: when the etcd raft leader dies, the new raft leader renews every
// lease for a full TTL, so the dead node's session outlives its death by
// the election time and a whole session timeout (resume took 10.8 s at a
// 6 s timeout). The surviving members know more than the lease does: their
// raft transports saw the peer's links drop.
//
// How: every member's Reporter samples its own etcd member's peer links
// and publishes, in a record bound to its session, the peers it has not
// been linked to for a session timeout. The taskd leader's Reaper revokes
// a member's session once every other live member reports it silent, in
// a decision fenced by the leader's epoch and by the version of every
// report it used.
//
// Why this cannot end a live member's session: in the embedded store a
// node's lease is renewed by its own etcd member, which forwards the
// renewal to the raft leader over the same peer links, and the raft
// leader is one of the reporting members. A node that renewed its lease
// at time t was linked to the raft leader at t; so when every survivor has
// had no link to it for a session timeout T, its last renewal was sent
// more than T ago, and the node has fenced itself (its local deadline is a
// fraction of T after the send time of its last confirmed renewal). Every
// duration is measured by one member's monotonic clock; no two clocks are
// compared, so clock skew and steps do not enter.
package peerwatch

import (
	"slices"
	"time"
)

// Links reads a member's raft transport: by peer name, whether it is
// linked to that peer now.
type Links interface {
	PeerLinks() (map[string]bool, error)
}

// tracker turns samples of the links into the peers that have been
// unlinked for at least threshold, continuously.
type tracker struct {
	threshold time.Duration
	since     map[string]time.Time // peer -> first sample that saw it unlinked
}

func newTracker(threshold time.Duration) *tracker {
	return &tracker{threshold: threshold, since: map[string]time.Time{}}
}

// observe records a sample taken at now and returns the silent peers with
// how long each has been silent. A peer seen linked once starts over; a
// peer that left the membership is forgotten. The first sample that sees a
// peer unlinked starts its silence, so sampling late only shortens what is
// reported.
func (t *tracker) observe(now time.Time, links map[string]bool) map[string]time.Duration {
	for p := range t.since {
		if _, member := links[p]; !member {
			delete(t.since, p)
		}
	}
	silent := map[string]time.Duration{}
	for p, up := range links {
		if up {
			delete(t.since, p)
			continue
		}
		s, ok := t.since[p]
		if !ok {
			t.since[p] = now
			continue
		}
		if d := now.Sub(s); d >= t.threshold {
			silent[p] = d
		}
	}
	return silent
}

// names are the keys of m, sorted.
func names[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
