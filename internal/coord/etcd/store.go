// Package etcd implements coord.Store on etcd v3: an external cluster through
// client/v3, or a server embedded in taskd (embed.go).
//
// Versions are etcd mod revisions, which are unique across the whole store, so
// conditions here are safe against delete-and-recreate; the coord contract
// still only promises that for keys that are never deleted.
package etcd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/taskd/taskd/internal/backoff"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/coord/internal/backend"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type mvccKV = mvccpb.KeyValue

// Store is a coord.Store backed by an etcd client.
type Store struct {
	cli *clientv3.Client
	log *slog.Logger
	// observe, when set, is told each heartbeat's lateness.
	observe atomic.Pointer[coord.HeartbeatObserver]
	ka      *keepAlive // the sessions' lease keep-alive stream
}

var (
	_ coord.Store             = (*Store)(nil)
	_ coord.HeartbeatReporter = (*Store)(nil)
)

// ObserveHeartbeats implements coord.HeartbeatReporter.
func (s *Store) ObserveHeartbeats(f coord.HeartbeatObserver) { s.observe.Store(&f) }

// Close closes the client.
func (s *Store) Close() error { return s.cli.Close() }

func kvOf(k *mvccKV) coord.KV {
	return coord.KV{Key: string(k.Key), Value: k.Value, Version: k.ModRevision, CreateOrder: k.CreateRevision, Ephemeral: k.Lease != 0}
}

// wrap maps client errors to coord sentinels, keeping the cause.
func wrap(op, key string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("etcd %s %s: %w", op, key, err)
	}
	if transient(err) {
		return fmt.Errorf("etcd %s %s: %w: %w", op, key, coord.ErrUnavailable, err)
	}
	return fmt.Errorf("etcd %s %s: %w", op, key, err)
}

// transient reports whether err is an outage or a timeout that the same
// request may get past later (wrap marks it coord.ErrUnavailable).
func transient(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || unavailable(err) ||
		errors.Is(err, rpctypes.ErrNoLeader) || errors.Is(err, rpctypes.ErrTimeout) ||
		errors.Is(err, rpctypes.ErrAuthOldRevision)
}

// unavailable reports whether err carries the gRPC code Unavailable: a
// transport error (status error, possibly wrapped) or an etcd server error
// of that code ("no leader"...).
func unavailable(err error) bool {
	if status.Code(err) == codes.Unavailable {
		return true
	}
	var ee rpctypes.EtcdError
	return errors.As(err, &ee) && ee.Code() == codes.Unavailable
}

// Get implements coord.Store.
func (s *Store) Get(ctx context.Context, key string) (coord.KV, error) {
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return coord.KV{}, wrap("get", key, err)
	}
	if len(resp.Kvs) == 0 {
		return coord.KV{}, fmt.Errorf("%s: %w", key, coord.ErrNotFound)
	}
	return kvOf(resp.Kvs[0]), nil
}

