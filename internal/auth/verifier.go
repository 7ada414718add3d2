package auth

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/taskd/taskd/internal/backoff"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/keys"
)

// Identity is who made a request: the token's id and role.
type Identity struct {
	TokenID string
	Role    Role
	// Local is set for the node's own admin token.
	Local bool
}

// String names the identity in audit records: "token ID (ROLE)".
func (id Identity) String() string { return fmt.Sprintf("token %s (%s)", id.TokenID, id.Role) }

type entry struct {
	role    Role
	hash    [sha256.Size]byte
	expires time.Time
}

// Verifier checks tokens against the node's copy of the token records and
// the node's own admin token. Run keeps the copy current.
type Verifier struct {
	root string
	node string
	log  *slog.Logger
	now  func() time.Time

	mu      sync.RWMutex
	records map[string]entry
	synced  bool // the watch has delivered the records at least once
	local   Local
	// registered: the local token's record is in the store (and in
	// records), so the store's copy decides from then on.
	registered bool

	joinOnce sync.Once
	joined   chan struct{} // closed by Joined
}

// NewVerifier verifies tokens for node, whose admin token is local; root
// is the cluster's store directory.
func NewVerifier(root, node string, local Local, log *slog.Logger) *Verifier {
	return &Verifier{root: root, node: node, log: log, now: time.Now, records: map[string]entry{}, local: local, joined: make(chan struct{})}
}

// Joined tells the verifier that the node holds its name in the cluster
// (the quorum accepted its member record). Only then is the admin token
// registered in the store: a second taskd started by mistake with a live
// node's name is refused by the quorum, and must not replace that node's
// token record first.
func (v *Verifier) Joined() { v.joinOnce.Do(func() { close(v.joined) }) }

// Verify checks a token's text and returns who it is. It never reaches the
// store.
func (v *Verifier) Verify(text string) (Identity, error) {
	t, err := ParseToken(text)
	if err != nil {
		return Identity{}, err
	}
	h := hashSecret(t.Secret)
	v.mu.RLock()
	e, known := v.records[t.ID]
	synced, registered, local := v.synced, v.registered, v.local
	v.mu.RUnlock()
	if t.ID == local.Token.ID && !registered {
		// The store has not been reached since start: the node's own
		// admin token is checked from memory, so taskctl works on the
		// node during a store outage.
		if local.Token.Secret != "" && sameHash(h, hashSecret(local.Token.Secret)) {
			return Identity{TokenID: t.ID, Role: Admin, Local: true}, nil
		}
		return Identity{}, ErrUnauthenticated
	}
	if !known {
		if !synced {
			return Identity{}, ErrNotLoaded
		}
		return Identity{}, ErrUnauthenticated
	}
	if !sameHash(h, e.hash) {
		return Identity{}, ErrUnauthenticated
	}
	if !e.expires.IsZero() && !v.now().Before(e.expires) {
		return Identity{}, fmt.Errorf("%w: token %s expired at %s", ErrExpired, t.ID, e.expires.Format(time.RFC3339))
	}
	return Identity{TokenID: t.ID, Role: e.role, Local: t.ID == local.Token.ID}, nil
}

// Learn takes a record made on this node at once, before the watch
// delivers it, so the token works here as soon as its maker has it.
func (v *Verifier) Learn(r Record) {
	key, err := Key(v.root, r.ID)
	if err != nil {
		return
	}
	_, h, err := decodeRecord(key, encodeRecord(r))
	if err != nil {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.records[r.ID] = entry{role: r.Role, hash: h, expires: r.Expires}
}

// Forget drops a record revoked on this node at once. The node's own
// admin token is left to the watch, which also replaces it.
func (v *Verifier) Forget(id string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if id != v.local.Token.ID {
		delete(v.records, id)
	}
}

// Synced reports whether the records have been read from the store.
func (v *Verifier) Synced() bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.synced
}

