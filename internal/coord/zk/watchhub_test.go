package zk_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/coord/zk"
	"github.com/taskd/taskd/internal/testenv"
)

// view follows a watcher's events into a map of key → version.
type view struct {
	w      *coord.Watcher
	vers   map[string]int64
	synced bool
}

func newView(ctx context.Context, s coord.Store, dir string) *view {
	return &view{w: s.Watch(ctx, dir), vers: map[string]int64{}}
}

func (v *view) apply(ev coord.Event) {
	switch ev.Type {
	case coord.EventPut:
		v.vers[ev.KV.Key] = ev.KV.Version
	case coord.EventDelete:
		delete(v.vers, ev.KV.Key)
	case coord.EventSynced:
		v.synced = true
	}
}

// until reads events until ok holds after an event, or fails the test at
// the deadline.
func (v *view) until(t *testing.T, what string, ok func(*view) bool) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for !ok(v) {
		select {
		case ev, open := <-v.w.Events():
			if !open {
				t.Fatalf("%s: the watch ended", what)
			}
			if ev.Type == coord.EventPut && ev.KV.Version < v.vers[ev.KV.Key] {
				t.Fatalf("%s: %s went back from version %d to %d", what, ev.KV.Key, v.vers[ev.KV.Key], ev.KV.Version)
			}
			v.apply(ev)
		case <-timeout:
			t.Fatalf("%s: not within 30s (synced %v, %d keys)", what, v.synced, len(v.vers))
		}
	}
}

// TestSharedWatch: the watches of one directory in one process share one
// ZooKeeper watch. Each watcher's first contents still hold every write
// made before it was opened; the reads a change costs do not grow with the
// watchers; a watcher that does not read holds up no other; and the shared
// watch ends with its last watcher.
func TestSharedWatch(t *testing.T) {
	ens := testenv.StartEnsemble(t, 1)
	cs := open(t, ens, "/taskd")
	s := cs.(*zk.Store)
	// Writes go through another session, as a runner on another node
	// writes: its watch events reach s after the write has returned.
	writer := open(t, ens, "/taskd")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := fmt.Sprintf("/shared-%d", time.Now().UnixNano())
	const n = 50
	key := func(i int) string { return fmt.Sprintf("%s/k%02d", dir, i) }
	vers := map[string]int64{}
	for i := range n {
		kv, err := writer.Create(ctx, key(i), []byte("v"))
		if err != nil {
			t.Fatal(err)
		}
		vers[kv.Key] = kv.Version
	}
	update := func(i int) {
		t.Helper()
		kv, err := writer.Update(ctx, key(i), []byte(fmt.Sprintf("v%d", vers[key(i)]+1)), 0)
		if err != nil {
			t.Fatal(err)
		}
		vers[kv.Key] = kv.Version
	}
	current := func(v *view) bool {
		if len(v.vers) != len(vers) {
			return false
		}
		for k, ver := range vers {
			if v.vers[k] != ver {
				return false
			}
		}
		return true
	}

	first := newView(ctx, s, dir)
	defer first.w.Close()
	first.until(t, "first watcher synced", func(v *view) bool { return v.synced })

	// A watcher opened right after a write has it in its first contents,
	// though the shared watch may not have seen it yet.
	// Each round changes every key and adds one in one transaction, so
	// that the shared watch has many reads to make when the watcher comes.
	for i := range 20 {
		ops := []coord.Op{coord.CreateOp(fmt.Sprintf("%s/new%02d", dir, i), nil, nil)}
		for j := range n {
			ops = append(ops, coord.PutOp(key(j), []byte(fmt.Sprintf("r%d", i))))
		}
		got, err := writer.Txn(ctx, nil, ops)
		if err != nil {
			t.Fatal(err)
		}
		vers[fmt.Sprintf("%s/new%02d", dir, i)] = got[0]
		for j := range n {
			vers[key(j)] = got[j+1]
		}
		late := newView(ctx, s, dir)
		late.until(t, fmt.Sprintf("late watcher %d synced", i), func(v *view) bool { return v.synced })
		if !current(late) {
			t.Fatalf("late watcher %d: its first contents lack writes made before it was opened: %s", i, diff(late.vers, vers))
		}
		late.w.Close()
	}
	if got := zk.Hubs(s); got != 1 {
		t.Fatalf("%d shared watches for one directory, want 1", got)
	}

	// Four watchers, one change per key: about one read per change.
	views := []*view{first}
	for range 3 {
		v := newView(ctx, s, dir)
		defer v.w.Close()
		v.until(t, "watcher synced", func(v *view) bool { return v.synced && current(v) })
		views = append(views, v)
	}
	before := zk.WatchReads(s)
	for i := range n {
		update(i)
	}
	for _, v := range views {
		v.until(t, "watchers see every change", current)
	}
	if reads := zk.WatchReads(s) - before; reads >= 2*n {
		t.Errorf("%d changes seen by %d watchers cost %d reads; one watch of its own each costs %d", n, len(views), reads, len(views)*n)
	} else {
		t.Logf("%d changes seen by %d watchers cost %d reads", n, len(views), reads)
	}

	// A watcher nobody reads (its channel holds coord.WatchBuffer
	// events) does not hold up the others.
	idle := s.Watch(ctx, dir)
	defer idle.Close()
	for range 3 * coord.WatchBuffer / n {
		for i := range n {
			update(i)
		}
	}
	for _, v := range views {
		v.until(t, "watchers see every change beside an idle one", current)
	}

	idle.Close()
	for _, v := range views {
		v.w.Close()
	}
	if got := zk.Hubs(s); got != 0 {
		t.Fatalf("%d shared watches left after every watcher closed", got)
	}
}

