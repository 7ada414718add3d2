package zk

import (
	"context"
	"errors"
	"path"
	"sync"
	"time"

	"github.com/go-zookeeper/zk"
	"github.com/taskd/taskd/internal/backoff"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/coord/internal/backend"
)

// Watch implements coord.Store with one child watch on dir and one data watch
// per child. ZooKeeper watches fire once, so each is re-armed with the read
// that follows it. The library re-registers watches after a reconnect and the
// server fires those whose node changed meanwhile, so a reconnect loses
// nothing. If the base session expires every watch reports "not watching";
// the watcher then lists the directory on the new session and delivers the
// difference.
func (s *Store) Watch(ctx context.Context, dir string) *coord.Watcher {
	return coord.StartWatcher(ctx, func(ctx context.Context, out chan<- coord.Event) { s.watch(ctx, dir, out) })
}

// watch follows dir, session after session, until ctx ends.
func (s *Store) watch(ctx context.Context, dir string, out chan<- coord.Event) {
	cache := backend.NewWatchCache(out)
	// Reset once a session's listing is delivered: only failures in a row
	// wait longer and longer.
	retry := backoff.New(50*time.Millisecond, 2*time.Second)
	for ctx.Err() == nil {
		if err := s.watchSession(ctx, dir, cache, retry.Reset); err != nil {
			s.log.Debug("zookeeper watch interrupted, resyncing", "dir", dir, "err", err)
		}
		_ = retry.Wait(ctx) // ctx's end is seen by the loop
	}
}

type fired struct {
	name string // "" for the directory's own watch
	ev   zk.Event
}

// watchBatch bounds how many fired watches one pass of a watch's loop
// handles together.
const watchBatch = 512

var errNotWatching = errors.New("zookeeper watch lost (session expired or connection closed)")

// watchSession follows dir on one base connection until a watch is lost or
// ctx ends.
func (s *Store) watchSession(ctx context.Context, dir string, cache *backend.WatchCache, synced func()) error {
	c, err := s.conn(ctx)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()

	events := make(chan fired)
	forward := func(name string, ch <-chan zk.Event) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case ev := <-ch:
				select {
				case events <- fired{name, ev}:
				case <-wctx.Done():
				}
			case <-wctx.Done():
			}
		}()
	}
	armed := make(map[string]bool)
	absDir := s.abs(dir)

	// readChildren reads children and arms their data watches, the reads
	// issued together (bounded by listParallel) rather than one round trip
	// after another: a new leader's watch of 10 000 schedules took seconds
	// to deliver its first contents, and a burst of new tasks one round
	// trip each. It returns the children still present, in names' order.
	readChildren := func(names []string) ([]coord.KV, error) {
		type read struct {
			data    []byte
			st      *zk.Stat
			ch      <-chan zk.Event
			err     error
			stopped bool // not issued: ctx ended
		}
		reads := make([]read, len(names))
		sem := make(chan struct{}, listParallel)
		var rg sync.WaitGroup
		for i, name := range names {
			if err := ctx.Err(); err != nil {
				// Stop issuing reads; those issued end with the
				// library's request timeout at the latest.
				for j := i; j < len(names); j++ {
					reads[j].stopped, reads[j].err = true, err
				}
				break
			}
			sem <- struct{}{}
			rg.Add(1)
			go func() {
				defer func() { <-sem; rg.Done() }()
				r := &reads[i]
				r.data, r.st, r.ch, r.err = c.GetW(s.abs(path.Join(dir, name)))
			}()
		}
		rg.Wait()
		out := make([]coord.KV, 0, len(names))
		var errs []error
		for i, name := range names {
			r := reads[i]
			switch {
			case errors.Is(r.err, zk.ErrNoNode): // deleted meanwhile: gone
			case r.stopped:
				return nil, r.err // the watch ends with ctx
			case r.err != nil:
				errs = append(errs, mapErr("watch get", path.Join(dir, name), r.err))
			default:
				// Armed even when another read failed: its event is then
				// dropped with this session's watcher (the library's
				// watch channels are buffered and never block it).
				armed[name] = true
				forward(name, r.ch)
				out = append(out, s.kv(path.Join(dir, name), r.data, r.st))
			}
		}
		return out, errors.Join(errs...)
	}
	// listDir re-arms the directory watch and returns the child names.
	listDir := func() ([]string, error) {
		for {
			kids, _, ch, err := c.ChildrenW(absDir)
			if err == nil {
				forward("", ch)
				return kids, nil
			}
			if !errors.Is(err, zk.ErrNoNode) {
				return nil, mapErr("watch list", dir, err)
			}
			ok, _, ch, err := c.ExistsW(absDir)
			if err != nil {
				return nil, mapErr("watch exists", dir, err)
			}
			if !ok {
				forward("", ch)
				return nil, nil
			}
		}
	}

	kids, err := listDir()
	if err != nil {
		return err
	}
	list, err := readChildren(kids)
	if err != nil {
		return err
	}
	if !cache.Resync(ctx, list) {
		return ctx.Err()
	}
	synced()
	for {
		var batch []fired
		select {
		case <-ctx.Done():
			return ctx.Err()
		case f := <-events:
			batch = append(batch, f)
		}
		// What else has fired is handled with it: the re-reads of a
		// batch go out together. One at a time, a directory of a
		// thousand running tasks, each writing its progress every
		// second, kept the loop a round trip per write behind: a new
		// task waited seconds behind the progress of others.
	gather:
		for len(batch) < watchBatch {
			select {
			case f := <-events:
				batch = append(batch, f)
			default:
				break gather
			}
		}
		var names []string
		dirFired := false
		for _, f := range batch {
			if f.ev.Type == zk.EventNotWatching || f.ev.Err != nil {
				return errNotWatching
			}
			if f.name == "" {
				dirFired = true
			} else {
				names = append(names, f.name)
			}
		}
		if dirFired {
			if err := s.dirChanged(ctx, dir, listDir, readChildren, armed, cache); err != nil {
				return err
			}
		}
		if err := s.childrenChanged(ctx, dir, names, readChildren, armed, cache); err != nil {
			return err
		}
	}
}