// GetMany implements coord.Store: read-only transactions of at most
// maxTxnReads reads, sent together. The client retries a Range that
// meets an unavailable server (a leader change) but never a Txn; a read
// is safe to repeat, so a transaction is tried again here, getManyTries
// times at most.
func (s *Store) GetMany(ctx context.Context, keys []string) ([]coord.KV, error) {
	kvs := make([]coord.KV, len(keys))
	g, gctx := errgroup.WithContext(ctx)
	for from := 0; from < len(keys); from += maxTxnReads {
		chunk := keys[from:min(from+maxTxnReads, len(keys))]
		g.Go(func() error {
			ops := make([]clientv3.Op, len(chunk))
			for i, k := range chunk {
				ops[i] = clientv3.OpGet(k)
			}
			resp, err := s.readTxn(gctx, ops)
			if err != nil {
				return wrap("get", chunk[0], err)
			}
			for i, r := range resp.Responses {
				if rr := r.GetResponseRange(); rr != nil && len(rr.Kvs) > 0 {
					kvs[from+i] = kvOf(rr.Kvs[0])
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return kvs, nil
}

// maxTxnReads is how many reads one transaction of GetMany holds: etcd's
// default --max-txn-ops (an external etcd must not be set lower).
const maxTxnReads = 128

// getManyTries bounds the tries of one read-only transaction; the waits
// between them double from getManyWait.
const (
	getManyTries = 4
	getManyWait  = 50 * time.Millisecond
)

// readTxn commits a transaction of reads, again after an unavailable
// server while ctx lasts.
func (s *Store) readTxn(ctx context.Context, ops []clientv3.Op) (*clientv3.TxnResponse, error) {
	wait := getManyWait
	for try := 1; ; try++ {
		resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
		if err == nil || try == getManyTries || !unavailable(err) {
			return resp, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w (after: %w)", ctx.Err(), err)
		case <-t.C:
		}
		wait *= 2
	}
}

// List implements coord.Store.
func (s *Store) List(ctx context.Context, dir string) ([]coord.KV, error) {
	list, _, err := s.list(ctx, dir)
	return list, err
}

// Keys implements coord.Store with a keys-only read of dir's range.
func (s *Store) Keys(ctx context.Context, dir string) ([]string, error) {
	prefix := strings.TrimSuffix(dir, "/") + "/"
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, wrap("keys", dir, err)
	}
	out := make([]string, 0, len(resp.Kvs))
	for _, k := range resp.Kvs {
		if backend.IsChild(dir, string(k.Key)) {
			out = append(out, string(k.Key))
		}
	}
	return out, nil
}

func (s *Store) list(ctx context.Context, dir string) ([]coord.KV, int64, error) {
	prefix := strings.TrimSuffix(dir, "/") + "/"
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, wrap("list", dir, err)
	}
	out := make([]coord.KV, 0, len(resp.Kvs))
	for _, k := range resp.Kvs {
		if backend.IsChild(dir, string(k.Key)) {
			out = append(out, kvOf(k))
		}
	}
	return out, resp.Header.Revision, nil
}

func leaseOf(sess coord.Session) (clientv3.LeaseID, error) {
	if sess == nil {
		return clientv3.NoLease, nil
	}
	ls, ok := sess.(*session)
	if !ok {
		return 0, fmt.Errorf("etcd: session %s belongs to another backend", sess.ID())
	}
	return ls.id, nil
}

// Create implements coord.Store.
func (s *Store) Create(ctx context.Context, key string, value []byte, opts ...coord.OpOption) (coord.KV, error) {
	o := backend.ApplyOptions(opts)
	lease, err := leaseOf(o.Session)
	if err != nil {
		return coord.KV{}, err
	}
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(value), clientv3.WithLease(lease))).
		Commit()
	if err != nil {
		return coord.KV{}, wrap("create", key, err)
	}
	if !resp.Succeeded {
		return coord.KV{}, fmt.Errorf("%s: %w", key, coord.ErrExists)
	}
	rev := resp.Header.Revision
	return coord.KV{Key: key, Value: value, Version: rev, CreateOrder: rev, Ephemeral: lease != clientv3.NoLease}, nil
}

// Update implements coord.Store.
func (s *Store) Update(ctx context.Context, key string, value []byte, ifVersion int64) (coord.KV, error) {
	cmp := clientv3.Compare(clientv3.ModRevision(key), "=", ifVersion)
	if ifVersion == 0 {
		cmp = clientv3.Compare(clientv3.CreateRevision(key), ">", 0)
	}
	resp, err := s.cli.Txn(ctx).If(cmp).
		Then(clientv3.OpPut(key, string(value), clientv3.WithIgnoreLease()), clientv3.OpGet(key)).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return coord.KV{}, wrap("update", key, err)
	}
	if !resp.Succeeded {
		if len(resp.Responses[0].GetResponseRange().Kvs) == 0 {
			return coord.KV{}, fmt.Errorf("%s: %w", key, coord.ErrNotFound)
		}
		return coord.KV{}, fmt.Errorf("%s: version is not %d: %w", key, ifVersion, coord.ErrConflict)
	}
	kvs := resp.Responses[1].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return coord.KV{}, fmt.Errorf("%s: vanished after update: %w", key, coord.ErrConflict)
	}
	return kvOf(kvs[0]), nil
}

// Delete implements coord.Store.
func (s *Store) Delete(ctx context.Context, key string, ifVersion int64) error {
	cmp := clientv3.Compare(clientv3.ModRevision(key), "=", ifVersion)
	if ifVersion == 0 {
		cmp = clientv3.Compare(clientv3.CreateRevision(key), ">", 0)
	}
	resp, err := s.cli.Txn(ctx).If(cmp).Then(clientv3.OpDelete(key)).Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return wrap("delete", key, err)
	}
	if !resp.Succeeded {
		if len(resp.Responses[0].GetResponseRange().Kvs) == 0 {
			return fmt.Errorf("%s: %w", key, coord.ErrNotFound)
		}
		return fmt.Errorf("%s: version is not %d: %w", key, ifVersion, coord.ErrConflict)
	}
	return nil
}

