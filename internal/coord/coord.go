// Package coord is the coordination-store interface taskd is built on.
//
// Three backends implement it: an etcd server embedded in taskd, an external
// etcd cluster (both in coord/etcd) and a ZooKeeper ensemble (coord/zk). One
// contract suite (coord/coordtest) runs against every backend on real servers.
//
// Guarantees:
//   - Keys are slash-separated paths ("/taskd/members/n1"). List and Watch see
//     the direct children of a directory only.
//   - Every write returns the key's new Version. Conditional writes (Update,
//     Delete with a version, Txn) are checked by the store itself, atomically.
//   - A Session is a ZooKeeper session or an etcd lease. Keys created with
//     WithSession are deleted by the store when the session ends.
//   - Watch delivers the current contents of a directory, then every change,
//     and survives reconnects: after a gap it re-reads the directory and
//     delivers the difference, so no change of state is lost. Intermediate
//     versions of one key may be coalesced.
//
// Non-guarantees:
//   - Versions are only comparable for the same key. On ZooKeeper a deleted and
//     re-created key starts its versions again, so fencing conditions must be
//     placed on keys that are never deleted (the quorum epoch key, a task
//     record), not on ephemeral keys.
//   - A Session's LastContact is measured on the local monotonic clock; the
//     local deadline derived from it is only as good as the assumption that
//     clocks on the node and the store advance at the same rate.
package coord

import (
	"context"
	"errors"
	"time"
)

// Sentinel errors. Backends wrap them; callers test with errors.Is.
var (
	// ErrNotFound: the key does not exist.
	ErrNotFound = errors.New("coord: key not found")
	// ErrExists: a create found the key already present.
	ErrExists = errors.New("coord: key already exists")
	// ErrConflict: a condition (version, absence) did not hold.
	ErrConflict = errors.New("coord: condition failed")
	// ErrSessionLost: the session expired or was closed.
	ErrSessionLost = errors.New("coord: session lost")
	// ErrUnavailable: the store could not be reached in time, or the
	// connection broke while the request was in flight (ZooKeeper fails
	// every unanswered request when its server goes away). The outcome of
	// a write that failed this way is unknown: it may have been applied.
	ErrUnavailable = errors.New("coord: store unavailable")
)

// KV is one key as read from the store.
type KV struct {
	Key   string
	Value []byte
	// Version changes on every write of the key; it is > 0 for an existing key.
	Version int64
	// CreateOrder orders keys by creation across the whole store (etcd create
	// revision, ZooKeeper czxid). Quorum uses it for "earliest joined".
	CreateOrder int64
	// Ephemeral is true when the key is bound to a session.
	Ephemeral bool
}

// EventType says what happened to a key.
type EventType int

// Event types delivered by Watch.
const (
	EventPut EventType = iota + 1
	EventDelete
	// EventSynced marks the end of the initial contents (or of a resync after
	// a gap); consumers that need a complete view wait for it.
	EventSynced
)

func (t EventType) String() string {
	switch t {
	case EventPut:
		return "put"
	case EventDelete:
		return "delete"
	case EventSynced:
		return "synced"
	}
	return "unknown"
}

// Event is one change seen by Watch. For EventDelete, KV holds the last value
// the watcher knew.
type Event struct {
	Type EventType
	KV   KV
}

// WatchBuffer is how many events a watch channel holds, so that a busy
// consumer finds a burst queued and can handle it in one pass.
const WatchBuffer = 1024

// Store is a coordination store.
type Store interface {
	// Get reads one key. ErrNotFound if absent.
	Get(ctx context.Context, key string) (KV, error)
	// List reads the direct children of dir, sorted by key.
	List(ctx context.Context, dir string) ([]KV, error)
	// GetMany reads keys together: kvs[i] is keys[i]'s, with an empty Key
	// if it is absent. One transaction of reads on etcd (several of at
	// most 128 keys, etcd's default limit of operations in a transaction,
	// sent together), reads sent together on ZooKeeper.
	GetMany(ctx context.Context, keys []string) ([]KV, error)
	// Keys names the direct children of dir, sorted, without reading
	// their values: a keys-only read on etcd, one listing on ZooKeeper
	// (where List reads each child after the listing).
	Keys(ctx context.Context, dir string) ([]string, error)
	// ListBelow reads the keys exactly two segments below dir
	// (DIR/A/B), in ascending order of key, those that sort after after
	// ("" for no bound), at most limit (> 0) of them; more reports that
	// keys beyond the last one returned exist. It is how an index is read
	// a page at a time from its start without reading it whole: one ranged
	// read on etcd (which honours a limit only in ascending order); on
	// ZooKeeper, which has no ranged read, a listing of dir's children,
	// then of one child after another from the first, and a read of each
	// key returned. Keys compare as byte strings within each level;
	// callers use segments of a fixed width per level, for which every
	// backend orders alike.
	ListBelow(ctx context.Context, dir, after string, limit int) (kvs []KV, more bool, err error)
	// CountBelow counts the keys two segments below dir: on etcd a
	// count-only read (keys at other depths below dir count too: callers
	// keep none there), on ZooKeeper a listing of dir and a stat of each
	// child.
	CountBelow(ctx context.Context, dir string) (int, error)
	// Create writes key only if it is absent (ErrExists otherwise).
	Create(ctx context.Context, key string, value []byte, opts ...OpOption) (KV, error)
	// Update writes key only if its version is ifVersion (ErrConflict
	// otherwise, ErrNotFound if absent). ifVersion 0 writes unconditionally
	// an existing key.
	Update(ctx context.Context, key string, value []byte, ifVersion int64) (KV, error)
	// Delete removes key if its version is ifVersion (0: any version).
	Delete(ctx context.Context, key string, ifVersion int64) error
	// Txn applies ops atomically if every cond holds, else ErrConflict.
	// It returns the new version of each op's key (0 for a delete).
	Txn(ctx context.Context, conds []Cond, ops []Op) ([]int64, error)
	// Watch streams the contents of dir and then its changes until ctx ends
	// or the Watcher is closed. The caller owns the Watcher and closes it:
	// Close returns once the watch goroutine has ended.
	Watch(ctx context.Context, dir string) *Watcher
	// NewSession opens a session with the given timeout.
	NewSession(ctx context.Context, timeout time.Duration) (Session, error)
	// Close releases the store's connections.
	Close() error
}

