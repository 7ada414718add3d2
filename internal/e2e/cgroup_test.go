package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/testenv"
)

// newCPUCgroup creates taskd-test-RANDOM with a CFS quota of quotaUS per
// 100 ms; cleanup (even on failure) moves every moved process back to its
// own cgroup and removes the cgroup.
func newCPUCgroup(t *testing.T, quotaUS int) *harness.CPUCgroup {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Missing(t, "root (creating a cgroup)")
	}
	cg, err := harness.NewCPUCgroup(fmt.Sprintf("taskd-test-%d-%d", os.Getpid(), time.Now().UnixNano()%1e9), quotaUS)
	if errors.Is(err, harness.ErrNoCPUController) {
		testenv.Missing(t, "a cgroup cpu controller (v1 /sys/fs/cgroup/cpu, or v2 with cpu in cgroup.subtree_control)")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cg.Close(); err != nil {
			t.Error(err)
		}
	})
	return cg
}

// busyLoop starts a spinning process; cleanup kills it by PID.
func busyLoop(t *testing.T) int {
	t.Helper()
	p, err := harness.StartBusyLoop(filepath.Join(t.TempDir(), "busy.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Signal(syscall.SIGKILL); p.Wait() })
	return p.PID()
}
