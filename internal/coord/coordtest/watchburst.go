package coordtest

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"golang.org/x/sync/errgroup"
)

// testWatchBurst: a watch that takes the changes of a burst together (the
// ZooKeeper backend reads every fired child at once, and a child its own
// watch reports deleted not at all) still ends on exactly the directory's
// contents: every key with its last value, no key that was deleted, a key
// deleted and created again under its name with its new value. Within one
// life of a key (one creation order) its versions never go back.
func testWatchBurst(t *testing.T, s coord.Store) {
	ctx, p := ctxT(t), prefix(t)
	dir := p + "/burst"
	const n, writers = 96, 8
	key := func(i int) string { return fmt.Sprintf("%s/k%03d", dir, i) }
	for i := range n / 2 {
		if _, err := s.Create(ctx, key(i), []byte("v0")); err != nil {
			t.Fatal(err)
		}
	}
	w := s.Watch(ctx, dir)
	defer w.Close()
	ch := w.Events()
	view := map[string]coord.KV{}
	apply := func(ev coord.Event) {
		t.Helper()
		switch ev.Type {
		case coord.EventPut:
			if old, ok := view[ev.KV.Key]; ok && old.CreateOrder == ev.KV.CreateOrder && ev.KV.Version <= old.Version {
				t.Fatalf("%s went back from version %d to %d", ev.KV.Key, old.Version, ev.KV.Version)
			}
			view[ev.KV.Key] = ev.KV
		case coord.EventDelete:
			if _, ok := view[ev.KV.Key]; !ok {
				t.Fatalf("delete of %s, which the watch never showed", ev.KV.Key)
			}
			delete(view, ev.KV.Key)
		}
	}
	for ev := next(t, ch); ev.Type != coord.EventSynced; ev = next(t, ch) {
		apply(ev)
	}

	// Each writer owns the keys i with i%writers == its number: it creates
	// those missing, updates each three times, deletes every third and
	// creates every sixth again.
	g, gctx := errgroup.WithContext(ctx)
	for wr := range writers {
		g.Go(func() error {
			for i := wr; i < n; i += writers {
				k := key(i)
				var ver int64 = 1
				if i >= n/2 {
					kv, err := s.Create(gctx, k, []byte("v0"))
					if err != nil {
						return err
					}
					ver = kv.Version
				} else {
					kv, err := s.Get(gctx, k)
					if err != nil {
						return err
					}
					ver = kv.Version
				}
				for u := 1; u <= 3; u++ {
					kv, err := s.Update(gctx, k, fmt.Appendf(nil, "v%d", u), ver)
					if err != nil {
						return fmt.Errorf("update %s: %w", k, err)
					}
					ver = kv.Version
				}
				if i%3 == 0 {
					if err := s.Delete(gctx, k, 0); err != nil {
						return err
					}
				}
				if i%6 == 0 {
					if _, err := s.Create(gctx, k, []byte("again")); err != nil {
						return err
					}
				}
			}
			return nil
		})
	}
	writes := make(chan error, 1)
	go func() { writes <- g.Wait() }()
	// Apply events while the writers run, so that the watch sees bursts.
	var werr error
	running := true
	for running {
		select {
		case werr = <-writes:
			running = false
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("watch channel closed early")
			}
			apply(ev)
		}
	}
	if werr != nil {
		t.Fatal(werr)
	}
	final, err := s.List(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for _, kv := range final {
		want[kv.Key] = string(kv.Value)
	}
	if len(want) != n-n/3+n/6 {
		t.Fatalf("the store holds %d keys after the burst, want %d", len(want), n-n/3+n/6)
	}
	got := func() map[string]string {
		out := map[string]string{}
		for k, kv := range view {
			out[k] = string(kv.Value)
		}
		return out
	}
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	for !maps.Equal(got(), want) {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("watch channel closed early")
			}
			apply(ev)
		case <-deadline.C:
			g := got()
			var diff []string
			for k, v := range want {
				if g[k] != v {
					diff = append(diff, fmt.Sprintf("%s: watch %q, store %q", k, g[k], v))
				}
			}
			for k, v := range g {
				if _, ok := want[k]; !ok {
					diff = append(diff, fmt.Sprintf("%s: watch %q, store none", k, v))
				}
			}
			slices.Sort(diff)
			t.Fatalf("the watch's view differs from the store 20s after the burst: %v", diff)
		case <-ctx.Done():
			t.Fatal(context.Cause(ctx))
		}
	}
}
