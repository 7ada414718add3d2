package api

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/auth"
)

type tokenService struct {
	c      Cluster
	caHash string
	// learner, when the authenticator is the node's verifier, is told
	// of tokens made and revoked here so they take effect on this node
	// at once (the others follow their watch).
	learner interface {
		Learn(auth.Record)
		Forget(id string)
	}
}

func (s *tokenService) records() (*auth.Tokens, error) {
	t := s.c.Tokens()
	if t == nil {
		return nil, toConnect(errNotConnected)
	}
	return t, nil
}

func toTokenInfo(r auth.Record, now time.Time) *taskdv1.TokenInfo {
	return &taskdv1.TokenInfo{Id: r.ID, Role: string(r.Role), Created: ts(r.Created), CreatedBy: r.CreatedBy,
		Description: r.Description, Expires: ts(r.Expires), Expired: r.Expired(now)}
}

func (s *tokenService) CreateToken(ctx context.Context, req *connect.Request[taskdv1.CreateTokenRequest]) (*connect.Response[taskdv1.CreateTokenResponse], error) {
	tokens, err := s.records()
	if err != nil {
		return nil, err
	}
	who, _ := Caller(ctx)
	m := req.Msg
	if m.TtlSeconds < 0 || m.TtlSeconds > int64(auth.MaxTTL/time.Second) {
		return nil, toConnect(fmt.Errorf("%w: ttl of %d seconds: must be between 0 (never expires) and %v", auth.ErrInvalid, m.TtlSeconds, auth.MaxTTL))
	}
	now := time.Now()
	tok, rec, err := tokens.Create(ctx, auth.CreateRequest{
		Role: auth.Role(m.Role), TTL: time.Duration(m.TtlSeconds) * time.Second, Description: m.Description, CreatedBy: who.String(),
	}, now)
	if err != nil {
		return nil, toConnect(err)
	}
	if s.learner != nil {
		s.learner.Learn(rec)
	}
	return connect.NewResponse(&taskdv1.CreateTokenResponse{Info: toTokenInfo(rec, now), Token: tok.String(), CaSha256: s.caHash}), nil
}

func (s *tokenService) ListTokens(ctx context.Context, _ *connect.Request[taskdv1.ListTokensRequest]) (*connect.Response[taskdv1.ListTokensResponse], error) {
	tokens, err := s.records()
	if err != nil {
		return nil, err
	}
	recs, err := tokens.List(ctx)
	if err != nil {
		return nil, toConnect(err)
	}
	now := time.Now()
	out := &taskdv1.ListTokensResponse{Tokens: make([]*taskdv1.TokenInfo, 0, len(recs))}
	for _, r := range recs {
		out.Tokens = append(out.Tokens, toTokenInfo(r, now))
	}
	return connect.NewResponse(out), nil
}

func (s *tokenService) RevokeToken(ctx context.Context, req *connect.Request[taskdv1.RevokeTokenRequest]) (*connect.Response[taskdv1.RevokeTokenResponse], error) {
	tokens, err := s.records()
	if err != nil {
		return nil, err
	}
	if err := tokens.Revoke(ctx, req.Msg.Id); err != nil {
		return nil, toConnect(err)
	}
	if s.learner != nil {
		s.learner.Forget(req.Msg.Id)
	}
	return connect.NewResponse(&taskdv1.RevokeTokenResponse{}), nil
}

// WhoAmI names the caller; guard has already checked its token.
func (s *tokenService) WhoAmI(ctx context.Context, _ *connect.Request[taskdv1.WhoAmIRequest]) (*connect.Response[taskdv1.WhoAmIResponse], error) {
	id, ok := Caller(ctx)
	if !ok {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("no caller"))
	}
	return connect.NewResponse(&taskdv1.WhoAmIResponse{TokenId: id.TokenID, Role: string(id.Role)}), nil
}
