// Package coordtest is the contract suite every coord.Store backend passes.
// Each backend's test runs it against a real server.
package coordtest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
)

// Factory returns a fresh store; keys are isolated by the prefix the suite
// chooses, so stores may share a server.
type Factory func(t *testing.T) coord.Store

var prefixSeq atomic.Int64

// prefix lies under /taskd/, the part of the key space a taskd node's
// store credentials may use (etcd role taskd).
func prefix(t *testing.T) string {
	return fmt.Sprintf("/taskd/contract/%d-%d", time.Now().UnixNano(), prefixSeq.Add(1))
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Run runs the contract suite.
func Run(t *testing.T, newStore Factory) {
	t.Run("CreateGet", func(t *testing.T) { testCreateGet(t, newStore(t)) })
	t.Run("UpdateDelete", func(t *testing.T) { testUpdateDelete(t, newStore(t)) })
	t.Run("List", func(t *testing.T) { testList(t, newStore(t)) })
	t.Run("ListBelow", func(t *testing.T) { testListBelow(t, newStore(t)) })
	t.Run("Txn", func(t *testing.T) { testTxn(t, newStore(t)) })
	t.Run("SessionEphemeral", func(t *testing.T) { testSessionEphemeral(t, newStore(t)) })
	t.Run("Watch", func(t *testing.T) { testWatch(t, newStore(t)) })
	t.Run("WatchClose", func(t *testing.T) { testWatchClose(t, newStore(t)) })
	t.Run("WatchBurst", func(t *testing.T) { testWatchBurst(t, newStore(t)) })
	t.Run("CreateOrder", func(t *testing.T) { testCreateOrder(t, newStore(t)) })
	t.Run("HeartbeatLateness", func(t *testing.T) { testHeartbeatLateness(t, newStore(t)) })
}

func mustErr(t *testing.T, err, want error, what string) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got error %v, want %v", what, err, want)
	}
}

func testCreateGet(t *testing.T, s coord.Store) {
	ctx, p := ctxT(t), prefix(t)
	k := p + "/a"
	if _, err := s.Get(ctx, k); !errors.Is(err, coord.ErrNotFound) {
		t.Fatalf("get absent: %v", err)
	}
	kv, err := s.Create(ctx, k, []byte("one"))
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if kv.Version <= 0 || kv.Ephemeral {
		t.Fatalf("create returned %+v", kv)
	}
	_, err = s.Create(ctx, k, []byte("two"))
	mustErr(t, err, coord.ErrExists, "second create")
	got, err := s.Get(ctx, k)
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if string(got.Value) != "one" || got.Version != kv.Version {
		t.Fatalf("get = %+v, want value one version %d", got, kv.Version)
	}
}

