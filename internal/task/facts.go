package task

import (
	"strings"
	"sync"
	"time"
)

// facts are the fields of an unfinished task's record that never change
// while it is unfinished: a page of the newest orders the unfinished
// tasks and filters them by type and key with these alone, and reads the
// records of its page only. Without them a page read every unfinished
// record (on ZooKeeper one read each: 1000 reads a page with 1000
// running tasks).
type facts struct {
	created  time.Time
	typ, key string
	// bad: the key holds no task record (written around taskd).
	bad bool
}

// factsOf is what a decoded record (or a record that fails to decode:
// nil) says.
func factsOf(r *Record) facts {
	if r == nil {
		return facts{bad: true}
	}
	return facts{created: r.Created, typ: r.Type, key: r.Key}
}

// matchFacts is match for the filters that facts answer: type and key
// (the state and the node need the record).
func (q PageQuery) matchFacts(id string, f facts) bool {
	return !f.bad && (q.Type == "" || f.typ == q.Type) &&
		(q.Key == "" || strings.Contains(id, q.Key) || strings.Contains(f.key, q.Key))
}

// factCache holds the facts of the unfinished tasks this Store has read,
// by task id. It holds only ids of the last listing of the unfinished
// tasks (and those read since), so it is as large as that directory.
//
// An id is created once: a task's record moves from the unfinished
// directory to the finished one and never back. Only a schedule names
// its tasks' ids (from the schedule and the tick), and the store refuses
// a second task for a tick while the first one's record exists; so an id
// could come back only after its finished record was collected. Such a
// task would be ordered by the facts of the first one on this taskd's
// pages until one of them reads its record (each read updates the facts).
type factCache struct {
	mu sync.Mutex
	// filled: a whole listing with every record was learnt; before it
	// a page reads every unfinished record instead of most of them one
	// by one.
	filled bool
	by     map[string]facts
}

// ready reports whether the cache was filled.
func (c *factCache) ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.filled
}

// reset replaces the cache with a whole listing's facts.
func (c *factCache) reset(by map[string]facts) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.by, c.filled = by, true
}

// learn records the facts read for id.
func (c *factCache) learn(id string, f facts) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.by == nil {
		c.by = map[string]facts{}
	}
	c.by[id] = f
}

// lookup returns the facts of each id it knows (in ids' order; unknown
// ones are zero) and the indices of the ids it does not know, and forgets
// every id not among ids (ids is a whole listing). ok is false until the
// cache is filled.
func (c *factCache) lookup(ids []string) (known []facts, unknown []int, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.filled {
		return nil, nil, false
	}
	known = make([]facts, len(ids))
	keep := make(map[string]facts, len(ids))
	for i, id := range ids {
		f, ok := c.by[id]
		if !ok {
			unknown = append(unknown, i)
			continue
		}
		known[i] = f
		keep[id] = f
	}
	c.by = keep
	return known, unknown, true
}
