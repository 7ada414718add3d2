// Package zk implements coord.Store on a ZooKeeper ensemble with
// github.com/go-zookeeper/zk.
//
// A Store keeps one "base" connection (its own ZooKeeper session) for plain
// reads, writes and watches, and replaces it if that session ever expires.
// Each coord.Session is a separate connection, so that ephemeral keys die with
// exactly the session they were created in.
//
// Session events are taken through the library's event callback, which never
// drops an event, rather than its 6-slot channel, which does once full
// (samuel/go-zookeeper#153). The callback only updates state; it never blocks.
//
// Versions are ZooKeeper data versions plus one, so 0 can mean "absent". They
// restart when a key is deleted and re-created: see the coord package doc.
//
// The library's calls take no context. They are bounded by its receive
// timeout (two thirds of the session timeout) and by Close, which fails every
// pending request.
//
// Security: every connection authenticates with the cluster's digest
// credential before it is used (the library re-sends it after each
// reconnect), and every znode taskd creates, the chroot included, carries an
// ACL that grants all rights to that credential and nothing to anyone else.
// With a TLS configuration (zks://) connections go through crypto/tls: the
// server is verified against the configured CA and the node certificate is
// presented. ZooKeeper still answers exists() for any path without
// checking ACLs, so the existence and stat of taskd's znodes is not secret;
// their data, children and every write are.
package zk

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zookeeper/zk"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/coord/internal/backend"
)

// baseTimeout is the session timeout of the base connection. Its expiry only
// costs a resync of the watches, so it need not match taskd's session timeout.
const baseTimeout = 10 * time.Second

// Config says how to reach an ensemble and who to be there.
type Config struct {
	Servers []string // host:port
	Chroot  string   // "" or "/path": every key lives under it
	// Digest is "user:password" for ZooKeeper digest authentication; the
	// znodes taskd creates are readable and writable with it alone.
	Digest string
	// TLS, when set, dials every server with it (zks://).
	TLS *tls.Config
}

// ErrInsecure: a configuration without the digest credential.
var ErrInsecure = errors.New("zookeeper: insecure configuration")

// Validate checks the configuration.
func (c Config) Validate() error {
	if len(c.Servers) == 0 {
		return errors.New("zookeeper: no servers")
	}
	user, pw, ok := strings.Cut(c.Digest, ":")
	if !ok || user == "" || pw == "" {
		return fmt.Errorf("%w: a digest credential user:password is required (DATA_DIR/pki/secrets.json)", ErrInsecure)
	}
	return nil
}

// Store is a coord.Store on ZooKeeper.
type Store struct {
	servers []string
	chroot  string
	log     *slog.Logger
	digest  []byte
	acl     []zk.ACL
	tls     *tls.Config

	dirs sync.Map // absolute directories known to exist

	hubsMu sync.Mutex
	hubs   map[string]*hub // the shared watch of each watched directory
	// watchReads counts the reads the watches have made.
	watchReads atomic.Int64

	// mu guards base and closed. It is never held across zk.Conn.Close,
	// which waits up to a second for an ensemble that stopped answering.
	mu     sync.Mutex
	base   *conn
	closed bool
	// retiring joins the closes of replaced base connections.
	retiring sync.WaitGroup
	// observe, when set, is told each heartbeat's lateness.
	observe atomic.Pointer[coord.HeartbeatObserver]
}

var _ coord.HeartbeatReporter = (*Store)(nil)

// ObserveHeartbeats implements coord.HeartbeatReporter.
func (s *Store) ObserveHeartbeats(f coord.HeartbeatObserver) { s.observe.Store(&f) }

// errClosed: an operation on a store that was closed.
var errClosed = fmt.Errorf("zookeeper: store closed: %w", coord.ErrUnavailable)

var _ coord.Store = (*Store)(nil)

// conn is one ZooKeeper connection and what its callback has seen.
type conn struct {
	*zk.Conn
	expired   atomic.Bool
	hasSess   chan struct{}
	hasOnce   sync.Once
	onSession func(zk.State)

	mu     sync.Mutex
	server *readConn // the library's connection to its current server
}

// readConn is a connection to a server that remembers when it last read
// something: a busy connection whose answers keep coming is slow, not
// hung.
type readConn struct {
	net.Conn
	last atomic.Int64 // sinceEpoch of the latest read that returned data
}

// epoch anchors readConn's times on the monotonic clock: a step of the
// wall clock must not make a hung server look busy, or a busy one hung.
var epoch = time.Now()