func testUpdateDelete(t *testing.T, s coord.Store) {
	ctx, p := ctxT(t), prefix(t)
	k := p + "/u"
	_, err := s.Update(ctx, k, []byte("x"), 0)
	mustErr(t, err, coord.ErrNotFound, "update absent")
	kv, err := s.Create(ctx, k, []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	kv2, err := s.Update(ctx, k, []byte("v2"), kv.Version)
	if err != nil {
		t.Fatalf("update at version: %v", err)
	}
	if kv2.Version == kv.Version {
		t.Fatalf("version did not change: %d", kv2.Version)
	}
	_, err = s.Update(ctx, k, []byte("v3"), kv.Version)
	mustErr(t, err, coord.ErrConflict, "update at stale version")
	if got, _ := s.Get(ctx, k); string(got.Value) != "v2" {
		t.Fatalf("stale update changed the value to %q", got.Value)
	}
	mustErr(t, s.Delete(ctx, k, kv.Version), coord.ErrConflict, "delete at stale version")
	if err := s.Delete(ctx, k, kv2.Version); err != nil {
		t.Fatalf("delete at version: %v", err)
	}
	mustErr(t, s.Delete(ctx, k, 0), coord.ErrNotFound, "delete absent")
}

func testList(t *testing.T, s coord.Store) {
	ctx, p := ctxT(t), prefix(t)
	list, err := s.List(ctx, p+"/none")
	if err != nil || len(list) != 0 {
		t.Fatalf("list of missing dir = %v, %v", list, err)
	}
	for _, n := range []string{"c", "a", "b"} {
		if _, err := s.Create(ctx, p+"/d/"+n, []byte(n)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Create(ctx, p+"/dx", []byte("sibling")); err != nil {
		t.Fatal(err)
	}
	list, err = s.List(ctx, p+"/d")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, kv := range list {
		names = append(names, string(kv.Value))
	}
	if fmt.Sprint(names) != "[a b c]" {
		t.Fatalf("list = %v, want [a b c] (sorted, direct children only)", names)
	}
	if _, err := s.Create(ctx, p+"/d/a/deep", []byte("grandchild")); err != nil {
		t.Fatal(err)
	}
	keys, err := s.Keys(ctx, p+"/d")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{p + "/d/a", p + "/d/b", p + "/d/c"}; !slices.Equal(keys, want) {
		t.Fatalf("keys = %v, want %v (sorted, direct children only)", keys, want)
	}
	if keys, err := s.Keys(ctx, p+"/none"); err != nil || len(keys) != 0 {
		t.Fatalf("keys of missing dir = %v, %v", keys, err)
	}
	// GetMany: in the order asked, absent keys empty (one in the second
	// etcd transaction too); more keys than one etcd transaction holds
	// (128); none.
	if got, err := s.GetMany(ctx, nil); err != nil || len(got) != 0 {
		t.Fatalf("get many of no keys = %v, %v", got, err)
	}
	ask := []string{p + "/d/c", p + "/none", p + "/d/a"}
	for i := range 140 {
		k := fmt.Sprintf("%s/many/%03d", p, i)
		if _, err := s.Create(ctx, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
		ask = append(ask, k)
	}
	ask = append(ask, p+"/d/b", p+"/none")
	got, err := s.GetMany(ctx, ask)
	if err != nil || len(got) != len(ask) {
		t.Fatalf("get many: %d values, %v; want %d", len(got), err, len(ask))
	}
	for i, k := range ask {
		want := k
		switch k {
		case p + "/none":
			want = ""
		case p + "/d/a", p + "/d/b", p + "/d/c":
			want = k[len(k)-1:]
		}
		if string(got[i].Value) != want || (want != "" && (got[i].Key != k || got[i].Version == 0)) || (want == "" && got[i].Key != "") {
			t.Fatalf("get many [%d] %s = %+v; want value %q", i, k, got[i], want)
		}
	}
}

func testTxn(t *testing.T, s coord.Store) {
	ctx, p := ctxT(t), prefix(t)
	epoch, err := s.Create(ctx, p+"/epoch", []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	// Fails on a stale version: nothing is written.
	_, err = s.Txn(ctx, []coord.Cond{coord.VersionIs(p+"/epoch", epoch.Version+1000)},
		[]coord.Op{coord.PutOp(p+"/epoch", []byte("2")), coord.CreateOp(p+"/leader", []byte("x"), nil)})
	mustErr(t, err, coord.ErrConflict, "txn with stale condition")
	if _, err := s.Get(ctx, p+"/leader"); !errors.Is(err, coord.ErrNotFound) {
		t.Fatalf("failed txn created a key: %v", err)
	}
	// Succeeds: all ops applied.
	vers, err := s.Txn(ctx, []coord.Cond{coord.VersionIs(p+"/epoch", epoch.Version), {Key: p + "/absent"}},
		[]coord.Op{coord.PutOp(p+"/epoch", []byte("2")), coord.CreateOp(p+"/leader", []byte("x"), nil)})
	if err != nil {
		t.Fatalf("txn: %v", err)
	}
	// The returned versions are the keys' new versions.
	for i, k := range []string{p + "/epoch", p + "/leader"} {
		kv, err := s.Get(ctx, k)
		if err != nil || len(vers) != 2 || kv.Version != vers[i] {
			t.Fatalf("txn versions %v; %s read back at %d (%v)", vers, k, kv.Version, err)
		}
	}
	if got, _ := s.Get(ctx, p+"/epoch"); string(got.Value) != "2" {
		t.Fatalf("epoch = %q", got.Value)
	}
	if _, err := s.Get(ctx, p+"/absent"); !errors.Is(err, coord.ErrNotFound) {
		t.Fatalf("absence condition left a key behind: %v", err)
	}
	// An absence condition on an existing key fails.
	_, err = s.Txn(ctx, []coord.Cond{{Key: p + "/leader"}}, []coord.Op{coord.PutOp(p+"/epoch", []byte("3"))})
	mustErr(t, err, coord.ErrConflict, "absence condition on existing key")
	// A create of an existing key fails the whole txn.
	_, err = s.Txn(ctx, nil, []coord.Op{coord.PutOp(p+"/epoch", []byte("4")), coord.CreateOp(p+"/leader", nil, nil)})
	mustErr(t, err, coord.ErrConflict, "txn create of existing key")
	if got, _ := s.Get(ctx, p+"/epoch"); string(got.Value) != "2" {
		t.Fatalf("failed txn wrote epoch %q", got.Value)
	}
	// Delete in a txn.
	if _, err := s.Txn(ctx, nil, []coord.Op{coord.DeleteOp(p + "/leader")}); err != nil {
		t.Fatalf("txn delete: %v", err)
	}
	if _, err := s.Get(ctx, p+"/leader"); !errors.Is(err, coord.ErrNotFound) {
		t.Fatalf("txn delete left key: %v", err)
	}
}

func testSessionEphemeral(t *testing.T, s coord.Store) {
	ctx, p := ctxT(t), prefix(t)
	sess, err := s.NewSession(ctx, 4*time.Second)
	if err != nil {
		t.Fatalf("new session: %v", err)
	}
	if st, _ := sess.State(); st != coord.StateRunning {
		t.Fatalf("new session state %v", st)
	}
	first := sess.LastContact()
	kv, err := s.Create(ctx, p+"/eph", []byte("e"), coord.WithSession(sess))
	if err != nil {
		t.Fatalf("create ephemeral: %v", err)
	}
	if !kv.Ephemeral {
		t.Fatal("create with session returned a non-ephemeral key")
	}
	if _, err := s.Txn(ctx, nil, []coord.Op{coord.CreateOp(p+"/eph2", nil, sess)}); err != nil {
		t.Fatalf("txn create ephemeral: %v", err)
	}
	got, err := s.Get(ctx, p+"/eph2")
	if err != nil || !got.Ephemeral {
		t.Fatalf("txn-created key = %+v, %v; want ephemeral", got, err)
	}
	// The heartbeat confirms contact at least every timeout/6.
	wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	for !sess.LastContact().After(first) {
		_, ch := sess.State()
		select {
		case <-ch:
		case <-wctx.Done():
			t.Fatalf("last contact never advanced past %v", first)
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err := sess.Close(ctx); err != nil {
		t.Fatalf("close session: %v", err)
	}
	select {
	case <-sess.Done():
	default:
		t.Fatal("Done not closed after Close")
	}
	if st, _ := sess.State(); st != coord.StateStopped {
		t.Fatalf("closed session state %v", st)
	}
	for _, k := range []string{p + "/eph", p + "/eph2"} {
		if _, err := s.Get(ctx, k); !errors.Is(err, coord.ErrNotFound) {
			t.Fatalf("ephemeral %s survived its session: %v", k, err)
		}
	}
}

// next reads one event or fails after a deadline.
func next(t *testing.T, ch <-chan coord.Event) coord.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed early")
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no watch event within 10s")
	}
	return coord.Event{}
}

// testWatchClose: Close, under a context that stays alive and with events
// queued that nobody reads, returns only after the watch goroutine has
// ended, and the Events channel is closed by then.
func testWatchClose(t *testing.T, s coord.Store) {
	ctx, p := ctxT(t), prefix(t)
	dir := p + "/wc"
	for i := range 3 {
		if _, err := s.Create(ctx, fmt.Sprintf("%s/k%d", dir, i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	w := s.Watch(ctx, dir)
	if ev := next(t, w.Events()); ev.Type != coord.EventPut {
		t.Fatalf("first event %v, want a put", ev.Type)
	}
	// The rest of the listing stays queued, unread.
	closed := make(chan struct{})
	go func() { defer close(closed); w.Close() }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return within 10s")
	}
	select {
	case <-w.Done():
	default:
		t.Fatal("Close returned while the watch goroutine was still running")
	}
	if _, ok := <-w.Events(); ok {
		t.Fatal("Events still open after Close")
	}
	w.Close() // a second Close is harmless
}

func testWatch(t *testing.T, s coord.Store) {
	ctx, p := ctxT(t), prefix(t)
	dir := p + "/w"
	if _, err := s.Create(ctx, dir+"/pre", []byte("0")); err != nil {
		t.Fatal(err)
	}
	w := s.Watch(ctx, dir)
	defer w.Close()
	ch := w.Events()
	if ev := next(t, ch); ev.Type != coord.EventPut || ev.KV.Key != dir+"/pre" {
		t.Fatalf("first event %v %s, want put of existing key", ev.Type, ev.KV.Key)
	}
	if ev := next(t, ch); ev.Type != coord.EventSynced {
		t.Fatalf("want synced, got %v", ev.Type)
	}
	kv, err := s.Create(ctx, dir+"/k", []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	if ev := next(t, ch); ev.Type != coord.EventPut || string(ev.KV.Value) != "1" {
		t.Fatalf("after create: %v %q", ev.Type, ev.KV.Value)
	}
	if _, err := s.Update(ctx, dir+"/k", []byte("2"), kv.Version); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, ch); ev.Type != coord.EventPut || string(ev.KV.Value) != "2" {
		t.Fatalf("after update: %v %q", ev.Type, ev.KV.Value)
	}
	// A deeper key is not a child and must not be delivered.
	if _, err := s.Create(ctx, dir+"/sub/deep", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, dir+"/k", 0); err != nil {
		t.Fatal(err)
	}
	for {
		ev := next(t, ch)
		if ev.KV.Key == dir+"/sub/deep" {
			t.Fatalf("watch delivered a grandchild: %v", ev)
		}
		if ev.KV.Key == dir+"/sub" {
			continue // ZooKeeper materialises parent nodes
		}
		if ev.Type != coord.EventDelete || ev.KV.Key != dir+"/k" {
			t.Fatalf("after delete: %v %s", ev.Type, ev.KV.Key)
		}
		break
	}
	// Ephemeral keys vanish from the watch when their session closes.
	sess, err := s.NewSession(ctx, 4*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, dir+"/e", nil, coord.WithSession(sess)); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, ch); ev.Type != coord.EventPut || ev.KV.Key != dir+"/e" {
		t.Fatalf("ephemeral create: %v %s", ev.Type, ev.KV.Key)
	}
	if err := sess.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, ch); ev.Type != coord.EventDelete || ev.KV.Key != dir+"/e" {
		t.Fatalf("session close: %v %s", ev.Type, ev.KV.Key)
	}
}

func testCreateOrder(t *testing.T, s coord.Store) {
	ctx, p := ctxT(t), prefix(t)
	a, err := s.Create(ctx, p+"/z-first", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Create(ctx, p+"/a-second", nil)
	if err != nil {
		t.Fatal(err)
	}
	list, err := s.List(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || a.CreateOrder >= b.CreateOrder {
		t.Fatalf("create order: first %d second %d (list %d)", a.CreateOrder, b.CreateOrder, len(list))
	}
	for _, kv := range list {
		if kv.Key == a.Key && kv.CreateOrder != a.CreateOrder {
			t.Fatalf("listed create order %d != created %d", kv.CreateOrder, a.CreateOrder)
		}
	}
}

// testHeartbeatLateness: the backend is a HeartbeatReporter, and its
// sessions' heartbeat loop reports each scheduled heartbeat's lateness
// (the starvation monitor depends on it).
func testHeartbeatLateness(t *testing.T, s coord.Store) {
	ctx := ctxT(t)
	r, ok := s.(coord.HeartbeatReporter)
	if !ok {
		t.Fatalf("%T does not report heartbeat lateness", s)
	}
	got := make(chan time.Duration, 16)
	r.ObserveHeartbeats(func(late, _ time.Duration) {
		select {
		case got <- late:
		default:
		}
	})
	sess, err := s.NewSession(ctx, 3*time.Second)
	if err != nil {
		t.Fatalf("new session: %v", err)
	}
	defer sess.Close(ctx)
	interval := coord.HeartbeatInterval(3 * time.Second)
	for i := range 2 {
		select {
		case late := <-got:
			if late < 0 || late > 10*interval {
				t.Fatalf("heartbeat %d lateness %v on an idle store", i, late)
			}
		case <-time.After(5 * interval):
			t.Fatalf("heartbeat %d of a %v interval not observed within %v", i, interval, 5*interval)
		}
	}
}
