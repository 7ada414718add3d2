package bootstrap

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/taskd/taskd/internal/coord"
)

// JoinVerifier checks a join credential: an API token of role join.
//
// internal/auth (the API's token records, hashing and watch-fed cache)
// implements it; StoreVerifier below is a stand-in until that lands.
type JoinVerifier interface {
	VerifyJoin(ctx context.Context, credential string) error
}

// RoleJoin is the role of join tokens.
const RoleJoin = "join"

// tokenRecord is the store record of an API token (/taskd/tokens/ID), in
// the format of the security design: the SHA-256 of the secret, never the
// secret.
type tokenRecord struct {
	ID          string    `json:"id"`
	Role        string    `json:"role"`
	SHA256      string    `json:"sha256"`
	Created     time.Time `json:"created"`
	CreatedBy   string    `json:"created_by"`
	Description string    `json:"description,omitempty"`
	Expires     time.Time `json:"expires,omitzero"`
}

// credentialRE is the token format taskd.ID.SECRET: ID 8 hex digits,
// SECRET 32 bytes in hex.
var credentialRE = regexp.MustCompile(`^taskd\.([0-9a-f]{8})\.([0-9a-f]{64})$`)

// NewCredential makes a token in the taskd.ID.SECRET format.
func NewCredential() (id, credential string, err error) {
	var b [36]byte
	if _, err := randRead(b[:]); err != nil {
		return "", "", err
	}
	id = hex.EncodeToString(b[:4])
	return id, "taskd." + id + "." + hex.EncodeToString(b[4:]), nil
}

func hashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

func tokenKey(root, id string) string { return root + "/tokens/" + id }

// StoreVerifier is a PLACEHOLDER JoinVerifier until internal/auth lands (to
// be replaced when the API's token work is merged): it looks the token up
// in its store record on every call, with no cache, so it fails while the
// store is unreachable. It checks the format, the role, the expiry and the
// hash (constant-time).
type StoreVerifier struct {
	Store coord.Store
	Root  string // the cluster's store root, e.g. /taskd
	Now   func() time.Time
}

// VerifyJoin implements JoinVerifier.
func (v StoreVerifier) VerifyJoin(ctx context.Context, credential string) error {
	m := credentialRE.FindStringSubmatch(credential)
	if m == nil {
		return fmt.Errorf("%w: not a taskd token", ErrUnauthenticated)
	}
	kv, err := v.Store.Get(ctx, tokenKey(v.Root, m[1]))
	if errors.Is(err, coord.ErrNotFound) {
		return fmt.Errorf("%w: unknown token", ErrUnauthenticated)
	}
	if err != nil {
		return fmt.Errorf("%w: token lookup: %w", ErrUnavailable, err)
	}
	var rec tokenRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return fmt.Errorf("%w: unreadable token record", ErrUnauthenticated)
	}
	want, err := hex.DecodeString(rec.SHA256)
	got := sha256.Sum256([]byte(m[2]))
	if err != nil || subtle.ConstantTimeCompare(want, got[:]) != 1 {
		return fmt.Errorf("%w: wrong secret", ErrUnauthenticated)
	}
	if rec.Role != RoleJoin {
		return fmt.Errorf("%w: token has role %q, not %q", ErrUnauthenticated, rec.Role, RoleJoin)
	}
	if !rec.Expires.IsZero() && !v.Now().Before(rec.Expires) {
		return fmt.Errorf("%w: token expired at %s", ErrUnauthenticated, rec.Expires.Format(time.RFC3339))
	}
	return nil
}

// RegisterJoinToken stores the record of the join token `taskd init` wrote,
// if absent. PLACEHOLDER until internal/auth lands: token records are
// internal/auth's, which will register this token itself.
func RegisterJoinToken(ctx context.Context, store coord.Store, root, credential, createdBy string, now time.Time) error {
	m := credentialRE.FindStringSubmatch(credential)
	if m == nil {
		return fmt.Errorf("%w: join token credential is not a taskd token", ErrInvalid)
	}
	rec := tokenRecord{ID: m[1], Role: RoleJoin, SHA256: hashSecret(m[2]), Created: now, CreatedBy: createdBy,
		Description: "first join token, written by taskd init"}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if _, err := store.Create(ctx, tokenKey(root, m[1]), b); err != nil && !errors.Is(err, coord.ErrExists) {
		return fmt.Errorf("register join token: %w", err)
	}
	return nil
}
