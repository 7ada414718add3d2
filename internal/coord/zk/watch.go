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

// watch follows dir for h, session after session, until ctx ends: one
// child watch on dir and one data watch per child. ZooKeeper watches fire
// once, so each is re-armed with the read that follows it. The library
// re-registers watches after a reconnect and the server fires those whose
// node changed meanwhile, so a reconnect loses nothing. If the base
// session expires every watch reports "not watching"; the watch then lists
// the directory on the new session and delivers the difference.
func (s *Store) watch(ctx context.Context, dir string, h *hub) {
	// Reset once a session's listing is delivered: only failures in a row
	// wait longer and longer.
	retry := backoff.New(50*time.Millisecond, 2*time.Second)
	for ctx.Err() == nil {
		if err := s.watchSession(ctx, dir, h, retry.Reset); err != nil {
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
func (s *Store) watchSession(ctx context.Context, dir string, h *hub, synced func()) error {
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
	// issued together (bounded by watchReadParallel) rather than one round trip
	// after another: a new leader's watch of 10 000 schedules took seconds
	// to deliver its first contents, and a burst of new tasks one round
	// trip each. It returns the children still present, in names' order.
	readChildren := func(names []string, arm bool) ([]coord.KV, error) {
		type read struct {
			data    []byte
			st      *zk.Stat
			ch      <-chan zk.Event
			err     error
			stopped bool // not issued: ctx ended
		}
		reads := make([]read, len(names))
		sem := make(chan struct{}, watchReadParallel)
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
				s.watchReads.Add(1)
				if arm {
					r.data, r.st, r.ch, r.err = c.GetW(s.abs(path.Join(dir, name)))
				} else {
					r.data, r.st, r.err = c.Get(s.abs(path.Join(dir, name)))
				}
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
				if arm {
					armed[name] = true
					forward(name, r.ch)
				}
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

	// The session's first listing serves every subscriber, those waiting
	// for a refresh included: each gets EventSynced after it.
	everyone := h.startListing()
	kids, err := listDir()
	if err != nil {
		return err
	}
	list, err := readChildren(kids, true)
	if err != nil {
		return err
	}
	h.resync(list, everyone)
	synced()
	for {
		var batch []fired
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-h.refresh:
			if err := s.refresh(c, dir, h, readChildren); err != nil {
				return err
			}
			continue
		case f := <-events:
			batch = append(batch, f)
		}
		// Take every watch that has fired meanwhile, so that their reads
		// go out together: one read after another, each waiting behind
		// the session's writes in flight, held the dispatcher's view a
		// round trip per change behind (issue 19).
	more:
		for len(batch) < maxFiredBatch {
			select {
			case f := <-events:
				batch = append(batch, f)
			default:
				break more
			}
		}
		if err := s.applyFired(dir, batch, armed, h, listDir, readChildren); err != nil {
			return err
		}
	}
}

// maxFiredBatch bounds the fired watches handled in one step.
const maxFiredBatch = 4096

// watchReadParallel bounds the reads one step of a watch has in flight. A
// session's reads wait on the server behind its writes in flight, so a
// step's reads are best sent at once: at 32 a step that re-read the 192
// tasks of one dispatch pass waited six rounds of writes (issue 19).
const watchReadParallel = 256

// applyFired handles the watches of dir that have fired (batch), in one
// step: the directory's is listed again, and every child whose data watch
// fired or that the listing shows new is read (which re-arms its watch),
// the reads issued together. A child whose watch reports it deleted is read
// too (it may have been created again under its name, and a listing may
// have shown it present while its old watch was still to fire), unless a
// listing made after the report shows it absent: that listing's watch then
// reports its next creation. armed holds the children whose data watch is
// set; it is updated.
func (s *Store) applyFired(dir string, batch []fired, armed map[string]bool, h *hub,
	listDir func() ([]string, error), readChildren func([]string, bool) ([]coord.KV, error)) error {
	listed := false
	var gone, read []string
	for _, f := range batch {
		if f.ev.Type == zk.EventNotWatching || f.ev.Err != nil {
			return errNotWatching
		}
		if f.name == "" {
			listed = true
			continue
		}
		delete(armed, f.name)
		if f.ev.Type == zk.EventNodeDeleted {
			gone = append(gone, f.name)
		} else {
			read = append(read, f.name)
		}
	}
	var present map[string]bool
	if !listed {
		read = append(read, gone...)
	} else {
		kids, err := listDir()
		if err != nil {
			return err
		}
		present = make(map[string]bool, len(kids))
		for _, k := range kids {
			present[k] = true
		}
		// A reported deletion the listing confirms is delivered with the
		// hub's keys the listing does not show, below.
		for _, name := range gone {
			if present[name] {
				read = append(read, name)
			}
		}
		reading := make(map[string]bool, len(read))
		for _, name := range read {
			reading[name] = true
		}
		for _, k := range kids {
			if !armed[k] && !reading[k] {
				read = append(read, k)
			}
		}
		// Before the reads, which arm the children they find: one the
		// listing missed may have been created again since. Every child
		// the hub knows counts, armed or not: one only a refresh found
		// (read without a watch) and deleted since has no data watch to
		// report it. An armed one's data watch reports the deletion too;
		// the hub delivers it once.
		for _, key := range h.keysNotIn(present) {
			h.delete(key)
		}
	}
	kvs, err := readChildren(read, true)
	if err != nil {
		return err
	}
	found := make(map[string]bool, len(kvs))
	for _, kv := range kvs {
		found[kv.Key] = true
		h.put(kv)
	}
	// A child gone by its read (the hub ignores one it never delivered).
	for _, name := range read {
		if key := path.Join(dir, name); !found[key] {
			h.delete(key)
		}
	}
	return nil
}

// refresh lists dir afresh for the subscribers waiting for it, without
// setting watches (those set stay as they are: a child the listing finds
// that no watch covers was created after the directory's watch was set,
// which therefore fires and arms it). It runs in the watch's goroutine, on
// its connection, so its reads come after every read the hub has applied
// and it never hands a subscriber an older version.
func (s *Store) refresh(c *conn, dir string, h *hub, readChildren func([]string, bool) ([]coord.KV, error)) error {
	to := h.takeWaiting()
	if len(to) == 0 {
		return nil
	}
	kids, _, err := c.Children(s.abs(dir))
	if err != nil && !errors.Is(err, zk.ErrNoNode) {
		return mapErr("watch refresh", dir, err)
	}
	list, err := readChildren(kids, false)
	if err != nil {
		return err
	}
	h.resync(list, to)
	return nil
}
