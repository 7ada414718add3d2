package vips

import (
	"context"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/keys"
)

// mirror keeps the contents of one store directory, fed by its watch. Its
// owner closes it: close ends the watch and waits for its goroutine.
type mirror struct {
	dir    string
	w      *coord.Watcher
	ch     <-chan coord.Event
	keys   map[string]coord.KV // by service
	synced bool
}

func watchDir(ctx context.Context, store coord.Store, dir string) *mirror {
	w := store.Watch(ctx, dir)
	return &mirror{dir: dir, w: w, ch: w.Events(), keys: map[string]coord.KV{}}
}

func (m *mirror) close() { m.w.Close() }

// apply records one event; it reports false when the watch has ended. A
// key that names no valid service (written around taskd) is left out, so
// no key is ever built from it.
func (m *mirror) apply(ev coord.Event, ok bool) bool {
	if !ok {
		return false
	}
	if ev.Type == coord.EventSynced {
		m.synced = true
		return true
	}
	svc, err := keys.Child(m.dir, ev.KV.Key, keys.ValidService)
	if err != nil {
		return true
	}
	switch ev.Type {
	case coord.EventPut:
		m.keys[svc] = ev.KV
	case coord.EventDelete:
		delete(m.keys, svc)
	}
	return true
}

// drain applies every event already queued, so that a burst is handled in
// one pass; it reports false when the watch has ended.
func (m *mirror) drain() bool {
	for {
		select {
		case ev, ok := <-m.ch:
			if !m.apply(ev, ok) {
				return false
			}
		default:
			return true
		}
	}
}
