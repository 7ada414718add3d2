package api_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/keys"
)

// TestStoreRootIsTheNodes: a node whose cluster lives under a store root
// other than the default keeps its tokens and reads its event rings there.
// The API once read the default root (quorum.DefaultConfig().Root) instead
// of the node's: tokens made through it landed under /taskd, and the
// timeline read and followed rings no node writes.
func TestStoreRootIsTheNodes(t *testing.T) {
	const siteRoot = "/taskd/site-b" // inside the taskd role's part of etcd
	s := startServerAt(t, siteRoot, nil)
	admin := s.client(t, s.tokens[auth.Admin], false)
	ctx := ctx10(t)

	// Tokens: made, listed and revoked under the node's root only.
	resp, err := admin.Tokens.CreateToken(ctx, connect.NewRequest(&taskdv1.CreateTokenRequest{Role: "viewer"}))
	if err != nil {
		t.Fatal(err)
	}
	id := resp.Msg.Info.Id
	under := func(dir string) map[string]bool {
		t.Helper()
		recs, err := auth.List(ctx, s.store, dir)
		if err != nil {
			t.Fatal(err)
		}
		ids := map[string]bool{}
		for _, r := range recs {
			ids[r.ID] = true
		}
		return ids
	}
	if !under(siteRoot)[id] {
		t.Fatalf("the new token %s is not under %s", id, siteRoot)
	}
	if n := len(under("/taskd")); n != 0 {
		t.Fatalf("%d token records under the default root /taskd; want none", n)
	}
	list, err := admin.Tokens.ListTokens(ctx, connect.NewRequest(&taskdv1.ListTokensRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Msg.Tokens) != len(under(siteRoot)) {
		t.Fatalf("ListTokens shows %d tokens; %s holds %d", len(list.Msg.Tokens), siteRoot, len(under(siteRoot)))
	}
	if _, err := admin.Tokens.RevokeToken(ctx, connect.NewRequest(&taskdv1.RevokeTokenRequest{Id: id})); err != nil {
		t.Fatal(err)
	}
	if under(siteRoot)[id] {
		t.Fatalf("the revoked token %s is still under %s", id, siteRoot)
	}

	// Event rings: an event that only the store's ring under the node's
	// root holds (a seq the local journal never reaches) is listed and
	// followed.
	rt, err := keys.NewRoot(siteRoot)
	if err != nil {
		t.Fatal(err)
	}
	slot := func(seq uint64) string {
		k, err := rt.Events().SlotKey("n1", int(seq%events.RingSize))
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	put := func(seq uint64, msg string) {
		t.Helper()
		b, _ := json.Marshal(events.Event{Time: time.Now(), Node: "n1", Seq: seq, Type: "audit", Message: msg})
		if _, err := s.store.Create(ctx, slot(seq), b); err != nil {
			t.Fatal(err)
		}
	}
	const ringOnly = 1_000_000
	put(ringOnly, "only in the ring")
	got, err := admin.Events.ListEvents(ctx, connect.NewRequest(&taskdv1.ListEventsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range got.Msg.Events {
		found = found || (e.Seq == ringOnly && e.Message == "only in the ring")
	}
	if !found || got.Msg.Partial != "" {
		t.Fatalf("ListEvents did not read the ring under %s (partial %q, %d events)", siteRoot, got.Msg.Partial, len(got.Msg.Events))
	}

	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := admin.Events.WatchEvents(wctx, connect.NewRequest(&taskdv1.ListEventsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	put(ringOnly+1, "followed")
	for st.Receive() {
		if st.Msg().Seq == ringOnly+1 && st.Msg().Message == "followed" {
			return
		}
	}
	t.Fatalf("WatchEvents never delivered the event put under %s: %v", siteRoot, st.Err())
}
