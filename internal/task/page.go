package task

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/keys"
	"golang.org/x/sync/errgroup"
)

// PageQuery asks for one page of the tasks, newest (by creation) first.
type PageQuery struct {
	Filter
	// Node keeps the tasks whose runner or pinned node is Node.
	Node string
	// Key keeps the tasks whose id or concurrency key contains Key.
	Key string
	// Offset skips that many matches; Limit (> 0) is the page size.
	Offset, Limit int
}

// Page is one page of tasks and the number of matches.
type Page struct {
	Records []*Record
	// Total is the number of matches. It is exact when TotalExact; else
	// a filter beyond the state left finished tasks unread and Total
	// counts the matches found, at least Offset+len(Records), and more
	// may exist.
	Total      int
	TotalExact bool
}

// scanChunk is how many index entries a filtered page reads at a time.
const scanChunk = 500

// ListPage returns a page of the tasks that match q, newest first. The
// unfinished tasks are a listing of their keys, ordered and filtered (by
// type and key) by facts this Store keeps of each (see facts): a page
// reads the records of its rows and of the tasks created since the last
// page, not every record. The first page, and a page that filters by
// state or node, reads every unfinished record. The finished ones are
// read from the start of the index (newest first): Offset+Limit entries
// without a filter beyond the state, chunks until as many match with
// one, and then the records of the page only. It answers
// ErrIndexNotReady until the index is complete (List reads everything
// instead).
//
// The reads that do not depend on each other go out together: the
// unfinished tasks, the first read of the index and (without a filter)
// its count, then every record of the page. On a store busy with writes
// each read waits its turn (etcd's linearizable reads wait for the
// writes before them to apply): a page costs two such waits, not one a
// read (three when it reads the facts of new tasks).
func (s *Store) ListPage(ctx context.Context, q PageQuery) (*Page, error) {
	active, done, state, err := s.parseFilter(q.Filter)
	if err != nil {
		return nil, err
	}
	if q.Limit <= 0 || q.Offset < 0 {
		return nil, fmt.Errorf("%w: page limit %d offset %d", ErrInvalid, q.Limit, q.Offset)
	}
	if q.Node != "" {
		if err := keys.ValidName(q.Node); err != nil {
			return nil, err
		}
	}
	if done {
		if ok, err := s.IndexReady(ctx); err != nil {
			return nil, err
		} else if !ok {
			return nil, ErrIndexNotReady
		}
	}
	need := q.Offset + q.Limit
	plain := q.Type == "" && q.Node == "" && q.Key == "" && state == ""
	chunk := need
	if !plain {
		chunk = max(need, scanChunk)
	}
	// byFacts: the unfinished tasks can be ordered and filtered by their
	// facts (see facts); a page then lists their keys and reads the
	// records of its rows, not every record. The facts fill at the first
	// page, which reads every record.
	byFacts := active && state == "" && q.Node == ""
	var (
		activeKVs  []coord.KV
		activeKeys []string
		listed     bool
		first      []coord.KV
		firstMore  bool
		count      int
	)
	g, gctx := errgroup.WithContext(ctx)
	if active {
		g.Go(func() (err error) {
			if byFacts && s.facts.ready() {
				if activeKeys, err = s.kv.Keys(gctx, s.layout.ActiveDir()); err != nil {
					return fmt.Errorf("list tasks: %w", err)
				}
				listed = true
				return nil
			}
			if activeKVs, err = s.kv.List(gctx, s.layout.ActiveDir()); err != nil {
				return fmt.Errorf("list tasks: %w", err)
			}
			return nil
		})
	}
	if done {
		g.Go(func() (err error) {
			if first, firstMore, err = s.kv.ListBelow(gctx, s.layout.IndexDir(), "", chunk); err != nil {
				return fmt.Errorf("read the finished-task index: %w", err)
			}
			return nil
		})
		if plain {
			// Needed when more than a page is stored; read beside the
			// page rather than after it.
			g.Go(func() (err error) {
				if count, err = s.kv.CountBelow(gctx, s.layout.IndexDir()); err != nil {
					return fmt.Errorf("count the finished tasks: %w", err)
				}
				return nil
			})
		}
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	// rows are the candidates, each a record or an index entry or an
	// unfinished task's facts, whose record is read once it is on the
	// page.
	var rows []pageRow
	if listed {
		var ok bool
		if rows, ok, err = s.unfinishedByFacts(ctx, q, activeKeys); err != nil {
			return nil, err
		}
		if !ok {
			if activeKVs, err = s.kv.List(ctx, s.layout.ActiveDir()); err != nil {
				return nil, fmt.Errorf("list tasks: %w", err)
			}
			listed = false
		}
	}
	if active && !listed {
		learnt := make(map[string]facts, len(activeKVs))
		for _, kv := range activeKVs {
			id, err := keys.Child(s.layout.ActiveDir(), kv.Key, keys.ValidTaskID)
			if err != nil {
				continue // written around taskd: not a task
			}
			r, err := Decode(kv.Key, kv.Value, kv.Version)
			if err != nil {
				// Written around taskd: not a task, and known as such, so
				// that the next page does not read it again.
				learnt[id] = factsOf(nil)
				continue
			}
			learnt[id] = factsOf(r)
			if q.match(r, state) {
				rows = append(rows, pageRow{created: r.Created, id: r.ID, rec: r})
			}
		}
		s.facts.reset(learnt)
	}
	total, exact := len(rows), true
	if done {
		found, after := 0, ""
		kvs, more := first, firstMore
		for {
			for _, kv := range kvs {
				created, id, err := s.layout.ParseIndexKey(kv.Key)
				if err != nil {
					continue // written around taskd
				}
				var e indexEntry
				if !plain && json.Unmarshal(kv.Value, &e) != nil {
					continue
				}
				if plain || q.matchEntry(id, e, state) {
					found++
					if found <= need {
						rows = append(rows, pageRow{created: created, id: id})
					}
				}
			}
			if len(kvs) > 0 {
				after = kvs[len(kvs)-1].Key
			}
			if !more {
				total += found
				break
			}
			if found >= need {
				if plain {
					total += max(count, found)
				} else {
					total, exact = total+found, false
				}
				break
			}
			var err error
			if kvs, more, err = s.kv.ListBelow(ctx, s.layout.IndexDir(), after, chunk); err != nil {
				return nil, fmt.Errorf("read the finished-task index: %w", err)
			}
		}
	}
	slices.SortFunc(rows, func(a, b pageRow) int {
		if c := b.created.Compare(a.created); c != 0 {
			return c
		}
		return strings.Compare(b.id, a.id)
	})
	rows = rows[min(q.Offset, len(rows)):]
	rows = rows[:min(q.Limit, len(rows))]
	out, err := s.readRows(ctx, q, rows)
	if err != nil {
		return nil, err
	}
	// A record deleted since the index was read (collected with its
	// entry), or an unfinished one that finished since it was listed, is
	// neither a row nor a match.
	n := len(out)
	out = slices.DeleteFunc(out, func(r *Record) bool { return r == nil })
	total -= n - len(out)
	return &Page{Records: out, Total: total, TotalExact: exact}, nil
}

// pageRow is a candidate row of a page: its record, or what orders it
// until its record is read (an index entry's or the facts' creation time).
type pageRow struct {
	created time.Time
	id      string
	rec     *Record
	// active: an unfinished task known by its facts; else a finished one.
	active bool
}

// maxFactReads bounds the unfinished records a page reads by key for
// their facts (tasks created since the last page); with more it lists
// them all in one read.
const maxFactReads = 256

// unfinishedByFacts is the unfinished part of a page from a listing of
// their keys: the rows that match q (type and key), ordered by facts,
// with the record of each task whose facts had to be read. ok is false
// when the facts cannot answer: the caller lists the records.
func (s *Store) unfinishedByFacts(ctx context.Context, q PageQuery, listing []string) (rows []pageRow, ok bool, err error) {
	ids := make([]string, 0, len(listing))
	valid := make([]string, 0, len(listing))
	for _, key := range listing {
		id, err := keys.Child(s.layout.ActiveDir(), key, keys.ValidTaskID)
		if err != nil {
			continue // written around taskd: not a task
		}
		ids, valid = append(ids, id), append(valid, key)
	}
	listing = valid
	known, unknown, ok := s.facts.lookup(ids)
	if !ok || len(unknown) > maxFactReads {
		return nil, false, nil
	}
	recs := make([]*Record, len(ids))
	gone := make([]bool, len(ids))
	if len(unknown) > 0 {
		names := make([]string, len(unknown))
		for j, i := range unknown {
			names[j] = listing[i]
		}
		kvs, err := s.kv.GetMany(ctx, names)
		if err != nil {
			return nil, false, fmt.Errorf("read %d new tasks: %w", len(names), err)
		}
		for j, i := range unknown {
			recs[i], gone[i] = s.decodeUnfinished(ids[i], kvs[j])
			known[i] = factsOf(recs[i])
		}
	}
	for i, id := range ids {
		if !gone[i] && q.matchFacts(id, known[i]) {
			rows = append(rows, pageRow{created: known[i].created, id: id, rec: recs[i], active: recs[i] == nil})
		}
	}
	return rows, true, nil
}

// decodeUnfinished decodes an unfinished task's record read for a page and
// learns its facts: nil if the key holds no record taskd wrote (a page
// skips it rather than fail); gone if the task is no longer unfinished
// (kv is absent).
func (s *Store) decodeUnfinished(id string, kv coord.KV) (r *Record, gone bool) {
	if kv.Key == "" {
		return nil, true // finished since the listing
	}
	r, err := Decode(kv.Key, kv.Value, kv.Version)
	if err != nil {
		r = nil // written around taskd: not a task
	}
	s.facts.learn(id, factsOf(r))
	return r, false
}

// readRows returns the records of a page's rows: a row's own, or one read
// in a single round of reads (GetMany); nil where a row is no longer
// there (collected, or finished since it was listed as unfinished) or no
// longer matches q.
func (s *Store) readRows(ctx context.Context, q PageQuery, rows []pageRow) ([]*Record, error) {
	out := make([]*Record, len(rows))
	var names []string
	var at []int
	for i, rw := range rows {
		if rw.rec != nil {
			out[i] = rw.rec
			continue
		}
		key, err := s.layout.DoneKey(rw.id)
		if rw.active {
			key, err = s.layout.ActiveKey(rw.id)
		}
		if err != nil {
			return nil, err
		}
		names, at = append(names, key), append(at, i)
	}
	if len(names) == 0 {
		return out, nil
	}
	kvs, err := s.kv.GetMany(ctx, names)
	if err != nil {
		return nil, fmt.Errorf("read the %d tasks of a page: %w", len(names), err)
	}
	for j, i := range at {
		rw := rows[i]
		if rw.active {
			if r, _ := s.decodeUnfinished(rw.id, kvs[j]); r != nil && q.matchFacts(r.ID, factsOf(r)) {
				out[i] = r
			}
			continue
		}
		if kvs[j].Key == "" {
			continue // collected since the index was read
		}
		if r, err := Decode(kvs[j].Key, kvs[j].Value, kvs[j].Version); err == nil {
			out[i] = r
		}
	}
	return out, nil
}
