package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrNoCPUController: the machine has no cgroup cpu controller a test can
// use (v1 /sys/fs/cgroup/cpu, or v2 with cpu in cgroup.subtree_control).
var ErrNoCPUController = errors.New("no cgroup cpu controller")

// CPUCgroup is a CPU-limited cgroup for starving processes (issue 20):
// cgroup v1's cpu controller, or v2's.
type CPUCgroup struct {
	dir string
	v2  bool
	// home is where each moved PID came from; Close moves it back.
	home map[int]string
}

// CPUControllerAvailable reports whether NewCPUCgroup can work here
// (given root).
func CPUControllerAvailable() bool {
	return fileExists("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") || fileExists("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us") ||
		hasWord("/sys/fs/cgroup/cgroup.subtree_control", "cpu")
}

// NewCPUCgroup creates a cgroup named name with a CFS quota of quotaUS per
// 100 ms period. Close it, even on failure.
func NewCPUCgroup(name string, quotaUS int) (*CPUCgroup, error) {
	cg := &CPUCgroup{home: map[int]string{}}
	switch {
	case fileExists("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"):
		cg.dir = filepath.Join("/sys/fs/cgroup/cpu", name)
	case fileExists("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us"):
		cg.dir = filepath.Join("/sys/fs/cgroup/cpu,cpuacct", name)
	case hasWord("/sys/fs/cgroup/cgroup.subtree_control", "cpu"):
		cg.dir, cg.v2 = filepath.Join("/sys/fs/cgroup", name), true
	default:
		return nil, ErrNoCPUController
	}
	if err := os.Mkdir(cg.dir, 0o755); err != nil {
		return nil, fmt.Errorf("create cgroup: %w", err)
	}
	var err error
	if cg.v2 {
		err = cg.write("cpu.max", fmt.Sprintf("%d 100000", quotaUS))
	} else if err = cg.write("cpu.cfs_period_us", "100000"); err == nil {
		err = cg.write("cpu.cfs_quota_us", strconv.Itoa(quotaUS))
	}
	if err != nil {
		return nil, errors.Join(err, cg.Close())
	}
	return cg, nil
}

// Dir is the cgroup's directory.
func (cg *CPUCgroup) Dir() string { return cg.dir }

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func hasWord(p, w string) bool {
	b, err := os.ReadFile(p)
	return err == nil && slices.Contains(strings.Fields(string(b)), w)
}

func (cg *CPUCgroup) write(file, val string) error {
	if err := os.WriteFile(filepath.Join(cg.dir, file), []byte(val), 0o644); err != nil {
		return fmt.Errorf("cgroup %s <- %s: %w", file, val, err)
	}
	return nil
}

// Move puts pid (all its threads) into the cgroup.
func (cg *CPUCgroup) Move(pid int) error {
	home, err := cg.cgroupOf(pid)
	if err != nil {
		return err
	}
	if _, ok := cg.home[pid]; !ok {
		cg.home[pid] = home
	}
	return cg.write("cgroup.procs", strconv.Itoa(pid))
}

// Lift removes the quota.
func (cg *CPUCgroup) Lift() error {
	if cg.v2 {
		return cg.write("cpu.max", "max 100000")
	}
	return cg.write("cpu.cfs_quota_us", "-1")
}

// cgroupOf is the directory of pid's cgroup in the hierarchy cg is in.
func (cg *CPUCgroup) cgroupOf(pid int) (string, error) {
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

// Release moves every moved process that still lives back to the cgroup
// it came from, and every other process in the cgroup (a child a moved
// process started while it was in: a starved node's exec tasks) to the
// cgroup this one was made in. A process left behind would keep the
// cgroup from being removed.
func (cg *CPUCgroup) Release() error {
	var errs []error
	for pid, home := range cg.home {
		if err := moveTo(home, pid); err != nil {
			errs = append(errs, err)
		}
		delete(cg.home, pid)
	}
	// A child may fork while its parent is moved: a few passes.
	for range 3 {
		b, err := os.ReadFile(filepath.Join(cg.dir, "cgroup.procs"))
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("list cgroup %s: %w", cg.dir, err))
			}
			break
		}
		left := strings.Fields(string(b))
		if len(left) == 0 {
			break
		}
		for _, f := range left {
			if pid, err := strconv.Atoi(f); err == nil {
				if err := moveTo(filepath.Dir(cg.dir), pid); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// moveTo puts pid into the cgroup at dir; a process gone already is not
// an error.
func moveTo(dir string, pid int) error {
	err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644)
	if err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("move pid %d back to %s: %w", pid, dir, err)
	}
	return nil
}

// Close releases the processes and removes the cgroup.
func (cg *CPUCgroup) Close() error {
	err := cg.Release()
	// The kernel lets go of exited tasks asynchronously: retry briefly.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var rerr error
	if WaitFor(ctx, 100*time.Millisecond, func() bool {
		rerr = os.Remove(cg.dir)
		return rerr == nil || errors.Is(rerr, os.ErrNotExist)
	}) == nil {
		return err
	}
	return errors.Join(err, fmt.Errorf("remove cgroup %s: %w", cg.dir, rerr))
}

// StartBusyLoop starts a process that spins on a CPU until killed (by its
// PID, through the returned Proc).
func StartBusyLoop(logPath string) (*Proc, error) {
	return StartProc(logPath, "/bin/sh", "-c", "while :; do :; done")
}
