package dispatch_test

import (
	"context"
	"path"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/testenv"
)

// gatedDone holds every read of a finished-task shard until gate closes:
// a collection of finished tasks that does not end.
type gatedDone struct {
	coord.Store
	doneDir string
	gate    chan struct{}
	reads   atomic.Int32
}

func (g *gatedDone) List(ctx context.Context, dir string) ([]coord.KV, error) {
	if strings.HasPrefix(dir, g.doneDir+"/") {
		g.reads.Add(1)
		select {
		case <-g.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return g.Store.List(ctx, dir)
}

// TestDispatchWhileCollecting: a new leader dispatches while its
// collection of finished tasks is still reading the store. When the
// collection ran inside the dispatch loop, a leader that had just taken
// over left the tasks of a dead runner waiting for the whole collection
// (seconds on ZooKeeper: 256 shard reads), the largest part of the chaos
// campaign's resume tail (issue 19).
func TestDispatchWhileCollecting(t *testing.T) {
	for _, b := range testenv.Backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			kv := b.Open(t)
			probe := newStore(t, kv, builtin())
			shard, err := probe.Layout().DoneShardDir("00")
			if err != nil {
				t.Fatal(err)
			}
			gated := &gatedDone{Store: kv, doneDir: path.Dir(shard), gate: make(chan struct{})}
			st := newStore(t, gated, builtin())
			startMember(t, gated, st, "n1", 2)
			t.Cleanup(func() { close(gated.gate) }) // runs before the member stops
			if err := testenv.WaitFor(ctx, 10*time.Millisecond, func() bool { return gated.reads.Load() > 0 }); err != nil {
				t.Fatal("the leader never began collecting finished tasks")
			}
			r, err := st.Create(ctx, task.CreateRequest{Type: "noop"})
			if err != nil {
				t.Fatal(err)
			}
			got := waitFinal(t, st, []string{r.ID}, 10*time.Second)[r.ID]
			if got.State != task.Succeeded {
				t.Fatalf("task %s ended %s; want succeeded", r.ID, got.State)
			}
			if n := gated.reads.Load(); n != 1 {
				t.Fatalf("%d shard reads began; want exactly 1 (the collection is still held at its first shard)", n)
			}
		})
	}
}
