package peerwatch

import (
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
)

func TestTrackerReportsOnlyAfterAThresholdOfSilence(t *testing.T) {
	tr := newTracker(6 * time.Second)
	t0 := time.Now()
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	steps := []struct {
		at    time.Duration
		links map[string]bool
		want  []string
	}{
		{0, map[string]bool{"a": true, "b": false}, nil},                       // b's silence starts
		{5900 * time.Millisecond, map[string]bool{"a": true, "b": false}, nil}, // not yet a threshold
		{6 * time.Second, map[string]bool{"a": true, "b": false}, []string{"b"}},
		{6100 * time.Millisecond, map[string]bool{"a": false, "b": true}, nil}, // b back; a's silence starts
		{12 * time.Second, map[string]bool{"a": false, "b": false}, nil},       // b starts over, a at 5.9 s
		{12100 * time.Millisecond, map[string]bool{"a": false, "b": false}, []string{"a"}},
		{18 * time.Second, map[string]bool{"b": false}, []string{"b"}},                     // a left the membership
		{18100 * time.Millisecond, map[string]bool{"a": false, "b": false}, []string{"b"}}, // a again: starts over
	}
	for i, s := range steps {
		got := names(tr.observe(at(s.at), s.links))
		if !slices.Equal(got, s.want) && !(len(got) == 0 && len(s.want) == 0) {
			t.Fatalf("step %d at %v: silent %v, want %v", i, s.at, got, s.want)
		}
	}
}

func member(names ...string) []Member {
	var out []Member
	for _, n := range names {
		out = append(out, Member{Name: n, SessionID: "lease-" + n})
	}
	return out
}

func rec(v int64, silent ...string) record {
	r := record{version: v, silent: map[string]int64{}}
	for _, s := range silent {
		r.silent[s] = 6000
	}
	return r
}

func TestDoomed(t *testing.T) {
	cases := []struct {
		name    string
		members []Member
		records map[string]record
		self    string
		want    []string
		known   []string // nil: the members' names
	}{
		{"every other member lost n3", member("n1", "n2", "n3"), map[string]record{"n1": rec(1, "n3"), "n2": rec(2, "n3")}, "n1", []string{"n3"}, nil},
		{"one member still reaches n3 (asymmetric partition)", member("n1", "n2", "n3"), map[string]record{"n1": rec(1, "n3"), "n2": rec(2)}, "n1", nil, nil},
		{"one member has no record", member("n1", "n2", "n3"), map[string]record{"n1": rec(1, "n3")}, "n1", nil, nil},
		{"the leader itself is never doomed", member("n1", "n2", "n3"), map[string]record{"n2": rec(1, "n1"), "n3": rec(2, "n1")}, "n1", nil, nil},
		{"a record of a dead reporter does not count", member("n1", "n2"), map[string]record{"n3": rec(1, "n2")}, "n1", nil, nil},
		{"a member's own record is not evidence against it", member("n1", "n2", "n3"), map[string]record{"n1": rec(1, "n3"), "n3": rec(2, "n3")}, "n1", nil, nil},
		{"alone: nobody vouches", member("n1"), map[string]record{}, "n2", nil, nil},
		{"a member without a session ID", []Member{{Name: "n1", SessionID: "lease-1"}, {Name: "n2"}}, map[string]record{"n1": rec(1, "n2")}, "n1", nil, nil},
		{"two members lost each other: only the non-leader", member("n1", "n2", "n3"), map[string]record{"n1": rec(1, "n3"), "n2": rec(1, "n3"), "n3": rec(1, "n1", "n2")}, "n1", []string{"n3"}, nil},
		// A known node without a session may be a live etcd member, even
		// the raft leader, that the doomed one still reaches (CI: n3 had
		// fenced during the raft election when n2 revoked the dead n1 on
		// n2's word alone).
		{"a known node without a session blocks", member("n1", "n2"), map[string]record{"n2": rec(1, "n1")}, "n2", nil, []string{"n1", "n2", "n3"}},
		{"every known node lost n3", member("n1", "n2", "n3", "n4"), map[string]record{"n1": rec(1, "n3"), "n2": rec(1, "n3"), "n4": rec(1, "n3")}, "n1", []string{"n3"}, []string{"n1", "n2", "n3", "n4"}},
		{"the known records not read yet", member("n1", "n2", "n3"), map[string]record{"n1": rec(1, "n3"), "n2": rec(2, "n3")}, "n1", nil, []string{}},
		{"a live member not yet in the known records counts", member("n1", "n2", "n3", "n4"), map[string]record{"n1": rec(1, "n3"), "n2": rec(2, "n3")}, "n1", nil, []string{"n1", "n2", "n3"}},
	}
	for _, c := range cases {
		known := c.known
		if known == nil {
			for _, m := range c.members {
				known = append(known, m.Name)
			}
		}
		var got []string
		for _, m := range doomed(c.members, known, c.records, c.self) {
			got = append(got, m.Name)
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: doomed %v, want %v", c.name, got, c.want)
		}
	}
}

// TestApplyRefusesCraftedRecords: a silence record whose name is not a
// node name, or whose value is not a report, never becomes evidence, and
// an unreadable rewrite of a good record withdraws it.
func TestApplyRefusesCraftedRecords(t *testing.T) {
	r := &Reaper{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	records := map[string]record{}
	good := coord.KV{Key: "/taskd/silence/n2", Value: []byte(`{"silent_ms":{"n3":6000}}`), Version: 3}
	r.apply(records, coord.Event{Type: coord.EventPut, KV: good})
	for _, kv := range []coord.KV{
		{Key: "/taskd/silence/..", Value: good.Value},
		{Key: "/taskd/silence/n 1", Value: good.Value},
		{Key: "/taskd/silence/-n1", Value: good.Value},
		{Key: "/taskd/silence/n2", Value: []byte(`{"silent_ms":`)}, // garbled rewrite of n2
	} {
		r.apply(records, coord.Event{Type: coord.EventPut, KV: kv})
	}
	if len(records) != 0 {
		t.Fatalf("crafted records kept: %v", records)
	}
	members := member("n1", "n2", "n3")
	r.apply(records, coord.Event{Type: coord.EventPut, KV: good})
	r.apply(records, coord.Event{Type: coord.EventPut, KV: coord.KV{Key: "/taskd/silence/n1", Value: []byte(`{"silent_ms":{"n3":1}}`)}})
	if got := doomed(members, []string{"n1", "n2", "n3"}, records, "n1"); len(got) != 1 || got[0].Name != "n3" {
		t.Fatalf("well-formed records: doomed %v, want n3", got)
	}
	r.apply(records, coord.Event{Type: coord.EventDelete, KV: good})
	if got := doomed(members, []string{"n1", "n2", "n3"}, records, "n1"); len(got) != 0 {
		t.Fatalf("after n2's record is deleted: doomed %v, want none", got)
	}
}
