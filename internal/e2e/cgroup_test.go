package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/testenv"
)

// cpuCgroup is a CPU-limited cgroup the test creates (cgroup v1 cpu
// controller, or v2 with the cpu controller), for starving a process.
type cpuCgroup struct {
	dir string
	v2  bool
	// home is where each moved PID came from; Cleanup moves it back.
	home map[int]string
}

// newCPUCgroup creates taskd-test-RANDOM with a CFS quota of quotaUS per
// 100 ms period. Cleanup (even on failure) moves every moved process back
// to its own cgroup and removes the cgroup.
func newCPUCgroup(t *testing.T, quotaUS int) *cpuCgroup {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Missing(t, "root (creating a cgroup)")
	}
	name := fmt.Sprintf("taskd-test-%d-%d", os.Getpid(), time.Now().UnixNano()%1e9)
	cg := &cpuCgroup{home: map[int]string{}}
	switch {
	case fileExists("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"):
		cg.dir = filepath.Join("/sys/fs/cgroup/cpu", name)
	case fileExists("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us"):
		cg.dir = filepath.Join("/sys/fs/cgroup/cpu,cpuacct", name)
	case hasWord("/sys/fs/cgroup/cgroup.subtree_control", "cpu"):
		cg.dir, cg.v2 = filepath.Join("/sys/fs/cgroup", name), true
	default:
		testenv.Missing(t, "a cgroup cpu controller (v1 /sys/fs/cgroup/cpu, or v2 with cpu in cgroup.subtree_control)")
	}
	if err := os.Mkdir(cg.dir, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(cg.cleanup(t))
	if cg.v2 {
		cg.write(t, "cpu.max", fmt.Sprintf("%d 100000", quotaUS))
	} else {
		cg.write(t, "cpu.cfs_period_us", "100000")
		cg.write(t, "cpu.cfs_quota_us", strconv.Itoa(quotaUS))
	}
	return cg
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func hasWord(p, w string) bool {
	b, err := os.ReadFile(p)
	return err == nil && slices.Contains(strings.Fields(string(b)), w)
}

func (cg *cpuCgroup) write(t *testing.T, file, val string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(cg.dir, file), []byte(val), 0o644); err != nil {
		t.Fatalf("cgroup %s <- %s: %v", file, val, err)
	}
}

// move puts pid (all its threads) into the cgroup.
func (cg *cpuCgroup) move(t *testing.T, pid int) {
	t.Helper()
	home, err := cg.cgroupOf(pid)
	if err != nil {
		t.Fatal(err)
	}
	cg.home[pid] = home
	cg.write(t, "cgroup.procs", strconv.Itoa(pid))
}

// lift removes the quota.
func (cg *cpuCgroup) lift(t *testing.T) {
	t.Helper()
	if cg.v2 {
		cg.write(t, "cpu.max", "max 100000")
	} else {
		cg.write(t, "cpu.cfs_quota_us", "-1")
	}
}

// cgroupOf is the directory of pid's cgroup in the hierarchy cg is in.
func (cg *cpuCgroup) cgroupOf(pid int) (string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	defer f.Close()
	mount := filepath.Dir(cg.dir)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if (cg.v2 && parts[0] == "0") || (!cg.v2 && slices.Contains(strings.Split(parts[1], ","), "cpu")) {
			return filepath.Join(mount, parts[2]), nil
		}
	}
	return "", fmt.Errorf("pid %d: no cpu cgroup in /proc/%d/cgroup", pid, pid)
}

func (cg *cpuCgroup) cleanup(t *testing.T) func() {
	return func() {
		for pid, home := range cg.home {
			err := os.WriteFile(filepath.Join(home, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644)
			if err != nil && !errors.Is(err, syscall.ESRCH) {
				t.Errorf("move pid %d back to %s: %v", pid, home, err)
			}
		}
		// The kernel lets go of exited tasks asynchronously.
		var err error
		for range 50 {
			if err = os.Remove(cg.dir); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("remove cgroup %s: %v", cg.dir, err)
	}
}

// busyLoop starts a process that spins until the test ends; cleanup kills
// it by PID.
func busyLoop(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", "while :; do :; done")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start busy loop: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd.Process.Pid
}
