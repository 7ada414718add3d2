package ctl

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/pki"
)

// TestRetryable: what `task wait` reconnects after. The error of issue 13
// bug 4 (the node killed under an open stream) is one of them; a server's
// final answers and a server that fails the certificate check are not.
func TestRetryable(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"stream cut mid-envelope (kill -9 of the node)", connect.NewError(connect.CodeInternal, fmt.Errorf("protocol error: incomplete envelope: %w", io.ErrUnexpectedEOF)), true},
		{"connection refused", connect.NewError(connect.CodeUnavailable, errors.New("dial tcp 127.0.0.1:1: connect: connection refused")), true},
		{"stream ended without an end-of-stream", connect.NewError(connect.CodeUnknown, io.EOF), true},
		{"server: not connected to its store yet", connect.NewWireError(connect.CodeUnavailable, errors.New("coord: store unavailable")), true},
		{"server: shut down under the call", connect.NewWireError(connect.CodeCanceled, errors.New("context canceled")), true},
		{"server: internal error", connect.NewWireError(connect.CodeInternal, errors.New("bug")), false},
		{"server: no such task", connect.NewWireError(connect.CodeNotFound, errors.New("no task")), false},
		{"server: token revoked", connect.NewWireError(connect.CodeUnauthenticated, errors.New("revoked")), false},
		{"server: not permitted", connect.NewWireError(connect.CodePermissionDenied, errors.New("viewer")), false},
		{"server: bad id", connect.NewWireError(connect.CodeInvalidArgument, errors.New("bad id")), false},
		{"server is not the node expected", connect.NewError(connect.CodeUnavailable, fmt.Errorf("tls: %w", pki.ErrIdentity)), false},
	} {
		if got := retryable(tc.err); got != tc.want {
			t.Errorf("%s: retryable(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}

// TestWaitGivesUpWithExit3: a wait whose node never comes back stops
// reconnecting after waitReconnect (shortened here) and exits 3, the code
// of an unreachable taskd, saying for how long it had no answer.
func TestWaitGivesUpWithExit3(t *testing.T) {
	dir := t.TempDir()
	if _, err := pki.Create(dir, "n1", nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := auth.LoadLocal(dir, "n1"); err != nil {
		t.Fatal(err)
	}
	// A port nobody listens on: taken from the kernel, then closed.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	defer func(old time.Duration) { waitReconnect = old }(waitReconnect)
	waitReconnect = 1500 * time.Millisecond
	start := time.Now()
	code, msg := run("--endpoint", addr, "--data-dir", dir, "task", "wait", "t-1")
	took := time.Since(start)
	if code != ExitUnavailable || !strings.Contains(msg, "no answer") || !strings.Contains(msg, "reconnecting") {
		t.Fatalf("wait on a node that never answers: exit %d after %v: %s", code, took, msg)
	}
	if took < waitReconnect || took > waitReconnect+10*time.Second {
		t.Errorf("gave up after %v, want about %v", took, waitReconnect)
	}
	if n := strings.Count(msg, "reconnecting in"); n < 2 {
		t.Errorf("%d reconnection attempts in %v, want several:\n%s", n, waitReconnect, msg)
	}
}
