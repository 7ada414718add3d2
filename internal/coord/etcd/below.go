package etcd

import (
	"context"
	"fmt"
	"strings"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/coord/internal/backend"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ListBelow implements coord.Store: ranged reads in key order (in which
// etcd stops at the limit; a sorted read would read the whole range
// first), each of at most limit+1 keys; keys at other depths are skipped
// (a caller keeps none there, so one read is the rule).
func (s *Store) ListBelow(ctx context.Context, dir, after string, limit int) ([]coord.KV, bool, error) {
	if limit <= 0 {
		return nil, false, fmt.Errorf("etcd list below %s: limit %d: want > 0", dir, limit)
	}
	prefix := strings.TrimSuffix(dir, "/") + "/"
	end := clientv3.GetPrefixRangeEnd(prefix)
	start := prefix
	if after != "" && after >= start {
		start = after + "\x00" // the least key after it
	}
	var out []coord.KV
	for start < end {
		resp, err := s.cli.Get(ctx, start, clientv3.WithRange(end), clientv3.WithLimit(int64(limit+1)))
		if err != nil {
			return nil, false, wrap("list below", dir, err)
		}
		for _, k := range resp.Kvs {
			if !backend.IsGrandchild(dir, string(k.Key)) {
				continue
			}
			if len(out) == limit {
				return out, true, nil
			}
			out = append(out, kvOf(k))
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return out, false, nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	return out, false, nil
}

// CountBelow implements coord.Store with a count-only read of dir's range.
func (s *Store) CountBelow(ctx context.Context, dir string) (int, error) {
	resp, err := s.cli.Get(ctx, strings.TrimSuffix(dir, "/")+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, wrap("count", dir, err)
	}
	return int(resp.Count), nil
}
