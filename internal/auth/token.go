// Package auth holds taskd's API credentials: bearer tokens with roles,
// their records in the coordination store, and the verifier every node
// runs.
//
// A token is "taskd.ID.SECRET": ID is 8 hex digits and names the record
// ROOT/tokens/ID; SECRET is 32 random bytes in hex. The store keeps only the
// SHA-256 of the secret, so reading the store does not yield a usable
// token. The secret is shown once, when the token is made.
//
// Roles are ordered viewer < operator < admin; a token of a higher role
// may do what a lower one may. The join role stands apart: it may only call
// ClusterService/Join, and nothing else may.
//
// Guarantees: verification compares hashes in constant time and never
// reaches the store (a watch keeps every node's copy of the records); it
// keeps working with the last records seen while the store is unreachable.
// Non-guarantees: a token made or revoked on one node takes effect on the
// others when their watch delivers the change (normally milliseconds; not
// while a node is cut off from the store, which then goes on with what it
// knew).
package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"
	"unicode"

	"github.com/taskd/taskd/internal/keys"
)

// Sentinel errors; internal/api maps them to API codes.
var (
	// ErrUnauthenticated: no token, a malformed one, an unknown ID or a
	// wrong secret. Which of these it was is not told to the caller.
	ErrUnauthenticated = errors.New("missing or invalid token")
	// ErrExpired: the token's record has expired.
	ErrExpired = errors.New("token expired")
	// ErrNotLoaded: the node has not read the token records yet (just
	// started, store not reached); only the node's own admin token works.
	ErrNotLoaded = errors.New("token records not loaded yet (the node has not reached the store since it started)")
	// ErrPermission: the token's role may not call the procedure.
	ErrPermission = errors.New("permission denied")
	// ErrInvalid: a bad argument (role, TTL, description, token id).
	ErrInvalid = errors.New("invalid argument")
	// ErrNotFound: no token with that id.
	ErrNotFound = errors.New("token not found")
)

// Role is what a token may do.
type Role string

// The roles.
const (
	Viewer   Role = "viewer"   // reads: lists, show, wait, events, doctor, metrics
	Operator Role = "operator" // tasks and runners
	Admin    Role = "admin"    // cluster membership and priorities, VIPs, tokens
	Join     Role = "join"     // ClusterService/Join only
)

// Roles lists every role, in order.
var Roles = []Role{Viewer, Operator, Admin, Join}

func (r Role) rank() int {
	switch r {
	case Viewer:
		return 1
	case Operator:
		return 2
	case Admin:
		return 3
	}
	return 0
}

// Valid reports whether r is a known role.
func (r Role) Valid() bool { return r.rank() > 0 || r == Join }

// Satisfies reports whether a token of role r may call a procedure that
// requires role need.
func (r Role) Satisfies(need Role) bool {
	if r == Join || need == Join {
		return r == need && r == Join
	}
	return r.rank() > 0 && r.rank() >= need.rank()
}

// ParseRole parses a role name.
func ParseRole(s string) (Role, error) {
	r := Role(s)
	if !r.Valid() {
		return "", fmt.Errorf("%w: role %q: use viewer, operator, admin or join", ErrInvalid, s)
	}
	return r, nil
}

const (
	tokenPrefix = "taskd."
	idLen       = 8  // hex digits
	secretBytes = 32 // random bytes, 64 hex digits
	// TokenLen is the length of a token's text form.
	TokenLen = len(tokenPrefix) + idLen + 1 + 2*secretBytes
	// maxDescription bounds a token's description.
	maxDescription = 200
	// MaxTTL bounds a token's lifetime.
	MaxTTL = 10 * 365 * 24 * time.Hour
	// DefaultJoinTTL is the lifetime of a join token made without one: a
	// join token yields the cluster CA key, so it must not live forever by
	// default (kubeadm uses the same default).
	DefaultJoinTTL = 24 * time.Hour
)

// Token is a credential. Its String is the secret text; never log it.
type Token struct {
	ID     string
	Secret string
}

// String is the text form taskd.ID.SECRET.
func (t Token) String() string { return tokenPrefix + t.ID + "." + t.Secret }

// NewToken makes a token with a fresh random id and secret.
func NewToken() Token {
	return Token{ID: randomHex(idLen / 2), Secret: randomHex(secretBytes)}
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("auth: crypto/rand failed: %v", err)) // no entropy: nothing is safe
	}
	return hex.EncodeToString(b)
}

