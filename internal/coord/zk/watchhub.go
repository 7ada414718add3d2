package zk

import (
	"context"
	"path"
	"slices"
	"sync"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/coord/internal/backend"
)

// A hub is the one ZooKeeper watch of a directory that every Watch of it in
// this process shares. ZooKeeper's watches carry no data: a watcher reads
// each child that changes. With one watch per Watch call, every watcher of
// the active tasks (the dispatcher, the schedule leader, each console page
// and each `task wait`) read every progress write again, so the leader's
// session queued one read per watcher per write, and a page's own reads
// waited behind them (issues 18 and 19).
//
// The hub keeps the directory's contents as its watch delivered them and
// hands each change to every subscriber without blocking: a subscriber's
// undelivered changes are merged per key, so a subscriber that does not
// read holds at most one change per child and slows nobody. A new
// subscriber gets the contents the hub knows, then asks the watch for a
// fresh listing (a refresh, made without watches in the watch's own
// goroutine, so that it is ordered after every read before it): its
// EventSynced comes after that listing's differences, so its first
// contents include every write that completed before it subscribed, as a
// watch of its own would.
type hub struct {
	dir    string
	refs   int // guarded by Store.hubsMu
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	known   map[string]coord.KV
	subs    map[*subscriber]struct{}
	waiting []*subscriber // subscribers whose refresh is still to come
	refresh chan struct{} // cap 1: waiting is not empty
}

// subscriber is one Watch's share of a hub: the events not yet taken by
// its goroutine, merged per key (each key keeps its first place).
type subscriber struct {
	mu      sync.Mutex
	pending []coord.Event
	at      map[string]int // key → index in pending
	wake    chan struct{}  // cap 1: pending is not empty
}

func newSubscriber() *subscriber {
	return &subscriber{at: make(map[string]int), wake: make(chan struct{}, 1)}
}

// push queues ev, replacing a queued change of the same key and the same
// incarnation (CreateOrder). A key deleted and created again keeps both
// changes, in order: merged, a consumer would see the new incarnation's
// lower version replace the old one's without the delete between.
func (sb *subscriber) push(ev coord.Event) {
	sb.mu.Lock()
	if i, ok := sb.at[ev.KV.Key]; ok && ev.Type != coord.EventSynced && sb.pending[i].KV.CreateOrder == ev.KV.CreateOrder {
		sb.pending[i] = ev
	} else {
		if ev.Type != coord.EventSynced {
			sb.at[ev.KV.Key] = len(sb.pending)
		}
		sb.pending = append(sb.pending, ev)
	}
	sb.mu.Unlock()
	select {
	case sb.wake <- struct{}{}:
	default:
	}
}

// take returns the queued events in order and empties the queue.
func (sb *subscriber) take() []coord.Event {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	evs := sb.pending
	sb.pending = nil
	clear(sb.at)
	return evs
}

// follow delivers the subscriber's events to out, through a cache of its
// own (which drops a delete of a key it never delivered, as when a put and
// a delete were merged), until ctx ends.
func (sb *subscriber) follow(ctx context.Context, out chan<- coord.Event) {
	cache := backend.NewWatchCache(out)
	for {
		select {
		case <-ctx.Done():
			return
		case <-sb.wake:
		}
		for _, ev := range sb.take() {
			var ok bool
			switch ev.Type {
			case coord.EventPut:
				ok = cache.Put(ctx, ev.KV)
			case coord.EventDelete:
				ok = cache.Delete(ctx, ev.KV.Key)
			default:
				ok = cache.Synced(ctx)
			}
			if !ok {
				return
			}
		}
	}
}

// Watch implements coord.Store: one watch per directory per Store, shared
// (see hub).
func (s *Store) Watch(ctx context.Context, dir string) *coord.Watcher {
	return coord.StartWatcher(ctx, func(ctx context.Context, out chan<- coord.Event) {
		h, sb := s.subscribe(ctx, dir)
		defer s.unsubscribe(h, sb)
		sb.follow(ctx, out)
	})
}

