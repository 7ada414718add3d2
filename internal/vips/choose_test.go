package vips

import (
	"maps"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/quorum"
)

func TestChoose(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	grace := 5 * time.Second
	m := func(name, health string, prio int) quorum.Member {
		return quorum.Member{Name: name, SessionID: "s-" + name, Health: health, CurrentPriority: prio}
	}
	ok3 := []quorum.Member{m("n1", "ok", 3), m("n2", "ok", 2), m("n3", "ok", 1)}
	at := func(n string) *Assignment { return &Assignment{Node: n, Session: "s-" + n, Reason: "r"} }
	cases := []struct {
		name      string
		c         ServiceVIP
		cur       *Assignment
		members   []quorum.Member
		unhealthy map[string]time.Time
		recovered map[string]time.Time
		want      string
		drop      bool
		recheck   bool
	}{
		{"leader by default", ServiceVIP{}, nil, ok3, nil, nil, "n1", false, false},
		{"preferred", ServiceVIP{Preferred: "n3"}, at("n1"), ok3, nil, nil, "n3", false, false},
		{"preferred gone: dropped, leader", ServiceVIP{Preferred: "n9"}, at("n9"), ok3, nil, nil, "n1", true, false},
		{"preferred unhealthy within grace stays", ServiceVIP{Preferred: "n3"}, at("n3"),
			[]quorum.Member{m("n1", "ok", 3), m("n2", "ok", 2), m("n3", "unhealthy", 0)},
			map[string]time.Time{"n3": now.Add(-time.Second)}, nil, "n3", false, true},
		{"preferred unhealthy past grace: dropped", ServiceVIP{Preferred: "n3"}, at("n3"),
			[]quorum.Member{m("n1", "ok", 3), m("n2", "ok", 2), m("n3", "unhealthy", 0)},
			map[string]time.Time{"n3": now.Add(-6 * time.Second)}, nil, "n1", true, false},
		{"unhealthy leader, healthy holder stays", ServiceVIP{}, at("n2"),
			[]quorum.Member{m("n1", "unhealthy", 0), m("n2", "ok", 2), m("n3", "ok", 1)},
			map[string]time.Time{"n1": now}, nil, "n2", false, false},
		{"unhealthy leader-holder within grace stays", ServiceVIP{}, at("n1"),
			[]quorum.Member{m("n1", "unhealthy", 0), m("n2", "ok", 2), m("n3", "ok", 1)},
			map[string]time.Time{"n1": now.Add(-time.Second)}, nil, "n1", false, true},
		{"unhealthy leader-holder past grace: best healthy", ServiceVIP{}, at("n1"),
			[]quorum.Member{m("n1", "unhealthy", 0), m("n2", "ok", 2), m("n3", "ok", 1)},
			map[string]time.Time{"n1": now.Add(-6 * time.Second)}, nil, "n2", false, false},
		{"preferred unhealthy like everyone: stays, kept", ServiceVIP{Preferred: "n3"}, at("n3"),
			[]quorum.Member{m("n1", "unhealthy", 0), m("n2", "unhealthy", 0), m("n3", "unhealthy", 0)},
			map[string]time.Time{"n1": now.Add(-time.Hour), "n2": now.Add(-time.Hour), "n3": now.Add(-time.Hour)}, nil, "n3", false, false},
		{"nobody healthy: stays", ServiceVIP{}, at("n2"),
			[]quorum.Member{m("n1", "unhealthy", 0), m("n2", "unhealthy", 0), m("n3", "unhealthy", 0)},
			map[string]time.Time{"n1": now.Add(-time.Hour), "n2": now.Add(-time.Hour), "n3": now.Add(-time.Hour)}, nil, "n2", false, false},
		{"nobody healthy, holder dead: leader", ServiceVIP{}, at("n9"),
			[]quorum.Member{m("n1", "unhealthy", 0), m("n2", "unhealthy", 0)},
			map[string]time.Time{"n1": now.Add(-time.Hour), "n2": now.Add(-time.Hour)}, nil, "n1", false, false},
		{"recovering one after another: the preferred holder stays until another is stable", ServiceVIP{Preferred: "n3"}, at("n3"),
			[]quorum.Member{m("n1", "ok", 3), m("n2", "unhealthy", 0), m("n3", "unhealthy", 0)},
			map[string]time.Time{"n2": now.Add(-time.Hour), "n3": now.Add(-time.Hour)},
			map[string]time.Time{"n1": now.Add(-time.Second)}, "n3", false, true},
		{"recovered and stable: the preference is dropped, leader", ServiceVIP{Preferred: "n3"}, at("n3"),
			[]quorum.Member{m("n1", "ok", 3), m("n2", "unhealthy", 0), m("n3", "unhealthy", 0)},
			map[string]time.Time{"n2": now.Add(-time.Hour), "n3": now.Add(-time.Hour)},
			map[string]time.Time{"n1": now.Add(-6 * time.Second)}, "n1", true, false},
		{"dead holder: a just-recovered leader takes it at once", ServiceVIP{}, at("n9"),
			[]quorum.Member{m("n1", "ok", 3), m("n2", "unhealthy", 0)},
			map[string]time.Time{"n2": now.Add(-time.Hour)},
			map[string]time.Time{"n1": now.Add(-time.Second)}, "n1", false, false},
		{"holder restarted (new session): leader", ServiceVIP{}, &Assignment{Node: "n2", Session: "old"}, ok3, nil, nil, "n1", false, false},
	}
	for _, tc := range cases {
		h := newHealthHistory()
		maps.Copy(h.unhealthy, tc.unhealthy)
		maps.Copy(h.recovered, tc.recovered)
		d := choose(tc.c, tc.cur, "n1", tc.members, h, now, grace)
		if d.node != tc.want || d.dropPref != tc.drop || d.recheck.IsZero() == tc.recheck {
			t.Errorf("%s: got node %q drop %v recheck %v; want %q drop %v recheck %v", tc.name, d.node, d.dropPref, d.recheck, tc.want, tc.drop, tc.recheck)
		}
		if d.node != "" && d.session != "s-"+d.node {
			t.Errorf("%s: session %q for %s", tc.name, d.session, d.node)
		}
	}
}