func sinceEpoch(t time.Time) int64 { return int64(t.Sub(epoch)) }

func (r *readConn) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	if n > 0 {
		r.last.Store(sinceEpoch(time.Now()))
	}
	return n, err
}

// tracked wraps dial so that the connection the library uses now is
// known, for dropQuiet.
func (c *conn) tracked(dial zk.Dialer) zk.Dialer {
	return func(network, address string, timeout time.Duration) (net.Conn, error) {
		nc, err := dial(network, address, timeout)
		if err != nil {
			return nil, err
		}
		rc := &readConn{Conn: nc}
		c.mu.Lock()
		c.server = rc
		c.mu.Unlock()
		return rc, nil
	}
}

// current is the connection to the server the library uses now (nil
// before the first dial).
func (c *conn) current() *readConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.server
}

// dropQuiet closes rc if the library still uses it and it has read
// nothing since t, and says whether it did. The library sees the
// connection fail at once, fails the requests in flight on it (the
// callers' usual "unavailable, outcome unknown") and moves to the next
// server, keeping the session, as when a server dies. Without it, a server
// that stops answering without closing (hung, or cut off by a partition)
// is left only after the library's receive timeout, two thirds of the
// session timeout: for a session, later than the node's local deadline
// (0.6 of it), so the node fenced although the ensemble kept its session.
//
// A connection the library has already replaced is left alone, and so is
// one that read anything since t (its answers are coming, slowly). Under
// TLS the TCP connection is closed, not the TLS one: its close would
// first try to send an alert, which can wait seconds on a dead peer.
func (c *conn) dropQuiet(rc *readConn, t time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rc == nil || c.server != rc || rc.last.Load() > sinceEpoch(t) {
		return false
	}
	nc := rc.Conn
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	nc.Close()
	return true
}

// dial connects and authenticates: it returns once the ensemble has
// accepted the digest credential, which needs a session, so that no request
// goes out on the connection without it (it would find every taskd znode
// closed). With an unreachable ensemble the library gives the credential
// up after one pass over the servers (ErrNoServer: coord.ErrUnavailable);
// ctx ends the wait earlier.
func (s *Store) dial(ctx context.Context, timeout time.Duration, onState func(zk.State)) (*conn, error) {
	c := &conn{hasSess: make(chan struct{}), onSession: onState}
	zc, _, err := zk.Connect(s.servers, timeout,
		zk.WithDialer(c.tracked(s.dialServer)),
		zk.WithHostProvider(newHostProvider()),
		zk.WithLogger(zkLogger{s.log}),
		zk.WithLogInfo(false),
		zk.WithEventCallback(func(ev zk.Event) {
			if ev.Type != zk.EventSession {
				return
			}
			switch ev.State {
			case zk.StateHasSession:
				c.hasOnce.Do(func() { close(c.hasSess) })
			case zk.StateExpired:
				c.expired.Store(true)
			}
			if c.onSession != nil {
				c.onSession(ev.State)
			}
		}))
	if err != nil {
		return nil, fmt.Errorf("zookeeper connect %v: %w", s.servers, err)
	}
	c.Conn = zc
	// The library remembers the credential once it has been accepted and
	// sends it first on every reconnect, before any queued request. The
	// first one is the first request queued on the connection.
	authed := make(chan error, 1)
	go func() { authed <- zc.AddAuth("digest", s.digest) }()
	select {
	case err = <-authed:
	case <-ctx.Done():
		zc.Close() // fails the pending AddAuth
		<-authed
		return nil, fmt.Errorf("zookeeper session on %v: %w: %w", s.servers, coord.ErrUnavailable, ctx.Err())
	}
	if err != nil {
		zc.Close()
		return nil, mapErr("authenticate", "", err)
	}
	return c, nil
}

// dialServer opens a connection to a server; with TLS configured, a TLS
// connection verified against the configured CA and the server's host name,
// handshake included in the library's connect timeout.
func (s *Store) dialServer(network, address string, timeout time.Duration) (net.Conn, error) {
	if s.tls == nil {
		return net.DialTimeout(network, address, timeout)
	}
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	cfg := s.tls.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	return tls.DialWithDialer(&net.Dialer{Timeout: timeout}, network, address, cfg)
}

