// Package testenv holds helpers for tests that start real components:
// ZooKeeper servers, taskd processes, free loopback ports.
//
// A test that cannot find a component it needs calls Missing: outside CI the
// test is skipped with the reason; with CI=true it fails, so that nothing
// silently stops being tested.
package testenv

import (
	"fmt"
	"net"
	"os"
	"testing"
)

// InCI reports whether the tests run under CI (CI=true).
func InCI() bool { return os.Getenv("CI") == "true" }

// Missing skips the test, or fails it under CI.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("required component missing (CI=true forbids skipping): %s", msg)
	}
	t.Skipf("component missing: %s (run `make test` to install it)", msg)
}

// FreePorts reserves n distinct free loopback TCP ports. The ports are
// released before returning, so a race with other processes is possible but
// unlikely on a test machine.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, 0, n)
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("reserve port: %v", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}
