package etcd_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a goroutine outlives the tests: watchers,
// heartbeats and sessions must all be joined when closed.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