// dirChanged handles the directory's watch: it re-arms it, reads the
// children that are new and delivers the ones gone.
func (s *Store) dirChanged(ctx context.Context, dir string, listDir func() ([]string, error), readChildren func([]string) ([]coord.KV, error), armed map[string]bool, cache *backend.WatchCache) error {
	kids, err := listDir()
	if err != nil {
		return err
	}
	present := make(map[string]bool, len(kids))
	var added []string
	for _, k := range kids {
		present[k] = true
		if !armed[k] {
			added = append(added, k)
		}
	}
	kvs, err := readChildren(added)
	if err != nil {
		return err
	}
	for _, kv := range kvs {
		if !cache.Put(ctx, kv) {
			return ctx.Err()
		}
	}
	for k := range armed {
		if !present[k] {
			// Its data watch reports the deletion too; the cache
			// delivers it once.
			if !cache.Delete(ctx, path.Join(dir, k)) {
				return ctx.Err()
			}
		}
	}
	return nil
}

// childrenChanged handles the data watches that fired on names: it
// re-reads them together (re-arming each) and delivers what changed and
// what is gone.
func (s *Store) childrenChanged(ctx context.Context, dir string, names []string, readChildren func([]string) ([]coord.KV, error), armed map[string]bool, cache *backend.WatchCache) error {
	if len(names) == 0 {
		return nil
	}
	for _, n := range names {
		delete(armed, n)
	}
	kvs, err := readChildren(names)
	if err != nil {
		return err
	}
	got := make(map[string]bool, len(kvs))
	for _, kv := range kvs {
		got[path.Base(kv.Key)] = true
		if !cache.Put(ctx, kv) {
			return ctx.Err()
		}
	}
	for _, n := range names {
		if !got[n] {
			if !cache.Delete(ctx, path.Join(dir, n)) {
				return ctx.Err()
			}
		}
	}
	return nil
}