// OpOption modifies a Create.
type OpOption func(*OpOptions)

// OpOptions are the resolved options of a Create.
type OpOptions struct {
	Session Session
}

// WithSession binds the created key to s: it disappears when s ends.
func WithSession(s Session) OpOption { return func(o *OpOptions) { o.Session = s } }

// Cond is a transaction condition on one key.
type Cond struct {
	Key string
	// Version the key must have; 0 means the key must be absent.
	Version int64
}

// VersionIs requires key to have version v.
func VersionIs(key string, v int64) Cond { return Cond{Key: key, Version: v} }

// OpType is a transaction operation.
type OpType int

// Transaction operations.
const (
	OpCreate OpType = iota + 1
	OpPut
	OpDelete
)

// Op is one write inside a Txn.
type Op struct {
	Type    OpType
	Key     string
	Value   []byte
	Session Session // OpCreate only: bind the key to this session
}

// CreateOp creates key (the Txn fails with ErrConflict if it exists).
func CreateOp(key string, value []byte, s Session) Op {
	return Op{Type: OpCreate, Key: key, Value: value, Session: s}
}

// PutOp overwrites an existing key.
func PutOp(key string, value []byte) Op { return Op{Type: OpPut, Key: key, Value: value} }

// DeleteOp removes an existing key.
func DeleteOp(key string) Op { return Op{Type: OpDelete, Key: key} }

// SessionState is the client's view of a session.
type SessionState int

// Session states. They match the original service's names.
const (
	// StateRunning: the session is confirmed alive.
	StateRunning SessionState = iota + 1
	// StateConnecting: contact is lost; the session may still be alive.
	StateConnecting
	// StateExpired: the session is gone (expired on the server, or its local
	// deadline has passed).
	StateExpired
	// StateStopped: the session was closed by us.
	StateStopped
)

func (s SessionState) String() string {
	switch s {
	case StateRunning:
		return "running"
	case StateConnecting:
		return "connecting"
	case StateExpired:
		return "expired"
	case StateStopped:
		return "stopped"
	}
	return "unknown"
}

// Session is a ZooKeeper session or an etcd lease.
type Session interface {
	// ID identifies the session in logs and records.
	ID() string
	// Timeout is the server-side session timeout.
	Timeout() time.Duration
	// State returns the current state and a channel closed on the next change.
	State() (SessionState, <-chan struct{})
	// LastContact is the send time of the last request the store confirmed
	// while this session was alive. The store cannot expire the session
	// before LastContact + Timeout.
	LastContact() time.Time
	// Done is closed once the session has ended (expired or closed).
	Done() <-chan struct{}
	// Close ends the session, deleting its keys if the store is reachable.
	Close(ctx context.Context) error
}

// SessionRevoker is a Store that can end another process's session by its
// ID (Session.ID), deleting the session's keys at once (etcd, embedded or
// external). The embedded etcd's peer watch (internal/peerwatch) uses it
// on evidence that the session's process is gone, and a node's quorum on
// its own previous session when it rejoins (internal/quorum).
type SessionRevoker interface {
	RevokeSession(ctx context.Context, id string) error
}

// HeartbeatObserver is told, for every scheduled heartbeat (keepalive) of a
// session, how late it was sent against its schedule, and how long its
// round trip took (to the answer or the failure). A node starved of CPU
// sends its heartbeats late, or cannot process their answers, long before
// its session is in danger. It must not block.
type HeartbeatObserver func(late, roundTrip time.Duration)

// HeartbeatReporter is a Store whose sessions report their heartbeats'
// lateness. Both backends implement it; ObserveHeartbeats applies to the
// sessions opened after it.
type HeartbeatReporter interface {
	ObserveHeartbeats(HeartbeatObserver)
}

// HeartbeatInterval is how often backends confirm contact: a sixth of the
// timeout, so that LastContact is never more than that stale while healthy.
func HeartbeatInterval(timeout time.Duration) time.Duration { return timeout / 6 }
