package auth

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/keys"
)

// CreateRequest describes a token to make.
type CreateRequest struct {
	Role        Role
	TTL         time.Duration // 0: never expires (join: DefaultJoinTTL)
	Description string
	CreatedBy   string // who asked, for the record
}

// Create makes a token, stores its record under root and returns the
// token (the only time its secret exists outside the caller's file) and
// the record.
func Create(ctx context.Context, store coord.Store, root string, req CreateRequest, now time.Time) (Token, Record, error) {
	req, err := req.checked()
	if err != nil {
		return Token{}, Record{}, err
	}
	for range 5 { // an id already taken is tried again with another
		t := NewToken()
		rec, stored, err := put(ctx, store, root, t, req, now)
		if err != nil {
			return Token{}, Record{}, err
		}
		if stored {
			return t, rec, nil
		}
	}
	return Token{}, Record{}, fmt.Errorf("store token record: %w", coord.ErrConflict)
}

// checked validates req and fills the join tokens' default lifetime.
func (req CreateRequest) checked() (CreateRequest, error) {
	if !req.Role.Valid() {
		return req, fmt.Errorf("%w: role %q: use viewer, operator, admin or join", ErrInvalid, req.Role)
	}
	if req.TTL < 0 || req.TTL > MaxTTL {
		return req, fmt.Errorf("%w: ttl %v: must be between 0 (never expires) and %v", ErrInvalid, req.TTL, MaxTTL)
	}
	if err := checkDescription(req.Description); err != nil {
		return req, err
	}
	if req.Role == Join && req.TTL == 0 {
		req.TTL = DefaultJoinTTL
	}
	return req, nil
}

// put stores t's record unless one with its id exists; it reports whether
// it stored it.
func put(ctx context.Context, store coord.Store, root string, t Token, req CreateRequest, now time.Time) (Record, bool, error) {
	key, err := Key(root, t.ID)
	if err != nil {
		return Record{}, false, err
	}
	rec := newRecord(t, req.Role, req.CreatedBy, req.Description, now, req.TTL)
	if _, err := store.Create(ctx, key, encodeRecord(rec)); err != nil {
		if errors.Is(err, coord.ErrExists) {
			return Record{}, false, nil
		}
		return Record{}, false, fmt.Errorf("store token record: %w", err)
	}
	return rec, true, nil
}

// List reads every token record under root, by creation time. Records that
// do not decode are skipped.
func List(ctx context.Context, store coord.Store, root string) ([]Record, error) {
	dir, err := Dir(root)
	if err != nil {
		return nil, err
	}
	kvs, err := store.List(ctx, dir)
	if err != nil {
		return nil, fmt.Errorf("list token records: %w", err)
	}
	out := make([]Record, 0, len(kvs))
	for _, kv := range kvs {
		r, _, err := decodeRecord(kv.Key, kv.Value)
		if err != nil {
			continue
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Record) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// Revoke deletes token id's record; every node stops accepting the token
// when its watch delivers the deletion.
func Revoke(ctx context.Context, store coord.Store, root, id string) error {
	key, err := Key(root, id)
	if err != nil {
		return err
	}
	if err := store.Delete(ctx, key, 0); err != nil {
		if errors.Is(err, coord.ErrNotFound) {
			return fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		return fmt.Errorf("revoke token %s: %w", id, err)
	}
	return nil
}

// Register stores the record of token t, made elsewhere (the first join
// token, which `taskd init` writes to the data directory before any store
// exists), unless a record with its id exists. It reports whether it
// stored one.
func Register(ctx context.Context, store coord.Store, root string, t Token, req CreateRequest, now time.Time) (bool, error) {
	req, err := req.checked()
	if err != nil {
		return false, err
	}
	_, stored, err := put(ctx, store, root, t, req, now)
	return stored, err
}

// Tokens is the token records of one cluster root: the narrow view of the
// store that the API's token service needs (create, list, revoke), bound
// to the root it was built with.
type Tokens struct {
	kv   coord.Store
	root string
}

// NewTokens binds the token records under root to kv.
func NewTokens(kv coord.Store, root keys.Root) *Tokens {
	return &Tokens{kv: kv, root: root.String()}
}

// Create is Create on the bound store and root.
func (t *Tokens) Create(ctx context.Context, req CreateRequest, now time.Time) (Token, Record, error) {
	return Create(ctx, t.kv, t.root, req, now)
}

// List is List on the bound store and root.
func (t *Tokens) List(ctx context.Context) ([]Record, error) { return List(ctx, t.kv, t.root) }

// Revoke is Revoke on the bound store and root.
func (t *Tokens) Revoke(ctx context.Context, id string) error { return Revoke(ctx, t.kv, t.root, id) }