// ParseToken parses the text form; anything else is ErrUnauthenticated
// (the text is not echoed: it may be a secret).
func ParseToken(s string) (Token, error) {
	if len(s) != TokenLen || !strings.HasPrefix(s, tokenPrefix) || s[len(tokenPrefix)+idLen] != '.' {
		return Token{}, fmt.Errorf("%w: not of the form taskd.ID.SECRET", ErrUnauthenticated)
	}
	t := Token{ID: s[len(tokenPrefix) : len(tokenPrefix)+idLen], Secret: s[len(tokenPrefix)+idLen+1:]}
	if !isLowerHex(t.ID) || !isLowerHex(t.Secret) {
		return Token{}, fmt.Errorf("%w: not of the form taskd.ID.SECRET", ErrUnauthenticated)
	}
	return t, nil
}

// ValidID reports whether id can name a token record: exactly 8 lower-case
// hex digits, so it is always one safe key segment.
func ValidID(id string) bool { return len(id) == idLen && isLowerHex(id) }

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return s != ""
}

// hashSecret is what the store keeps of a secret.
func hashSecret(secret string) [sha256.Size]byte { return sha256.Sum256([]byte(secret)) }

// layout is the token records' part of the store layout under root.
func layout(root string) (keys.Tokens, error) {
	r, err := keys.NewRoot(root)
	if err != nil {
		return keys.Tokens{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return r.Tokens(), nil
}

// Dir is the store directory of the token records.
func Dir(root string) (string, error) {
	l, err := layout(root)
	if err != nil {
		return "", err
	}
	return l.Dir(), nil
}

// Key is the store key of token id's record; the id must be valid.
func Key(root, id string) (string, error) {
	if !ValidID(id) {
		return "", fmt.Errorf("%w: token id %q: want 8 hex digits as printed by taskctl token list", ErrInvalid, id)
	}
	l, err := layout(root)
	if err != nil {
		return "", err
	}
	return l.TokenKey(id)
}

// Record is a token as the store keeps it.
type Record struct {
	ID          string    `json:"id"`
	Role        Role      `json:"role"`
	SHA256      string    `json:"sha256"` // hex SHA-256 of the secret
	Created     time.Time `json:"created"`
	CreatedBy   string    `json:"created_by"`
	Description string    `json:"description,omitempty"`
	Expires     time.Time `json:"expires,omitzero"` // zero: never
}

// Expired reports whether the record has expired at now.
func (r Record) Expired(now time.Time) bool { return !r.Expires.IsZero() && !now.Before(r.Expires) }

// decodeRecord reads and checks a record from the store, whose writers are
// trusted but whose contents must still make sense.
func decodeRecord(key string, b []byte) (Record, [sha256.Size]byte, error) {
	var r Record
	var h [sha256.Size]byte
	if err := json.Unmarshal(b, &r); err != nil {
		return r, h, fmt.Errorf("token record %s: %w", key, err)
	}
	if !ValidID(r.ID) || path.Base(key) != r.ID {
		return r, h, fmt.Errorf("token record %s: id %q does not match its key", key, r.ID)
	}
	if !r.Role.Valid() {
		return r, h, fmt.Errorf("token record %s: unknown role %q", key, r.Role)
	}
	raw, err := hex.DecodeString(r.SHA256)
	if err != nil || len(raw) != sha256.Size {
		return r, h, fmt.Errorf("token record %s: hash is not 64 hex digits", key)
	}
	copy(h[:], raw)
	return r, h, nil
}

func encodeRecord(r Record) []byte {
	b, _ := json.Marshal(r) // strings and times always marshal
	return b
}

// newRecord is the record of t.
func newRecord(t Token, role Role, createdBy, desc string, now time.Time, ttl time.Duration) Record {
	h := hashSecret(t.Secret)
	r := Record{ID: t.ID, Role: role, SHA256: hex.EncodeToString(h[:]), Created: now.UTC(), CreatedBy: createdBy, Description: desc}
	if ttl > 0 {
		r.Expires = now.Add(ttl).UTC()
	}
	return r
}

// checkDescription refuses descriptions that would garble a listing.
func checkDescription(s string) error {
	if len(s) > maxDescription {
		return fmt.Errorf("%w: description is longer than %d bytes", ErrInvalid, maxDescription)
	}
	for _, c := range s {
		if !unicode.IsPrint(c) {
			return fmt.Errorf("%w: description holds a control character", ErrInvalid)
		}
	}
	return nil
}

// sameHash compares two hashes in constant time.
func sameHash(a, b [sha256.Size]byte) bool { return subtle.ConstantTimeCompare(a[:], b[:]) == 1 }
