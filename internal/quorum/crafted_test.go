package quorum_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/testenv"
)

// testCraftedMembers: member records written around taskd, at a key that
// names no valid member or naming another member than their key, never
// enter the view (so no key, event ring or address is derived from them);
// names that would leave their directory are refused by SetPriority and
// SetSpecified before anything is written.
func testCraftedMembers(t *testing.T, b backend) {
	r := root()
	kv := b.Open(t)
	n1 := startNode(t, kv, testConfig("n1", r, 10))
	waitLeader(t, []*node{n1}, 20*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for key, body := range map[string]string{
		r + "/members/-bad":  `{"name":"-bad","node_id":"x","address":"10.0.0.66:10600"}`,
		r + "/members/ghost": `{"name":"../../election","node_id":"x","address":"10.0.0.66:10600"}`,
	} {
		if _, err := kv.Create(ctx, key, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	// A genuine member joins afterwards: once n1 sees it, it has seen the
	// crafted records before.
	startNode(t, b.Open(t), testConfig("n2", r, 5))
	var names []string
	if err := testenv.WaitFor(ctx, 20*time.Millisecond, func() bool {
		names = names[:0]
		for _, m := range n1.view().Members {
			names = append(names, m.Name)
		}
		return slices.Contains(names, "n2")
	}); err != nil {
		t.Fatalf("n2 never joined: %v", err)
	}
	if !slices.Equal(names, []string{"n1", "n2"}) {
		t.Errorf("n1 sees members %q, want [n1 n2]", names)
	}
	for _, bad := range []string{"../../election/epoch", "..", "n1/..", "", "n1\x00"} {
		if err := n1.q.SetPriority(ctx, bad, 1, true); !errors.Is(err, keys.ErrInvalid) || !errors.Is(err, quorum.ErrInvalid) {
			t.Errorf("SetPriority(%q) = %v, want ErrInvalid", bad, err)
		}
		if err := n1.q.SetSpecified(ctx, []string{"n1", bad}, true); !errors.Is(err, quorum.ErrInvalid) {
			t.Errorf("SetSpecified(n1, %q) = %v, want ErrInvalid", bad, err)
		}
	}
	prios, err := kv.List(ctx, r+"/config/priority")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(ctx, r+"/election/specified"); len(prios) != 0 || err == nil {
		t.Errorf("refused requests wrote %d priorities, specified members: %v", len(prios), err)
	}
}
