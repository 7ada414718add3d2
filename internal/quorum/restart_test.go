package quorum_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/quorum"
)

// TestRestartEndsPreviousSession: a node that restarts (same name, same
// node ID: its data directory) while its dead predecessor's session still
// lives ends that session as it joins, where the store can end another
// client's session (etcd): the predecessor's other keys (its runner and
// attempt records) vanish at once instead of when the lease expires. On
// ZooKeeper the member record alone is replaced, as before.
func TestRestartEndsPreviousSession(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			r := root()
			st := b.Open(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			// The predecessor: a session that nobody will close (its
			// process died), with its member record and one more key.
			old, err := st.NewSession(ctx, 20*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { old.Close(context.Background()) })
			cfg := testConfig("n1", r, 10)
			rec, _ := json.Marshal(quorum.Member{Name: "n1", NodeID: cfg.NodeID, Address: cfg.Address, SessionID: old.ID(), Session: "running"})
			if _, err := st.Create(ctx, r+"/members/n1", rec, coord.WithSession(old)); err != nil {
				t.Fatal(err)
			}
			if _, err := st.Create(ctx, r+"/runner-of-old", []byte("x"), coord.WithSession(old)); err != nil {
				t.Fatal(err)
			}
			n := startNode(t, b.Open(t), cfg)
			waitLeaderIs(t, []*node{n}, "n1", 15*time.Second)
			if v := n.view(); v.SessionID == old.ID() {
				t.Fatalf("the restarted node uses the old session %s", old.ID())
			}
			_, err = st.Get(ctx, r+"/runner-of-old")
			_, revoker := st.(coord.SessionRevoker)
			switch {
			case revoker && !errors.Is(err, coord.ErrNotFound):
				t.Fatalf("the predecessor's key outlived the restart: %v (want it gone with its session)", err)
			case !revoker && err != nil:
				t.Fatalf("%s cannot end another client's session, so the predecessor's key should stay until expiry: %v", b.Name, err)
			}
		})
	}
}