// diff describes how got differs from want.
func diff(got, want map[string]int64) string {
	var out []string
	for k, v := range want {
		if got[k] != v {
			out = append(out, fmt.Sprintf("%s at version %d, want %d", k, got[k], v))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			out = append(out, k+" should be absent")
		}
	}
	slices.Sort(out)
	return fmt.Sprintf("%d keys, want %d: %s", len(got), len(want), strings.Join(out, "; "))
}

// TestSharedWatchChurn: children created and deleted at once, and changed,
// by four writers while watchers open one after another (each open lists
// the directory afresh beside the shared watch): once the writes stop,
// every view equals a listing of the store. A child that only such a
// listing had seen, deleted before the shared watch handled its creation,
// could stay in every view for good.
func TestSharedWatchChurn(t *testing.T) {
	ens := testenv.StartEnsemble(t, 1)
	s := open(t, ens, "/taskd")
	writer := open(t, ens, "/taskd")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := fmt.Sprintf("/churn-%d", time.Now().UnixNano())
	const stay = 200
	for i := range stay {
		if _, err := writer.Create(ctx, fmt.Sprintf("%s/stay%03d", dir, i), []byte("0")); err != nil {
			t.Fatal(err)
		}
	}
	first := newView(ctx, s, dir)
	defer first.w.Close()
	first.until(t, "first watcher synced", func(v *view) bool { return v.synced })

	// The writers stop once the watchers below are all open; each open's
	// listing reads the 200 lasting children, long enough for brief ones
	// to come and go meanwhile.
	stop := make(chan struct{})
	const writers = 4
	done := make(chan error, writers)
	for w := range writers {
		go func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					done <- nil
					return
				default:
				}
				key := fmt.Sprintf("%s/brief%d-%05d", dir, w, i)
				if _, err := writer.Create(ctx, key, nil); err != nil {
					done <- err
					return
				}
				if _, err := writer.Update(ctx, fmt.Sprintf("%s/stay%03d", dir, (i*writers+w)%stay), []byte(fmt.Sprint(i)), 0); err != nil {
					done <- err
					return
				}
				if err := writer.Delete(ctx, key, 0); err != nil {
					done <- err
					return
				}
			}
		}()
	}
	views := []*view{first}
	for range 60 {
		v := newView(ctx, s, dir)
		defer v.w.Close()
		v.until(t, "watcher synced during churn", func(v *view) bool { return v.synced })
		views = append(views, v)
	}
	close(stop)
	for range writers {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	// A last write marks the end: every view must have it, then settle
	// on the store's contents.
	end, err := writer.Create(ctx, dir+"/end", nil)
	if err != nil {
		t.Fatal(err)
	}
	kvs, err := writer.List(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{}
	for _, kv := range kvs {
		want[kv.Key] = kv.Version
	}
	for i, v := range views {
		v.until(t, fmt.Sprintf("watcher %d sees the end mark", i), func(v *view) bool { _, ok := v.vers[end.Key]; return ok })
		// Events of the last changes may still be on their way.
		deadline := time.After(10 * time.Second)
	settle:
		for !equalVersions(v.vers, want) {
			select {
			case ev := <-v.w.Events():
				v.apply(ev)
			case <-deadline:
				break settle
			}
		}
		if !equalVersions(v.vers, want) {
			t.Fatalf("watcher %d does not match the store: %s", i, diff(v.vers, want))
		}
	}
}

func equalVersions(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range b {
		if a[k] != v {
			return false
		}
	}
	return true
}