// subscribe adds a subscriber to dir's hub, starting the hub if it is the
// first. The hub's goroutine is owned by its subscribers: the last one to
// leave stops and joins it.
func (s *Store) subscribe(ctx context.Context, dir string) (*hub, *subscriber) {
	s.hubsMu.Lock()
	h := s.hubs[dir]
	if h == nil {
		hctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		h = &hub{dir: dir, cancel: cancel, done: make(chan struct{}), known: make(map[string]coord.KV),
			subs: make(map[*subscriber]struct{}), refresh: make(chan struct{}, 1)}
		if s.hubs == nil {
			s.hubs = make(map[string]*hub)
		}
		s.hubs[dir] = h
		go func() {
			defer close(h.done)
			s.watch(hctx, dir, h)
		}()
	}
	h.refs++
	s.hubsMu.Unlock()

	sb := newSubscriber()
	h.mu.Lock()
	keys := make([]string, 0, len(h.known))
	for k := range h.known {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		sb.push(coord.Event{Type: coord.EventPut, KV: h.known[k]})
	}
	h.subs[sb] = struct{}{}
	h.waiting = append(h.waiting, sb)
	h.mu.Unlock()
	select {
	case h.refresh <- struct{}{}:
	default:
	}
	return h, sb
}

// unsubscribe removes sb; the last subscriber stops the hub and waits for
// its watch to end.
func (s *Store) unsubscribe(h *hub, sb *subscriber) {
	h.mu.Lock()
	delete(h.subs, sb)
	h.waiting = slices.DeleteFunc(h.waiting, func(w *subscriber) bool { return w == sb })
	h.mu.Unlock()
	s.hubsMu.Lock()
	h.refs--
	last := h.refs == 0
	if last {
		delete(s.hubs, h.dir)
	}
	s.hubsMu.Unlock()
	if last {
		h.cancel()
		<-h.done
	}
}

// startListing is called as a session's first listing starts: that
// listing serves every current subscriber, those waiting for a refresh
// included, all taken in one step so that none is served twice.
func (h *hub) startListing() []*subscriber {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.waiting = nil
	out := make([]*subscriber, 0, len(h.subs))
	for sb := range h.subs {
		out = append(out, sb)
	}
	return out
}

// keysNotIn returns the keys the hub holds whose names (the last segment:
// they are children of the hub's directory) are not in present.
func (h *hub) keysNotIn(present map[string]bool) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for key := range h.known {
		if !present[path.Base(key)] {
			out = append(out, key)
		}
	}
	return out
}

// takeWaiting returns the subscribers waiting for a fresh listing and
// forgets them: the listing about to be made is theirs.
func (h *hub) takeWaiting() []*subscriber {
	h.mu.Lock()
	defer h.mu.Unlock()
	w := h.waiting
	h.waiting = nil
	return w
}

// put records kv and hands it to every subscriber, unless the hub already
// has that version.
func (h *hub) put(kv coord.KV) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if old, ok := h.known[kv.Key]; ok && old.Version == kv.Version && old.CreateOrder == kv.CreateOrder {
		return
	}
	h.known[kv.Key] = kv
	h.sendLocked(coord.Event{Type: coord.EventPut, KV: kv})
}

// delete forgets key and hands its deletion to every subscriber, if the
// hub had it.
func (h *hub) delete(key string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	kv, ok := h.known[key]
	if !ok {
		return
	}
	delete(h.known, key)
	h.sendLocked(coord.Event{Type: coord.EventDelete, KV: kv})
}

func (h *hub) sendLocked(ev coord.Event) {
	for sb := range h.subs {
		sb.push(ev)
	}
}

// resync makes the hub's contents those of list, handing the differences
// to every subscriber, then EventSynced to those in to (those still
// subscribed).
func (h *hub) resync(list []coord.KV, to []*subscriber) {
	seen := make(map[string]bool, len(list))
	for _, kv := range list {
		seen[kv.Key] = true
		h.put(kv)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for k, kv := range h.known {
		if !seen[k] {
			delete(h.known, k)
			h.sendLocked(coord.Event{Type: coord.EventDelete, KV: kv})
		}
	}
	for _, sb := range to {
		if _, ok := h.subs[sb]; ok {
			sb.push(coord.Event{Type: coord.EventSynced})
		}
	}
}