// Run follows the token records in store and, once the node has joined,
// registers the node's admin token there, until ctx ends. When that record is deleted (the token was
// revoked), the node makes itself a new admin token: the old one stops
// working everywhere, and taskctl on the node keeps working with the new
// file.
func (v *Verifier) Run(ctx context.Context, store coord.Store) {
	dir, err := Dir(v.root)
	if err != nil {
		v.log.Error("cannot follow the token records: only the node's own admin token works", "err", err)
		return
	}
	w := store.Watch(ctx, dir)
	defer w.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	regCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	register := make(chan struct{}, 1)
	register <- struct{}{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-regCtx.Done():
			return
		case <-v.joined:
		}
		for {
			select {
			case <-regCtx.Done():
				return
			case <-register:
			}
			v.registerLocal(regCtx, store)
		}
	}()
	for ev := range w.Events() {
		switch ev.Type {
		case coord.EventSynced:
			v.mu.Lock()
			v.synced = true
			v.mu.Unlock()
		case coord.EventPut:
			r, h, err := decodeRecord(ev.KV.Key, ev.KV.Value)
			if err != nil {
				v.log.Warn("ignoring a token record", "err", err)
				v.forget(dir, ev.KV.Key)
				continue
			}
			v.mu.Lock()
			v.records[r.ID] = entry{role: r.Role, hash: h, expires: r.Expires}
			v.mu.Unlock()
		case coord.EventDelete:
			if v.forget(dir, ev.KV.Key) {
				select {
				case register <- struct{}{}:
				default:
				}
			}
		}
	}
}

// forget drops the record at key; it reports whether that was the
// registered local token's (which then needs replacing).
func (v *Verifier) forget(dir, key string) bool {
	id, err := keys.Child(dir, key, keys.ValidTokenID)
	if err != nil {
		return false
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.records, id)
	if id != v.local.Token.ID || !v.registered {
		return false
	}
	v.registered = false
	// Until a new token is registered, the revoked one must not pass as
	// "store not reached yet".
	v.local.Token.Secret = ""
	return true
}

// registerLocal writes the local admin token's record, retrying until it
// succeeds or ctx ends. After a revocation it first makes a new token.
func (v *Verifier) registerLocal(ctx context.Context, store coord.Store) {
	v.mu.RLock()
	local := v.local
	v.mu.RUnlock()
	rotated := false
	if local.Token.Secret == "" {
		nl, err := local.rotate()
		if err != nil {
			v.log.Error("cannot replace the revoked node-local admin token; taskctl on this node needs --token-file until taskd restarts", "err", err, "path", local.Path)
			return
		}
		local, rotated = nl, true
		v.mu.Lock()
		v.local = nl
		v.mu.Unlock()
	}
	retry := backoff.New(100*time.Millisecond, 2*time.Second)
	for {
		rec, err := v.putLocal(ctx, store, local)
		if err == nil {
			h := hashSecret(local.Token.Secret)
			v.mu.Lock()
			if v.local.Token == local.Token {
				v.records[rec.ID] = entry{role: rec.Role, hash: h}
				v.registered = true
			}
			v.mu.Unlock()
			if rotated {
				v.log.Warn("node-local admin token was revoked; made a new one", events.TokenRotated.Attr(), "token", local.Token.ID, "path", local.Path)
			}
			return
		}
		if errors.Is(err, errForeignRecord) {
			v.log.Error("cannot register the node-local admin token", "err", err)
			return
		}
		v.log.Debug("registering the node-local admin token, will retry", "err", err, "retry_in", retry.Next())
		if retry.Wait(ctx) != nil {
			return
		}
	}
}

var errForeignRecord = errors.New("a token record with this node's local admin token id belongs to another node")

// putLocal writes the record of the local token unless the store already
// holds it.
func (v *Verifier) putLocal(ctx context.Context, store coord.Store, local Local) (Record, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	key, err := Key(v.root, local.Token.ID)
	if err != nil {
		return Record{}, err
	}
	rec := newRecord(local.Token, Admin, createdByNode(v.node), "node-local admin credential of "+v.node+" ("+local.Path+")", v.now(), 0)
	old, err := store.Get(ctx, key)
	switch {
	case errors.Is(err, coord.ErrNotFound):
		_, err = store.Create(ctx, key, encodeRecord(rec))
		return rec, err
	case err != nil:
		return rec, err
	}
	have, h, derr := decodeRecord(key, old.Value)
	if derr == nil && have.CreatedBy != createdByNode(v.node) {
		return rec, fmt.Errorf("%w: %s was made by %s", errForeignRecord, key, have.CreatedBy)
	}
	if derr == nil && have.Role == Admin && have.Expires.IsZero() && sameHash(h, hashSecret(local.Token.Secret)) {
		return have, nil
	}
	// The file was replaced (rotated by hand): the record follows it.
	_, err = store.Update(ctx, key, encodeRecord(rec), old.Version)
	return rec, err
}

func createdByNode(node string) string { return "node " + node }
