package dispatch_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/testenv"
)

// TestTypeLimit: with a cluster-wide limit on the sleep type, at most
// that many sleep tasks run although the runners have room for all; a
// raised limit lets more start at once (the limit's watch event), and an
// unset one lets all start. Bad limits are refused and change nothing;
// a limit written around taskd that is not one is ignored. On a real etcd
// and a real ZooKeeper.
func TestTypeLimit(t *testing.T) {
	eachStore(t, func(t *testing.T, kv coord.Store, st *task.Store) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, c := range []struct {
			typ string
			n   int
		}{{"sleep", 0}, {"sleep", -1}, {"sleep", task.MaxTypeLimit + 1}, {"a/b", 1}, {"", 1}, {"../x", 2}} {
			if err := st.SetTypeLimit(ctx, c.typ, c.n); !errors.Is(err, task.ErrInvalid) {
				t.Errorf("SetTypeLimit(%q, %d) = %v, want invalid", c.typ, c.n, err)
			}
		}
		if err := st.UnsetTypeLimit(ctx, "sleep"); !errors.Is(err, task.ErrNotFound) {
			t.Errorf("unset of a limit never set: %v, want not found", err)
		}
		if l, err := st.ReadTypeLimits(ctx); err != nil || len(l) != 0 {
			t.Fatalf("limits after refused sets: %v %v", l, err)
		}
		// Written around taskd: not a limit, so not applied.
		if _, err := kv.Create(ctx, st.Layout().TypeLimitsDir()+"/noop", []byte("nonsense")); err != nil {
			t.Fatal(err)
		}
		if err := st.SetTypeLimit(ctx, "sleep", 2); err != nil {
			t.Fatal(err)
		}
		startMember(t, kv, st, "n1", 8)
		startMember(t, kv, st, "n2", 8)
		long := json.RawMessage(`{"duration":"1h"}`)
		var ids []string
		for range 5 {
			r, err := st.Create(ctx, task.CreateRequest{Type: "sleep", Spec: long})
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, r.ID)
		}
		// states says where every sleep task is, for a failure message.
		states := func() string {
			var b strings.Builder
			for _, id := range ids {
				r, err := st.Get(ctx, id)
				if err != nil {
					fmt.Fprintf(&b, "\n  %s: %v", id, err)
					continue
				}
				fmt.Fprintf(&b, "\n  %s: %s attempt %d on %s, history %+v", id, r.State, r.Attempt, r.Runner, r.History)
			}
			return b.String()
		}
		running := func() (out []*task.Record) {
			t.Helper()
			for _, id := range ids {
				r, err := st.Get(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				if r.State == task.Running {
					out = append(out, r)
				}
			}
			return out
		}
		// A noop task created last: once it has run, a pass has seen every
		// sleep task (the garbage limit on noop did not hold it).
		passed := func() {
			t.Helper()
			r, err := st.Create(ctx, task.CreateRequest{Type: "noop"})
			if err != nil {
				t.Fatal(err)
			}
			if err := testenv.WaitFor(ctx, 10*time.Millisecond, func() bool {
				got, err := st.Get(ctx, r.ID)
				return err == nil && got.State == task.Succeeded
			}); err != nil {
				t.Fatalf("the noop task did not run: %v", err)
			}
		}
		passed()
		now := running()
		if len(now) != 2 {
			t.Fatalf("%d sleep tasks running, want the type's limit 2 (16 slots free)", len(now))
		}
		use := task.TypeUse{}
		for _, r := range now {
			use.Add(r)
		}
		for _, id := range ids {
			r, _ := st.Get(ctx, id)
			if r.State != task.Waiting {
				continue
			}
			limits, err := st.ReadTypeLimits(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if why := r.TypeLimitReason(limits, use); !strings.Contains(why, "limit of type sleep: 2 of 2") || !strings.Contains(why, now[0].ID) {
				t.Fatalf("reason %q; want the type's limit and its holders", why)
			}
		}
		if err := st.SetTypeLimit(ctx, "sleep", 4); err != nil {
			t.Fatal(err)
		}
		if err := testenv.WaitFor(ctx, 10*time.Millisecond, func() bool { return len(running()) == 4 }); err != nil {
			t.Fatalf("%d running after the limit was raised to 4:%s", len(running()), states())
		}
		passed()
		if n := len(running()); n != 4 {
			t.Fatalf("%d running with limit 4:%s", n, states())
		}
		if err := st.UnsetTypeLimit(ctx, "sleep"); err != nil {
			t.Fatal(err)
		}
		if err := testenv.WaitFor(ctx, 10*time.Millisecond, func() bool { return len(running()) == 5 }); err != nil {
			t.Fatalf("%d running after the limit was unset", len(running()))
		}
	})
}
