package bootstrap

import (
	"context"
	"errors"
	"fmt"

	"github.com/taskd/taskd/internal/auth"
)

// JoinVerifier checks a join credential: an API token of role join.
type JoinVerifier interface {
	VerifyJoin(ctx context.Context, credential string) error
}

// TokenVerifier is a JoinVerifier on the node's API token verifier
// (internal/auth: the watch-fed cache of the token records, so no store
// round trip per join).
type TokenVerifier struct{ Tokens *auth.Verifier }

// VerifyJoin implements JoinVerifier: the credential must be a known,
// unexpired token of role join.
func (v TokenVerifier) VerifyJoin(_ context.Context, credential string) error {
	id, err := v.Tokens.Verify(credential)
	switch {
	case errors.Is(err, auth.ErrNotLoaded):
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	case err != nil:
		return fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	case id.Role != auth.Join:
		return fmt.Errorf("%w: token %s has role %s, not join", ErrUnauthenticated, id.TokenID, id.Role)
	}
	return nil
}
