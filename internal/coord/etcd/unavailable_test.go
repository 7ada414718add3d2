package etcd

import (
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