// Open prepares a store. Connections are made lazily and retried by the
// library, so an unreachable ensemble makes operations fail with
// coord.ErrUnavailable rather than Open.
func Open(cfg Config, log *slog.Logger) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	user, pw, _ := strings.Cut(cfg.Digest, ":")
	return &Store{servers: cfg.Servers, chroot: strings.TrimSuffix(cfg.Chroot, "/"), log: log,
		digest: []byte(cfg.Digest), acl: zk.DigestACL(zk.PermAll, user, pw), tls: cfg.TLS}, nil
}

// Close closes the base connection; operations started afterwards fail with
// coord.ErrUnavailable. Sessions are closed by their owners.
func (s *Store) Close() error {
	s.mu.Lock()
	base := s.base
	s.base, s.closed = nil, true
	s.mu.Unlock()
	if base != nil {
		base.Close()
	}
	s.retiring.Wait()
	return nil
}

// conn returns a live base connection, replacing an expired one. The
// expired one is closed beside the caller, outside the lock, and Close
// joins that.
func (s *Store) conn(ctx context.Context) (*conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errClosed
	}
	if s.base != nil && !s.base.expired.Load() {
		return s.base, nil
	}
	if stale := s.base; stale != nil {
		s.base = nil
		s.retiring.Add(1)
		go func() { defer s.retiring.Done(); stale.Close() }()
	}
	c, err := s.dial(ctx, baseTimeout, nil)
	if err != nil {
		return nil, err
	}
	s.base = c
	return c, nil
}

func (s *Store) abs(key string) string { return s.chroot + key }

func (s *Store) rel(p string) string { return strings.TrimPrefix(p, s.chroot) }

func mapErr(op, key string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, zk.ErrNoNode):
		return fmt.Errorf("zookeeper %s %s: %w", op, key, coord.ErrNotFound)
	case errors.Is(err, zk.ErrNodeExists):
		return fmt.Errorf("zookeeper %s %s: %w", op, key, coord.ErrExists)
	case errors.Is(err, zk.ErrBadVersion), errors.Is(err, zk.ErrNotEmpty):
		return fmt.Errorf("zookeeper %s %s: %w: %w", op, key, coord.ErrConflict, err)
	case errors.Is(err, zk.ErrSessionExpired):
		return fmt.Errorf("zookeeper %s %s: %w: %w", op, key, coord.ErrSessionLost, err)
	case errors.Is(err, zk.ErrNoServer), errors.Is(err, zk.ErrConnectionClosed), errors.Is(err, zk.ErrClosing):
		return fmt.Errorf("zookeeper %s %s: %w: %w", op, key, coord.ErrUnavailable, err)
	case errors.Is(err, zk.ErrNoAuth):
		return fmt.Errorf("zookeeper %s %s: %w (the znode belongs to another credential: is DATA_DIR/pki/secrets.json this cluster's?)", op, key, err)
	}
	return fmt.Errorf("zookeeper %s %s: %w", op, key, err)
}

func (s *Store) kv(key string, data []byte, st *zk.Stat) coord.KV {
	return coord.KV{Key: key, Value: data, Version: int64(st.Version) + 1, CreateOrder: st.Czxid, Ephemeral: st.EphemeralOwner != 0}
}

// Get implements coord.Store.
func (s *Store) Get(ctx context.Context, key string) (coord.KV, error) {
	if err := ctx.Err(); err != nil {
		return coord.KV{}, err
	}
	c, err := s.conn(ctx)
	if err != nil {
		return coord.KV{}, err
	}
	data, st, err := c.Get(s.abs(key))
	if err != nil {
		return coord.KV{}, mapErr("get", key, err)
	}
	return s.kv(key, data, st), nil
}

// List implements coord.Store.
func (s *Store) List(ctx context.Context, dir string) ([]coord.KV, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c, err := s.conn(ctx)
	if err != nil {
		return nil, err
	}
	keys, err := s.children(c, "list", dir)
	if err != nil {
		return nil, err
	}
	return s.getAll(c, keys)
}

// Keys implements coord.Store: the listing List starts with.
func (s *Store) Keys(ctx context.Context, dir string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c, err := s.conn(ctx)
	if err != nil {
		return nil, err
	}
	return s.children(c, "list keys of", dir)
}

// children names dir's children, sorted; none if dir is absent. op names
// the caller's operation in an error.
func (s *Store) children(c *conn, op, dir string) ([]string, error) {
	kids, _, err := c.Children(s.abs(dir))
	if errors.Is(err, zk.ErrNoNode) {
		return nil, nil
	}
	if err != nil {
		return nil, mapErr(op, dir, err)
	}
	sort.Strings(kids)
	keys := make([]string, len(kids))
	for i, k := range kids {
		keys[i] = path.Join(dir, k)
	}
	return keys, nil
}

