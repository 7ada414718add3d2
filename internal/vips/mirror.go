package vips

import (
	"context"
	"path"

	"github.com/taskd/taskd/internal/coord"
)

// mirror keeps the contents of one store directory, fed by its watch.
type mirror struct {
	dir    string
	ch     <-chan coord.Event
	keys   map[string]coord.KV // by base name
	synced bool
}

func watchDir(ctx context.Context, store coord.Store, dir string) *mirror {
	return &mirror{dir: dir, ch: store.Watch(ctx, dir), keys: map[string]coord.KV{}}
}

// apply records one event; it reports false when the watch has ended.
func (m *mirror) apply(ev coord.Event, ok bool) bool {
	if !ok {
		return false
	}
	switch ev.Type {
	case coord.EventSynced:
		m.synced = true
	case coord.EventPut:
		m.keys[path.Base(ev.KV.Key)] = ev.KV
	case coord.EventDelete:
		delete(m.keys, path.Base(ev.KV.Key))
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
