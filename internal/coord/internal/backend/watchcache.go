package backend

import (
	"context"
	"path"
	"strings"

	"github.com/taskd/taskd/internal/coord"
)

// WatchCache remembers what a watcher has delivered, so that after a gap
// (reconnect, compaction, new ZooKeeper session) a fresh listing can be turned
// into exactly the events the consumer missed.
type WatchCache struct {
	out   chan<- coord.Event
	known map[string]coord.KV
}

// NewWatchCache delivers to out.
func NewWatchCache(out chan<- coord.Event) *WatchCache {
	return &WatchCache{out: out, known: make(map[string]coord.KV)}
}

// Resync compares a full listing with what was delivered, emits the
// difference and then coord.EventSynced. It returns false if ctx ended.
func (w *WatchCache) Resync(ctx context.Context, list []coord.KV) bool {
	seen := make(map[string]bool, len(list))
	for _, kv := range list {
		seen[kv.Key] = true
		if old, ok := w.known[kv.Key]; ok && old.Version == kv.Version && old.CreateOrder == kv.CreateOrder {
			continue
		}
		if !w.Put(ctx, kv) {
			return false
		}
	}
	for k, kv := range w.known {
		if !seen[k] {
			if !w.Delete(ctx, kv.Key) {
				return false
			}
		}
	}
	return w.send(ctx, coord.Event{Type: coord.EventSynced})
}

// Put delivers a put unless the same version was already delivered.
func (w *WatchCache) Put(ctx context.Context, kv coord.KV) bool {
	if old, ok := w.known[kv.Key]; ok && old.Version == kv.Version && old.CreateOrder == kv.CreateOrder {
		return true
	}
	w.known[kv.Key] = kv
	return w.send(ctx, coord.Event{Type: coord.EventPut, KV: kv})
}

// Delete delivers a delete of a known key.
func (w *WatchCache) Delete(ctx context.Context, key string) bool {
	kv, ok := w.known[key]
	if !ok {
		return true
	}
	delete(w.known, key)
	return w.send(ctx, coord.Event{Type: coord.EventDelete, KV: kv})
}

// Synced delivers coord.EventSynced. It returns false if ctx ended.
func (w *WatchCache) Synced(ctx context.Context) bool {
	return w.send(ctx, coord.Event{Type: coord.EventSynced})
}

func (w *WatchCache) send(ctx context.Context, ev coord.Event) bool {
	select {
	case w.out <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

// IsChild reports whether key is a direct child of dir.
func IsChild(dir, key string) bool {
	dir = strings.TrimSuffix(dir, "/") + "/"
	if !strings.HasPrefix(key, dir) {
		return false
	}
	rest := key[len(dir):]
	return rest != "" && !strings.Contains(rest, "/")
}

// Join builds a key from a directory and a name.
func Join(dir, name string) string { return path.Join(dir, name) }

// ValidKey reports whether key is an absolute, clean slash path.
func ValidKey(key string) bool {
	return strings.HasPrefix(key, "/") && key != "/" && path.Clean(key) == key
}

// IsGrandchild reports whether key is exactly two segments below dir.
func IsGrandchild(dir, key string) bool {
	dir = strings.TrimSuffix(dir, "/") + "/"
	if !strings.HasPrefix(key, dir) {
		return false
	}
	a, b, ok := strings.Cut(key[len(dir):], "/")
	return ok && a != "" && b != "" && !strings.Contains(b, "/")
}