// GetMany implements coord.Store.
func (s *Store) GetMany(ctx context.Context, keys []string) ([]coord.KV, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c, err := s.conn(ctx)
	if err != nil {
		return nil, err
	}
	return s.getEach(c, keys)
}

// getEach reads keys, kvs[i] keys[i]'s (an empty Key if absent). The
// reads are independent: they are issued together (the client pipelines
// requests on its connection) instead of one round trip after another.
func (s *Store) getEach(c *conn, keys []string) ([]coord.KV, error) {
	kvs := make([]coord.KV, len(keys))
	err := each(len(keys), func(i int) error {
		data, st, err := c.Get(s.abs(keys[i]))
		switch {
		case errors.Is(err, zk.ErrNoNode): // absent, or deleted since a listing
		case err != nil:
			return mapErr("get", keys[i], err)
		default:
			kvs[i] = s.kv(keys[i], data, st)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return kvs, nil
}

// getAll reads keys, in order; a key deleted meanwhile is left out.
func (s *Store) getAll(c *conn, keys []string) ([]coord.KV, error) {
	kvs, err := s.getEach(c, keys)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(kvs, func(kv coord.KV) bool { return kv.Key == "" }), nil
}

// each runs f(0) … f(n-1), listParallel at a time, and joins their errors.
func each(n int, f func(i int) error) error {
	errs := make([]error, n)
	sem := make(chan struct{}, listParallel)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			errs[i] = f(i)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// listParallel bounds the reads one List has in flight.
const listParallel = 32

// ensureParents creates the missing persistent parents of key. A create
// is a write that goes through the ensemble's leader even when the node
// exists, so directories known to exist are remembered and skipped; a
// transaction that still finds one missing forgets it (see Txn).
func (s *Store) ensureParents(c *conn, key string) error {
	dir := path.Dir(s.abs(key))
	if dir == "/" {
		return nil
	}
	if _, ok := s.dirs.Load(dir); ok {
		return nil
	}
	return s.ensureDir(c, dir, true)
}

// ensureDir creates the absolute directory dir, and its missing ancestors
// first. It starts at dir and climbs only while a parent is missing: a new
// shard of an existing directory is one create, where creating the whole
// chain from the root was six writes one after another, for each of the
// 256 shards of the finished tasks on each node (issue 19). With retry, a
// parent found missing is created and dir tried once more.
func (s *Store) ensureDir(c *conn, dir string, retry bool) error {
	_, err := c.Create(dir, nil, 0, s.acl)
	switch {
	case err == nil, errors.Is(err, zk.ErrNodeExists):
		s.dirs.Store(dir, true)
		return nil
	case errors.Is(err, zk.ErrNoNode) && retry && path.Dir(dir) != "/":
		if err := s.ensureDir(c, path.Dir(dir), true); err != nil {
			return err
		}
		return s.ensureDir(c, dir, false)
	}
	return mapErr("create parent", s.rel(dir), err)
}

// sessionConn picks the connection for a write that may bind keys to sess.
func (s *Store) sessionConn(ctx context.Context, sess coord.Session) (*conn, int32, error) {
	if sess == nil {
		c, err := s.conn(ctx)
		return c, 0, err
	}
	zs, ok := sess.(*session)
	if !ok {
		return nil, 0, fmt.Errorf("zookeeper: session %s belongs to another backend", sess.ID())
	}
	return zs.c, zk.FlagEphemeral, nil
}

// Create implements coord.Store.
func (s *Store) Create(ctx context.Context, key string, value []byte, opts ...coord.OpOption) (coord.KV, error) {
	if err := ctx.Err(); err != nil {
		return coord.KV{}, err
	}
	c, flags, err := s.sessionConn(ctx, backend.ApplyOptions(opts).Session)
	if err != nil {
		return coord.KV{}, err
	}
	_, err = c.Create(s.abs(key), value, flags, s.acl)
	if errors.Is(err, zk.ErrNoNode) {
		if err := s.ensureParents(c, key); err != nil {
			return coord.KV{}, err
		}
		_, err = c.Create(s.abs(key), value, flags, s.acl)
	}
	if err != nil {
		return coord.KV{}, mapErr("create", key, err)
	}
	_, st, err := c.Exists(s.abs(key))
	if err != nil {
		return coord.KV{}, mapErr("create", key, err)
	}
	return coord.KV{Key: key, Value: value, Version: 1, CreateOrder: st.Czxid, Ephemeral: flags != 0}, nil
}

func zkVersion(v int64) int32 {
	if v == 0 {
		return -1
	}
	return int32(v - 1)
}

// Update implements coord.Store.
func (s *Store) Update(ctx context.Context, key string, value []byte, ifVersion int64) (coord.KV, error) {
	if err := ctx.Err(); err != nil {
		return coord.KV{}, err
	}
	c, err := s.conn(ctx)
	if err != nil {
		return coord.KV{}, err
	}
	st, err := c.Set(s.abs(key), value, zkVersion(ifVersion))
	if err != nil {
		return coord.KV{}, mapErr("update", key, err)
	}
	return s.kv(key, value, st), nil
}

// Delete implements coord.Store.
func (s *Store) Delete(ctx context.Context, key string, ifVersion int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c, err := s.conn(ctx)
	if err != nil {
		return err
	}
	return mapErr("delete", key, c.Delete(s.abs(key), zkVersion(ifVersion)))
}

// Txn implements coord.Store with a ZooKeeper multi. "Absent" conditions are
// expressed as a create followed by a delete of the same key, which fails if
// the key exists and otherwise leaves nothing behind.
func (s *Store) Txn(ctx context.Context, conds []coord.Cond, ops []coord.Op) ([]int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var sess coord.Session
	for _, op := range ops {
		if op.Session != nil {
			if sess != nil && sess != op.Session {
				return nil, errors.New("zookeeper txn: ops bind keys to two different sessions")
			}
			sess = op.Session
		}
	}
	c, flags, err := s.sessionConn(ctx, sess)
	if err != nil {
		return nil, err
	}
	reqs := make([]any, 0, len(conds)+len(ops))
	for _, cd := range conds {
		p := s.abs(cd.Key)
		if cd.Version == 0 {
			reqs = append(reqs, &zk.CreateRequest{Path: p, Acl: s.acl}, &zk.DeleteRequest{Path: p, Version: -1})
		} else {
			reqs = append(reqs, &zk.CheckVersionRequest{Path: p, Version: zkVersion(cd.Version)})
		}
	}
	for _, op := range ops {
		p := s.abs(op.Key)
		switch op.Type {
		case coord.OpCreate:
			f := int32(0)
			if op.Session != nil {
				f = flags
			}
			if err := s.ensureParents(c, op.Key); err != nil {
				return nil, err
			}
			reqs = append(reqs, &zk.CreateRequest{Path: p, Data: op.Value, Acl: s.acl, Flags: f})
		case coord.OpPut:
			reqs = append(reqs, &zk.SetDataRequest{Path: p, Data: op.Value, Version: -1})
		case coord.OpDelete:
			reqs = append(reqs, &zk.DeleteRequest{Path: p, Version: -1})
		default:
			return nil, fmt.Errorf("zookeeper txn: unknown op type %d", op.Type)
		}
	}
	res, err := c.Multi(reqs...)
	if errors.Is(err, zk.ErrNoNode) {
		// A remembered parent may have been removed by someone else.
		for _, op := range ops {
			if op.Type == coord.OpCreate {
				s.dirs.Delete(path.Dir(s.abs(op.Key)))
			}
		}
	}
	if err == nil {
		for _, r := range res {
			if r.Error != nil {
				err = r.Error
				break
			}
		}
	}
	switch {
	case err == nil:
		vers := make([]int64, len(ops))
		first := len(reqs) - len(ops)
		for i, op := range ops {
			switch {
			case op.Type == coord.OpCreate:
				vers[i] = 1
			case op.Type == coord.OpPut && first+i < len(res) && res[first+i].Stat != nil:
				vers[i] = int64(res[first+i].Stat.Version) + 1
			}
		}
		return vers, nil
	case errors.Is(err, zk.ErrBadVersion), errors.Is(err, zk.ErrNodeExists), errors.Is(err, zk.ErrNoNode):
		return nil, fmt.Errorf("zookeeper txn: %w: %w", coord.ErrConflict, err)
	}
	return nil, mapErr("txn", "", err)
}

// zkLogger sends the library's messages to slog at debug level.
type zkLogger struct{ log *slog.Logger }

func (l zkLogger) Printf(format string, args ...any) {
	l.log.Debug("zookeeper client: " + fmt.Sprintf(format, args...))
}
