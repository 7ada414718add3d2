package etcd

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/taskd/taskd/internal/coord"
)

// TestWrapUnavailableByCode: errors map to coord.ErrUnavailable by their
// gRPC code, never by their text: a refusal whose message merely contains
// "Unavailable" (a key or user name) is not an outage to retry.
func TestWrapUnavailableByCode(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"transport status", status.Error(codes.Unavailable, "connection refused"), true},
		{"wrapped transport status", fmt.Errorf("dial: %w", status.Error(codes.Unavailable, "x")), true},
		{"etcd no leader", rpctypes.ErrNoLeader, true},
		{"permission denied naming Unavailable", status.Error(codes.PermissionDenied, "user Unavailable may not read /taskd/x"), false},
		{"plain text", errors.New("Unavailable"), false},
		{"etcd permission denied", rpctypes.ErrPermissionDenied, false},
	} {
		got := errors.Is(wrap("get", "/k", tc.err), coord.ErrUnavailable)
		if got != tc.want {
			t.Errorf("%s: wrapped as unavailable %v, want %v (%v)", tc.name, got, tc.want, tc.err)
		}
	}
}

// TestMemberAddErrorRetryable: a member add that hung until its own
// deadline (etcd dropped it behind another membership change), or found
// the cluster busy or leaderless, is ErrBusy, which a joiner retries; a
// refusal a retry cannot change, or any failure once the caller's own
// context has ended, is ErrAdmit. The CI run of ed9ab6b refused a node
// for good because of such a hang.
func TestMemberAddErrorRetryable(t *testing.T) {
	live := context.Background()
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		err  error
		want error
	}{
		{"own deadline", live, fmt.Errorf("rpc: %w", context.DeadlineExceeded), ErrBusy},
		{"gRPC deadline", live, status.Error(codes.DeadlineExceeded, "context deadline exceeded"), ErrBusy},
		{"etcd request timed out", live, rpctypes.ErrTimeout, ErrBusy},
		{"no leader", live, rpctypes.ErrNoLeader, ErrBusy},
		{"too many learners", live, rpctypes.ErrTooManyLearners, ErrBusy},
		{"not enough started", live, rpctypes.ErrMemberNotEnoughStarted, ErrBusy},
		{"peer URL taken", live, rpctypes.ErrPeerURLExist, ErrAdmit},
		{"caller gave up", gone, fmt.Errorf("rpc: %w", context.DeadlineExceeded), ErrAdmit},
	} {
		got := memberAddError(tc.ctx, tc.err)
		if !errors.Is(got, tc.want) || (tc.want == ErrBusy) == errors.Is(got, ErrAdmit) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
