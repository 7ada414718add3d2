package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/testenv"
)

// TestPeerLinksSeeAStoppedMember: with three members up, each sees both
// peers linked; once n3 stops, n1 and n2 see it unlinked within etcd's
// connection timeout and still see each other linked (the links between
// two followers carry link heartbeats, so a live follower never looks
// silent to the other follower).
func TestPeerLinksSeeAStoppedMember(t *testing.T) {
	_, servers, names := startCluster(t, 3)
	links := func(i int) map[string]bool {
		l, err := servers[i].PeerLinks()
		if err != nil {
			t.Fatalf("%s: %v", names[i], err)
		}
		return l
	}
	want := func(i int, up map[string]bool) func() bool {
		return func() bool { return maps.Equal(links(i), up) }
	}
	for i := range servers {
		up := map[string]bool{}
		for j, n := range names {
			if j != i {
				up[n] = true
			}
		}
		if err := testenv.WaitFor(ctxFor(t, 30*time.Second), 50*time.Millisecond, want(i, up)); err != nil {
			t.Fatalf("%s's links %v, want %v", names[i], links(i), up)
		}
	}
	// Stay linked for longer than a link heartbeat period and etcd's
	// connection read timeout: an idle follower-follower link must not
	// read as down.
	ctx := ctxFor(t, 6*time.Second)
	for ctx.Err() == nil {
		for i := range servers {
			for n, up := range links(i) {
				if !up {
					t.Fatalf("%s sees live %s unlinked", names[i], n)
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	servers[2].Close()
	for i, up := range []map[string]bool{{"n2": true, "n3": false}, {"n1": true, "n3": false}} {
		if err := testenv.WaitFor(ctxFor(t, 10*time.Second), 50*time.Millisecond, want(i, up)); err != nil {
			t.Fatalf("after n3 stopped, %s's links %v, want %v", names[i], links(i), up)
		}
	}
}

// TestRevokeSession: a session revoked by ID, from another client, loses
// its keys; a malformed or foreign ID is refused and changes nothing.
func TestRevokeSession(t *testing.T) {
	srv := testenv.StartEtcd(t)
	a, b := srv.Open(t), srv.Open(t)
	ctx := ctxFor(t, 30*time.Second)
	sess, err := a.NewSession(ctx, 6*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close(context.Background()) })
	if _, err := a.Create(ctx, "/taskd/members/n9", []byte("x"), coord.WithSession(sess)); err != nil {
		t.Fatal(err)
	}
	rv := b.(coord.SessionRevoker)
	before := srv.Snapshot(t)
	const unknown = "lease-1" // well-formed, but no such lease
	for _, id := range []string{"", "lease-", "lease-zz", "lease--1", "42", "session-1f", "lease-8000000000000000", unknown} {
		err := rv.RevokeSession(ctx, id)
		if id == unknown {
			// a well-formed ID of no lease: the session is gone either way
			if err != nil {
				t.Errorf("revoke of an unknown lease %q: %v", id, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("revoke %q accepted", id)
		}
	}
	if after := srv.Snapshot(t); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("refused revokes changed the store:\n%v\n%v", before, after)
	}
	if err := rv.RevokeSession(ctx, sess.ID()); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "/taskd/members/n9"); !errors.Is(err, coord.ErrNotFound) {
		t.Fatalf("the revoked session's key: %v, want ErrNotFound", err)
	}
	select {
	case <-sess.Done():
	case <-ctx.Done():
		t.Fatal("the revoked session did not end")
	}
}
