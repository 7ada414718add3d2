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
	cache := coord.NewWatchCache(out)
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

var errNotWatching = errors.New("zookeeper watch lost (session expired or connection closed)")

// watchSession follows dir on one base connection until a watch is lost or
// ctx ends.
func (s *Store) watchSession(ctx context.Context, dir string, cache *coord.WatchCache, synced func()) error {
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

	// readChild reads a child and arms its data watch; ok=false if gone.
	readChild := func(name string) (coord.KV, bool, error) {
		key := path.Join(dir, name)
		data, st, ch, err := c.GetW(s.abs(key))
		if errors.Is(err, zk.ErrNoNode) {
			return coord.KV{}, false, nil
		}
		if err != nil {
			return coord.KV{}, false, mapErr("watch get", key, err)
		}
		armed[name] = true
		forward(name, ch)
		return s.kv(key, data, st), true, nil
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
	list := make([]coord.KV, 0, len(kids))
	for _, k := range kids {
		kv, ok, err := readChild(k)
		if err != nil {
			return err
		}
		if ok {
			list = append(list, kv)
		}
	}
	if !cache.Resync(ctx, list) {
		return ctx.Err()
	}
	synced()
	for {
		var f fired
		select {
		case <-ctx.Done():
			return ctx.Err()
		case f = <-events:
		}
		if f.ev.Type == zk.EventNotWatching || f.ev.Err != nil {
			return errNotWatching
		}
		if f.name == "" {
			kids, err := listDir()
			if err != nil {
				return err
			}
			present := make(map[string]bool, len(kids))
			for _, k := range kids {
				present[k] = true
				if armed[k] {
					continue
				}
				kv, ok, err := readChild(k)
				if err != nil {
					return err
				}
				if ok && !cache.Put(ctx, kv) {
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
			continue
		}
		delete(armed, f.name)
		kv, ok, err := readChild(f.name)
		if err != nil {
			return err
		}
		if !ok {
			if !cache.Delete(ctx, path.Join(dir, f.name)) {
				return ctx.Err()
			}
			continue
		}
		if !cache.Put(ctx, kv) {
			return ctx.Err()
		}
	}
}