// Txn implements coord.Store.
func (s *Store) Txn(ctx context.Context, conds []coord.Cond, ops []coord.Op) ([]int64, error) {
	cmps := make([]clientv3.Cmp, 0, len(conds)+len(ops))
	for _, c := range conds {
		if c.Version == 0 {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(c.Key), "=", 0))
		} else {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(c.Key), "=", c.Version))
		}
	}
	thens := make([]clientv3.Op, 0, len(ops))
	for _, op := range ops {
		switch op.Type {
		case coord.OpCreate:
			lease, err := leaseOf(op.Session)
			if err != nil {
				return nil, err
			}
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(op.Key), "=", 0))
			thens = append(thens, clientv3.OpPut(op.Key, string(op.Value), clientv3.WithLease(lease)))
		case coord.OpPut:
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(op.Key), ">", 0))
			thens = append(thens, clientv3.OpPut(op.Key, string(op.Value), clientv3.WithIgnoreLease()))
		case coord.OpDelete:
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(op.Key), ">", 0))
			thens = append(thens, clientv3.OpDelete(op.Key))
		default:
			return nil, fmt.Errorf("etcd txn: unknown op type %d", op.Type)
		}
	}
	resp, err := s.cli.Txn(ctx).If(cmps...).Then(thens...).Commit()
	if err != nil {
		return nil, wrap("txn", "", err)
	}
	if !resp.Succeeded {
		return nil, fmt.Errorf("txn: %w", coord.ErrConflict)
	}
	vers := make([]int64, len(ops))
	for i, op := range ops {
		if op.Type != coord.OpDelete {
			vers[i] = resp.Header.Revision
		}
	}
	return vers, nil
}

// Watch implements coord.Store. It lists dir, then watches from the listing's
// revision; the etcd client resumes the watch after reconnects from the last
// revision it saw. If the revision was compacted away, or the member lost its
// leader, it lists again and delivers the difference.
func (s *Store) Watch(ctx context.Context, dir string) *coord.Watcher {
	return coord.StartWatcher(ctx, func(ctx context.Context, out chan<- coord.Event) { s.watch(ctx, dir, out) })
}

// watch lists and follows dir until ctx ends.
func (s *Store) watch(ctx context.Context, dir string, out chan<- coord.Event) {
	cache := backend.NewWatchCache(out)
	retry := backoff.New(50*time.Millisecond, 2*time.Second)
	for ctx.Err() == nil {
		list, rev, err := s.list(ctx, dir)
		if err != nil {
			s.log.Debug("watch list failed", "dir", dir, "err", err)
			if retry.Wait(ctx) != nil {
				return
			}
			continue
		}
		retry.Reset()
		if !cache.Resync(ctx, list) {
			return
		}
		if !s.follow(ctx, dir, rev, cache) {
			return
		}
	}
}

// follow applies watch events until the watch breaks (returns true: resync)
// or ctx ends (returns false).
func (s *Store) follow(ctx context.Context, dir string, rev int64, cache *backend.WatchCache) bool {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	prefix := strings.TrimSuffix(dir, "/") + "/"
	for wr := range s.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if err := wr.Err(); err != nil {
			s.log.Debug("watch broke, resyncing", "dir", dir, "err", err)
			return ctx.Err() == nil
		}
		for _, ev := range wr.Events {
			key := string(ev.Kv.Key)
			if !backend.IsChild(dir, key) {
				continue
			}
			ok := true
			if ev.Type == clientv3.EventTypeDelete {
				ok = cache.Delete(ctx, key)
			} else {
				ok = cache.Put(ctx, kvOf(ev.Kv))
			}
			if !ok {
				return false
			}
		}
	}
	return ctx.Err() == nil
}

