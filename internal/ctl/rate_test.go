package ctl

import (
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/pki"
)

// TestBadRateRefusedUpFront is issue 13 bug 2: taskctl took "10Q" as 10
// B/s. A rate with an unknown unit is a usage error (exit 2) that names
// what was given, and taskctl refuses it before it dials the server: the
// endpoint here counts every connection, and a good rate (the control)
// does connect.
func TestBadRateRefusedUpFront(t *testing.T) {
	dir := t.TempDir()
	if _, err := pki.Create(dir, "n1", nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := auth.LoadLocal(dir, "n1"); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns atomic.Int64
	accepted := make(chan struct{}, 16)
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			c.Close()
			accepted <- struct{}{}
		}
	}()
	t.Cleanup(func() { ln.Close(); <-acceptDone })
	ep := "--endpoint=" + ln.Addr().String()
	src, dst := "file:///var/lib/images/a.img", "file:///var/lib/images/b.img"

	for _, tc := range []struct {
		name string
		args []string
		says []string
	}{
		{"copy --rate 10Q", []string{"copy", src, dst, "--rate", "10Q"}, []string{"--rate", "10Q"}},
		{"copy --rate=1e3", []string{"copy", src, dst, "--rate=1e3"}, []string{"--rate", "1e3"}},
		{"copy --rate -1", []string{"copy", src, dst, "--rate=-1"}, []string{"--rate", "-1"}},
		{"copy --wait --rate 10Q", []string{"copy", src, dst, "--wait", "--rate", "10Q"}, []string{"--rate", "10Q"}},
		{"task set-rate ID 10Q", []string{"task", "set-rate", "t-1", "10Q"}, []string{"rate", "10Q", "unknown unit"}},
		{"task set-rate ID 99999999999999999999G", []string{"task", "set-rate", "t-1", "99999999999999999999G"}, []string{"rate", "too large"}},
	} {
		code, msg := run(append([]string{ep, "--data-dir", dir}, tc.args...)...)
		if code != ExitUsage {
			t.Errorf("%s: exit %d, want %d (usage): %s", tc.name, code, ExitUsage, msg)
		}
		for _, s := range tc.says {
			if !strings.Contains(msg, s) {
				t.Errorf("%s: message %q does not name %q", tc.name, msg, s)
			}
		}
	}
	// Any connection is queued on the listener before taskctl returns, so
	// one made by the commands above is accepted by now.
	select {
	case <-accepted:
		t.Fatalf("a refused command connected to the server (%d connections)", conns.Load())
	case <-time.After(200 * time.Millisecond):
	}

	// Control: the same command with a good rate goes to the server (which
	// here drops the connection: exit 3).
	code, msg := run(ep, "--data-dir", dir, "copy", src, dst, "--rate", "10M")
	if code == ExitUsage || conns.Load() == 0 {
		t.Fatalf("copy --rate 10M: exit %d after %d connections, want a dial: %s", code, conns.Load(), msg)
	}
	if code != ExitUnavailable {
		t.Errorf("copy --rate 10M against a server that drops connections: exit %d, want %d: %s", code, ExitUnavailable, msg)
	}
}
