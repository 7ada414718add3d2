package zk

import (
	"testing"

	"github.com/taskd/taskd/internal/coord"
)

// TestSubscriberMerge: a subscriber's queue merges the changes of one key
// and incarnation, keeping the key's first place, but keeps a delete and a
// new incarnation apart, in order.
func TestSubscriberMerge(t *testing.T) {
	kv := func(key string, ver, created int64) coord.KV {
		return coord.KV{Key: key, Version: ver, CreateOrder: created}
	}
	put := func(k coord.KV) coord.Event { return coord.Event{Type: coord.EventPut, KV: k} }
	del := func(k coord.KV) coord.Event { return coord.Event{Type: coord.EventDelete, KV: k} }
	sb := newSubscriber()
	for _, ev := range []coord.Event{
		put(kv("/d/a", 1, 10)), put(kv("/d/b", 1, 11)), put(kv("/d/a", 2, 10)), // a merged in its place
		{Type: coord.EventSynced},
		del(kv("/d/b", 1, 11)), put(kv("/d/b", 1, 12)), put(kv("/d/b", 2, 12)), // b deleted, created again, changed
	} {
		sb.push(ev)
	}
	want := []coord.Event{put(kv("/d/a", 2, 10)), del(kv("/d/b", 1, 11)), {Type: coord.EventSynced}, put(kv("/d/b", 2, 12))}
	got := sb.take()
	if len(got) != len(want) {
		t.Fatalf("queue %v, want %v", got, want)
	}
	for i := range want {
		if got[i].Type != want[i].Type || got[i].KV.Key != want[i].KV.Key || got[i].KV.Version != want[i].KV.Version || got[i].KV.CreateOrder != want[i].KV.CreateOrder {
			t.Fatalf("event %d: %v, want %v (queue %v)", i, got[i], want[i], got)
		}
	}
	if rest := sb.take(); len(rest) != 0 {
		t.Fatalf("take left %v", rest)
	}
}
