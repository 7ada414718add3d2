package testenv

import (
	"errors"
	"testing"

	"github.com/taskd/taskd/internal/harness"
)

// StartEnsemble starts n ZooKeeper servers for the test; cleanup kills them.
func StartEnsemble(t testing.TB, n int) *harness.Ensemble {
	t.Helper()
	e, err := harness.StartEnsemble(t.TempDir(), n)
	if errors.Is(err, harness.ErrNoZooKeeper) {
		Missing(t, "%v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}
