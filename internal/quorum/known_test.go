package quorum_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/testenv"
)

// testKnownMembers plays issue 13 bug 1 on the quorum: a member that stops
// is not forgotten. Its known record outlives its session, so the other
// node's view lists it as down with when it was last seen; the embedded
// etcd's and the specified members' names count too. Forget refuses a live
// member, a specified member and a name nothing knows, changing nothing,
// and removes a decommissioned one.
func testKnownMembers(t *testing.T, b backend) {
	r := root()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	started := time.Now()
	n1 := startNode(t, b.Dial(t, b.Addr), testConfig("n1", r, 100))
	n2 := startNode(t, b.Dial(t, b.Addr), testConfig("n2", r, 50))
	waitLeaderIs(t, []*node{n1, n2}, "n1", 15*time.Second)
	// The member records and the known records arrive through separate
	// watches: wait for both pairs before asking who is down.
	if err := testenv.WaitFor(ctx, 20*time.Millisecond, func() bool {
		v := n1.view()
		return len(v.Known) == 2 && len(v.Members) == 2
	}); err != nil {
		t.Fatalf("n1 never saw both members and both known records: %+v", n1.view())
	}
	if d := n1.view().Down(nil); len(d) != 0 {
		t.Fatalf("down members while both run: %+v", d)
	}
	n2.stop()
	stopped := time.Now()
	if err := testenv.WaitFor(ctx, 20*time.Millisecond, func() bool { return len(n1.view().Members) == 1 }); err != nil {
		t.Fatalf("n2's member record never went away: %+v", n1.view().Members)
	}
	down := n1.view().Down(nil)
	if len(down) != 1 || down[0].Name != "n2" || down[0].Address != "n2:1" || !slices.Equal(down[0].Sources, []string{"known"}) ||
		down[0].LastSeen.Before(started.Add(-time.Second)) || down[0].LastSeen.After(stopped.Add(time.Second)) {
		t.Fatalf("down after n2 stopped at %v: %+v", stopped, down)
	}
	down = n1.view().Down([]string{"n1", "n2", "n3"})
	if len(down) != 2 || !slices.Equal(down[0].Sources, []string{"known", "etcd"}) || down[1].Name != "n3" ||
		!down[1].LastSeen.IsZero() || !slices.Equal(down[1].Sources, []string{"etcd"}) {
		t.Fatalf("down with etcd members n1-n3: %+v", down)
	}

	if _, err := n1.q.Forget(ctx, "n1", nil); !errors.Is(err, quorum.ErrLive) {
		t.Errorf("forget the live n1: %v, want ErrLive", err)
	}
	if _, err := n1.q.Forget(ctx, "../members/n1", nil); !errors.Is(err, quorum.ErrInvalid) {
		t.Errorf("forget ../members/n1: %v, want ErrInvalid", err)
	}
	if _, err := n1.q.Forget(ctx, "ghost", nil); !errors.Is(err, quorum.ErrNotKnown) {
		t.Errorf("forget ghost: %v, want ErrNotKnown", err)
	}
	if err := n1.q.SetSpecified(ctx, []string{"n1", "n2"}, false); err != nil {
		t.Fatal(err)
	}
	if _, err := n1.q.Forget(ctx, "n2", nil); !errors.Is(err, quorum.ErrSpecified) {
		t.Errorf("forget the specified n2: %v, want ErrSpecified", err)
	}
	if err := testenv.WaitFor(ctx, 20*time.Millisecond, func() bool { return len(n1.view().Specified) == 2 }); err != nil {
		t.Fatal(err)
	}
	if k := n1.view().Known; len(k) != 2 {
		t.Fatalf("refused forgets changed the known members: %+v", k)
	}
	if err := n1.q.SetSpecified(ctx, nil, false); err != nil {
		t.Fatal(err)
	}
	f, err := n1.q.Forget(ctx, "n2", nil)
	if err != nil || !f.Known || f.Etcd {
		t.Fatalf("forget n2: %+v, %v", f, err)
	}
	if err := testenv.WaitFor(ctx, 20*time.Millisecond, func() bool { return len(n1.view().Down(nil)) == 0 }); err != nil {
		t.Fatalf("n2 still down after forget: %+v", n1.view().Down(nil))
	}
}
