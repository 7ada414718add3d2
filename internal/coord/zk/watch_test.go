package zk_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/testenv"
)

// TestWatchFirstContentsAsFastAsList: a watch of a directory with many
// children delivers its first contents about as fast as a List of it,
// which reads the children in parallel. A watch that read them one round
// trip after another took three to four times as long for 10 000
// children, and a new leader waited that long to fire its first tick.
func TestWatchFirstContentsAsFastAsList(t *testing.T) {
	const n = 10000
	ens := testenv.StartEnsemble(t, 1)
	s := open(t, ens, "/taskd")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := fmt.Sprintf("/watch-first-%d", time.Now().UnixNano())
	value := make([]byte, 400) // about a schedule record
	for i := 0; i < n; i += 100 {
		var ops []coord.Op
		for j := i; j < i+100; j++ {
			ops = append(ops, coord.CreateOp(fmt.Sprintf("%s/k%05d", dir, j), value, nil))
		}
		if _, err := s.Txn(ctx, nil, ops); err != nil {
			t.Fatal(err)
		}
	}
	list := func() time.Duration {
		// A fresh client each time, as a new leader has.
		c := open(t, ens, "/taskd")
		start := time.Now()
		kvs, err := c.List(ctx, dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(kvs) != n {
			t.Fatalf("list: %d children, want %d", len(kvs), n)
		}
		return time.Since(start)
	}
	watch := func() time.Duration {
		c := open(t, ens, "/taskd")
		wctx, wcancel := context.WithCancel(ctx)
		defer wcancel()
		start := time.Now()
		w := c.Watch(wctx, dir)
		defer w.Close()
		got := map[string]bool{}
		for ev := range w.Events() {
			if ev.Type == coord.EventSynced {
				break
			}
			got[ev.KV.Key] = true
		}
		if len(got) != n {
			t.Fatalf("watch: %d children before synced, want %d", len(got), n)
		}
		return time.Since(start)
	}
	l1 := list()
	w := watch()
	l2 := list()
	bound := l1 + l2 // twice their mean
	t.Logf("%d children: list %v and %v, watch's first contents %v (bound %v)", n, l1, l2, w, bound)
	if w > bound {
		t.Errorf("watch's first contents of %d children took %v, over twice a listing (%v, %v): are its reads one after another?", n, w, l1, l2)
	}
}
