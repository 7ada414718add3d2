package zk

import (
	"context"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
	"sync"

	"github.com/go-zookeeper/zk"
	"github.com/taskd/taskd/internal/coord"
)

// ListTail implements coord.Store. ZooKeeper has no ranged read: it lists
// dir's children, then, from the last child down, the names of one child
// after another until it has limit+1 keys before before, and reads the
// first limit of them (together, pipelined on the connection).
func (s *Store) ListTail(ctx context.Context, dir, before string, limit int) ([]coord.KV, bool, error) {
	if limit <= 0 {
		return nil, false, fmt.Errorf("zookeeper list tail %s: limit %d: want > 0", dir, limit)
	}
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	c, err := s.conn(ctx)
	if err != nil {
		return nil, false, err
	}
	dir = strings.TrimSuffix(dir, "/")
	top, _, err := c.Children(s.abs(dir))
	if errors.Is(err, zk.ErrNoNode) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, mapErr("list tail", dir, err)
	}
	sort.Sort(sort.Reverse(sort.StringSlice(top)))
	var keys []string
	for _, a := range top {
		if err := ctx.Err(); err != nil {
			return nil, false, err
		}
		sub := dir + "/" + a
		if before != "" && sub+"/" >= before && !strings.HasPrefix(before, sub+"/") {
			continue // every key of this child sorts at or after before
		}
		names, _, err := c.Children(s.abs(sub))
		if errors.Is(err, zk.ErrNoNode) {
			continue // deleted between the two reads
		}
		if err != nil {
			return nil, false, mapErr("list tail", sub, err)
		}
		sort.Sort(sort.Reverse(sort.StringSlice(names)))
		for _, b := range names {
			key := sub + "/" + b
			if before != "" && key >= before {
				continue
			}
			keys = append(keys, key)
			if len(keys) > limit {
				break
			}
		}
		if len(keys) > limit {
			break
		}
	}
	more := len(keys) > limit
	if more {
		keys = keys[:limit]
	}
	kvs, err := s.getAll(c, keys)
	return kvs, more, err
}

// getAll reads keys together, listParallel at a time, in order; a key
// deleted meanwhile is left out.
func (s *Store) getAll(c *conn, keys []string) ([]coord.KV, error) {
	kvs := make([]coord.KV, len(keys))
	found := make([]bool, len(keys))
	errs := make([]error, len(keys))
	sem := make(chan struct{}, listParallel)
	var wg sync.WaitGroup
	for i, key := range keys {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			data, st, err := c.Get(s.abs(key))
			switch {
			case errors.Is(err, zk.ErrNoNode):
			case err != nil:
				errs[i] = mapErr("get", key, err)
			default:
				kvs[i], found[i] = s.kv(key, data, st), true
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	out := make([]coord.KV, 0, len(keys))
	for i := range kvs {
		if found[i] {
			out = append(out, kvs[i])
		}
	}
	return out, nil
}

// CountTail implements coord.Store: the children of dir, and the number of
// children in each one's stat, read together.
func (s *Store) CountTail(ctx context.Context, dir string) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	c, err := s.conn(ctx)
	if err != nil {
		return 0, err
	}
	top, _, err := c.Children(s.abs(dir))
	if errors.Is(err, zk.ErrNoNode) {
		return 0, nil
	}
	if err != nil {
		return 0, mapErr("count", dir, err)
	}
	counts := make([]int, len(top))
	errs := make([]error, len(top))
	sem := make(chan struct{}, listParallel)
	var wg sync.WaitGroup
	for i, a := range top {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			ok, st, err := c.Exists(s.abs(path.Join(dir, a)))
			switch {
			case err != nil:
				errs[i] = mapErr("count", dir, err)
			case ok:
				counts[i] = int(st.NumChildren)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	n := 0
	for _, k := range counts {
		n += k
	}
	return n, nil
}
