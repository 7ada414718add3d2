package zk

import (
	"context"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"

	"github.com/go-zookeeper/zk"
	"github.com/taskd/taskd/internal/coord"
)

// ListBelow implements coord.Store. ZooKeeper has no ranged read: it
// lists dir's children, then, from the first child on, the names of one
// child after another until it has limit+1 keys after after, and reads
// the first limit of them (together, pipelined on the connection).
func (s *Store) ListBelow(ctx context.Context, dir, after string, limit int) ([]coord.KV, bool, error) {
	if limit <= 0 {
		return nil, false, fmt.Errorf("zookeeper list below %s: limit %d: want > 0", dir, limit)
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
		return nil, false, mapErr("list below", dir, err)
	}
	sort.Strings(top)
	var keys []string
	for _, a := range top {
		if err := ctx.Err(); err != nil {
			return nil, false, err
		}
		sub := dir + "/" + a
		if after != "" && sub+"/" < after && !strings.HasPrefix(after, sub+"/") {
			continue // every key of this child sorts before after
		}
		names, _, err := c.Children(s.abs(sub))
		if errors.Is(err, zk.ErrNoNode) {
			continue // deleted between the two reads
		}
		if err != nil {
			return nil, false, mapErr("list below", sub, err)
		}
		sort.Strings(names)
		for _, b := range names {
			key := sub + "/" + b
			if after != "" && key <= after {
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

// CountBelow implements coord.Store: the children of dir, and the number of
// children in each one's stat, read together.
func (s *Store) CountBelow(ctx context.Context, dir string) (int, error) {
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
	err = each(len(top), func(i int) error {
		ok, st, err := c.Exists(s.abs(path.Join(dir, top[i])))
		if err != nil {
			return mapErr("count", dir, err)
		}
		if ok {
			counts[i] = int(st.NumChildren)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, k := range counts {
		n += k
	}
	return n, nil
}
