// Package testenv holds helpers for tests that start real components:
// ZooKeeper servers, taskd processes, free loopback ports.
//
// A test that cannot find a component it needs calls Missing: outside CI the
// test is skipped with the reason; with CI=true it fails, so that nothing
// silently stops being tested.
package testenv

import (
	"fmt"
	"os"
	"testing"

	"github.com/taskd/taskd/internal/harness"
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

// FreePorts reserves n distinct free loopback TCP ports.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	ports, err := harness.FreePorts(n)
	if err != nil {
		t.Fatal(err)
	}
	return ports
}
