package task

import (
	"context"
	"encoding/json"
	"errors"
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

// pageReaders bounds the concurrent reads of a page's finished records:
// a console page (50) is one round of reads.
const pageReaders = 64

// ListPage returns a page of the tasks that match q, newest first. The
// unfinished tasks are one directory read (they are few); the finished
// ones are read from the start of the index (newest first): Offset+Limit entries without a
// filter beyond the state, chunks until as many match with one, and then
// the records of the page only. It answers ErrIndexNotReady until the
// index is complete (List reads everything instead).
//
// The reads that do not depend on each other go out together: the
// unfinished tasks, the first read of the index and (without a filter)
// its count, then every record of the page. On a store busy with writes
// each read waits its turn (etcd's linearizable reads wait for the
// writes before them to apply): a page costs two such waits, not one a
// read.
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
	var (
		activeKVs []coord.KV
		first     []coord.KV
		firstMore bool
		count     int
	)
	g, gctx := errgroup.WithContext(ctx)
	if active {
		g.Go(func() (err error) {
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
	// rows are the candidates, each a record (unfinished) or an index
	// entry whose record is read once it is on the page.
	type row struct {
		created time.Time
		id      string
		rec     *Record
	}
	var rows []row
	total, exact := 0, true
	for _, kv := range activeKVs {
		r, err := Decode(kv.Key, kv.Value, kv.Version)
		if errors.Is(err, ErrInvalid) {
			continue // written around taskd: not a task
		}
		if err != nil {
			return nil, err
		}
		if q.match(r, state) {
			rows = append(rows, row{r.Created, r.ID, r})
		}
	}
	total += len(rows)
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
						rows = append(rows, row{created, id, nil})
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
	slices.SortFunc(rows, func(a, b row) int {
		if c := b.created.Compare(a.created); c != 0 {
			return c
		}
		return strings.Compare(b.id, a.id)
	})
	rows = rows[min(q.Offset, len(rows)):]
	rows = rows[:min(q.Limit, len(rows))]
	out := make([]*Record, len(rows))
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(pageReaders)
	for i, rw := range rows {
		if rw.rec != nil {
			out[i] = rw.rec
			continue
		}
		g.Go(func() error {
			key, err := s.layout.DoneKey(rw.id)
			if err != nil {
				return err
			}
			kv, err := s.kv.Get(gctx, key)
			if errors.Is(err, coord.ErrNotFound) {
				return nil // collected since the index was read
			}
			if err != nil {
				return fmt.Errorf("read task %s: %w", rw.id, err)
			}
			r, err := Decode(kv.Key, kv.Value, kv.Version)
			if err == nil {
				out[i] = r
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	// A record deleted since the index was read (collected with its
	// entry) is neither a row nor a match.
	n := len(out)
	out = slices.DeleteFunc(out, func(r *Record) bool { return r == nil })
	total -= n - len(out)
	return &Page{Records: out, Total: total, TotalExact: exact}, nil
}
