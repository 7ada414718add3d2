package task

import (
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
	return !f.bad && q.matchTypeKey(id, f.typ, f.key)
}

// factCache holds the facts of the unfinished tasks this Store has read,
// by task id. It holds only ids of the last listing of the unfinished
// tasks (and those read since), so it is as large as that directory.
//
// A task's record moves from the unfinished directory to the finished one
// and never back, but an id can be used again: a schedule names its tasks'
// ids (from the tick, or from the request id of a trigger), and once the
// first task's finished record is pruned (keep-last) the same id can be
// created again. The cache forgets an id as soon as a page's listing does
// not hold it, and a page reads the records of its rows (each read
// updates the facts); an id that finished and came back between two pages
// would still be ordered by its predecessor's creation time, perhaps off
// every page. So the facts are renewed by a whole listing (every record)
// once they are factsMaxAge old: that bounds how long such a task can be
// misplaced.
type factCache struct {
	mu sync.Mutex
	// filled is when a whole listing with every record was learnt (zero:
	// never); until then, and once it is maxAge old, a page reads every
	// unfinished record instead of most of them by key.
	filled time.Time
	// maxAge is how long a whole listing's facts hold (0: factsMaxAge).
	maxAge time.Duration
	by     map[string]facts
}

// factsMaxAge is how long the facts of a whole listing hold.
const factsMaxAge = time.Minute

// fresh reports whether the facts hold. Called with mu held.
func (c *factCache) fresh() bool {
	maxAge := c.maxAge
	if maxAge == 0 {
		maxAge = factsMaxAge
	}
	return !c.filled.IsZero() && time.Since(c.filled) < maxAge
}

// ready reports whether the facts hold (see fresh).
func (c *factCache) ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fresh()
}

// reset replaces the cache with a whole listing's facts.
func (c *factCache) reset(by map[string]facts) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.by, c.filled = by, time.Now()
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
// every id not among ids (ids is a whole listing). ok is false when the
// facts do not hold (see fresh).
func (c *factCache) lookup(ids []string) (known []facts, unknown []int, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.fresh() {
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