// session is an etcd lease with a heartbeat that records confirmed contact.
type session struct {
	*backend.SessionCore
	id     clientv3.LeaseID
	cli    *clientv3.Client
	ka     *keepAlive
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// keepAlive is the store's lease keep-alive stream, which every session's
// heartbeat uses in turn and which outlives the sessions: nil until the
// first renewal and after a failed one.
type keepAlive struct {
	cli    *clientv3.Client
	mu     sync.Mutex // one renewal on the stream at a time
	st     pb.Lease_LeaseKeepAliveClient
	cancel context.CancelFunc
}

// NewSession grants a lease of timeout (rounded up to whole seconds, as etcd
// counts TTLs in seconds; the lease never outlives the local deadline's basis
// by less than timeout).
func (s *Store) NewSession(ctx context.Context, timeout time.Duration) (coord.Session, error) {
	ttl := int64((timeout + time.Second - 1) / time.Second)
	sent := time.Now()
	resp, err := s.cli.Grant(ctx, ttl)
	if err != nil {
		return nil, wrap("grant lease", "", err)
	}
	hctx, cancel := context.WithCancel(context.Background())
	ls := &session{SessionCore: backend.NewSessionCore(timeout, sent), id: resp.ID, cli: s.cli, ka: s.ka, cancel: cancel}
	if f := s.observe.Load(); f != nil {
		ls.ObserveLateness(*f)
	}
	ls.wg.Add(1)
	go func() {
		defer ls.wg.Done()
		backend.RunHeartbeat(hctx, ls.SessionCore, ls.ping)
	}()
	return ls, nil
}

// ping renews the lease once, on the store's keep-alive stream.
//
// The stream lives from one ping to the next and from one session to the
// next: the etcd client logs in again (Authenticate, a bcrypt check on the
// server) for every stream it opens when it uses a password, so a stream
// per ping (KeepAliveOnce) cost the server a login per node every
// heartbeat, and a stream per session a login per node every new session.
// A ping that fails or runs out of time ends the stream; the next attempt
// opens another. As KeepAliveOnce did, a failed attempt is retried until
// ctx ends.
func (ls *session) ping(ctx context.Context) (bool, error) {
	for {
		ttl, err := ls.ka.renew(ctx, ls.id)
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return true, err
		}
		if err == nil {
			return ttl <= 0, nil
		}
		if ctx.Err() != nil {
			return false, wrap("keep lease alive", ls.ID(), ctx.Err())
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return false, wrap("keep lease alive", ls.ID(), err)
		case <-t.C:
		}
	}
}

// renew sends one keep-alive for lease id on the stream (opened first if
// there is none) and returns the lease's remaining TTL. ctx ending cuts
// the stream; any error ends it.
func (k *keepAlive) renew(ctx context.Context, id clientv3.LeaseID) (int64, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := ctx.Err(); err != nil {
		// Ran out waiting for another session's renewal: leave the
		// stream alone.
		return 0, err
	}
	if k.st == nil {
		sctx, cancel := context.WithCancel(k.cli.Ctx())
		st, err := pb.NewLeaseClient(k.cli.ActiveConnection()).LeaseKeepAlive(sctx)
		if err != nil {
			cancel()
			return 0, rpctypes.Error(err)
		}
		k.st, k.cancel = st, cancel
	}
	stop := context.AfterFunc(ctx, k.cancel)
	defer stop()
	resp, err := k.roundTrip(id)
	if err != nil {
		k.cancel()
		k.st, k.cancel = nil, nil
		return 0, err
	}
	return resp.TTL, nil
}

func (k *keepAlive) roundTrip(id clientv3.LeaseID) (*pb.LeaseKeepAliveResponse, error) {
	if err := k.st.Send(&pb.LeaseKeepAliveRequest{ID: int64(id)}); err != nil {
		return nil, rpctypes.Error(err)
	}
	resp, err := k.st.Recv()
	if err != nil {
		return nil, rpctypes.Error(err)
	}
	if resp.ID != int64(id) {
		return nil, fmt.Errorf("etcd keep-alive of lease %x answered for lease %x", int64(id), resp.ID)
	}
	return resp, nil
}

func (ls *session) ID() string { return fmt.Sprintf("lease-%x", int64(ls.id)) }

// RevokeSession revokes the lease of the session with ID id (as
// session.ID spells it), deleting its keys. A lease already gone is not an
// error: the session has ended either way.
func (s *Store) RevokeSession(ctx context.Context, id string) error {
	hex, ok := strings.CutPrefix(id, "lease-")
	n, err := strconv.ParseInt(hex, 16, 64)
	if !ok || err != nil || n <= 0 {
		return fmt.Errorf("session ID %q is not an etcd lease", id)
	}
	if _, err := s.cli.Revoke(ctx, clientv3.LeaseID(n)); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return wrap("revoke lease", id, err)
	}
	return nil
}

// Close revokes the lease (deleting its keys) and stops the heartbeat.
func (ls *session) Close(ctx context.Context) error {
	ls.cancel()
	ls.wg.Wait()
	ls.End(coord.StateStopped)
	// Short attempts, retried: a raft leader change can drop the proposal
	// without an answer, and one long attempt would then keep the lease
	// (and the keys a successor waits for) alive until ctx ends.
	for {
		actx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		_, err := ls.cli.Revoke(actx, ls.id)
		cancel()
		if err == nil || errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return nil
		}
		select {
		case <-ctx.Done():
			return wrap("revoke lease", ls.ID(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
