package starve

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// counters are a cgroup's cumulative CPU throttling counters.
type counters struct {
	dir              string // the cgroup directory they were read from
	periods          uint64
	throttledPeriods uint64
	throttledTime    time.Duration
}

// errNoCPUController: the process's cgroup has no readable CPU throttling
// counters (no cpu controller mounted, or cgroup v2 without it enabled).
var errNoCPUController = errors.New("no cgroup cpu controller with throttling counters")

// cgroupFS finds and reads the process's CPU cgroup. The paths are
// re-read at each sample: the process may be moved to another cgroup.
type cgroupFS struct {
	procSelf string // /proc/self, or a test directory
	root     string // prefix for mount points ("" in production)
}

// read returns the counters of the cgroup the process is in now.
func (c cgroupFS) read() (counters, error) {
	dir, v2, err := c.cpuDir()
	if err != nil {
		return counters{}, err
	}
	b, err := os.ReadFile(filepath.Join(dir, "cpu.stat"))
	if err != nil {
		return counters{}, fmt.Errorf("cgroup cpu.stat: %w", err)
	}
	got := parseKV(b)
	out := counters{dir: dir}
	var ok bool
	if out.periods, ok = got["nr_periods"]; !ok {
		return counters{}, fmt.Errorf("%s/cpu.stat has no nr_periods: %w", dir, errNoCPUController)
	}
	out.throttledPeriods = got["nr_throttled"]
	if v2 {
		out.throttledTime = time.Duration(got["throttled_usec"]) * time.Microsecond
	} else {
		out.throttledTime = time.Duration(got["throttled_time"]) // nanoseconds
	}
	return out, nil
}

func parseKV(b []byte) map[string]uint64 {
	out := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64); err == nil {
			out[k] = n
		}
	}
	return out
}

// cpuDir is the directory of the process's cgroup in the hierarchy that
// has the cpu controller: the v1 hierarchy listing "cpu" if there is one,
// else the v2 unified hierarchy.
func (c cgroupFS) cpuDir() (dir string, v2 bool, err error) {
	cg, err := os.ReadFile(filepath.Join(c.procSelf, "cgroup"))
	if err != nil {
		return "", false, fmt.Errorf("read cgroup membership: %w", err)
	}
	mi, err := os.ReadFile(filepath.Join(c.procSelf, "mountinfo"))
	if err != nil {
		return "", false, fmt.Errorf("read mountinfo: %w", err)
	}
	var unified string
	haveUnified := false
	for line := range strings.Lines(string(cg)) {
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			unified, haveUnified = parts[2], true
			continue
		}
		if slices.Contains(strings.Split(parts[1], ","), "cpu") {
			if mnt, root, ok := findMount(mi, "cgroup", "cpu"); ok {
				return c.join(mnt, root, parts[2]), false, nil
			}
		}
	}
	if haveUnified {
		if mnt, root, ok := findMount(mi, "cgroup2", ""); ok {
			return c.join(mnt, root, unified), true, nil
		}
	}
	return "", false, errNoCPUController
}

func (c cgroupFS) join(mnt, root, path string) string {
	rel := path
	if root != "/" {
		rel = strings.TrimPrefix(path, root)
	}
	return filepath.Join(c.root, mnt, rel)
}

// findMount returns the mount point and mount root of a cgroup file
// system of fstype; for v1, one whose super options list controller.
func findMount(mountinfo []byte, fstype, controller string) (mnt, root string, ok bool) {
	for line := range strings.Lines(string(mountinfo)) {
		pre, post, found := strings.Cut(strings.TrimSpace(line), " - ")
		if !found {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 || g[0] != fstype {
			continue
		}
		if controller != "" && !slices.Contains(strings.Split(g[2], ","), controller) {
			continue
		}
		return unescape(f[4]), unescape(f[3]), true
	}
	return "", "", false
}

// unescape undoes mountinfo's octal escapes of space, tab, newline, '\'.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// delta is the throttling between two readings; unknown if the cgroup
// changed or a counter went backwards (a new cgroup with the same path).
func delta(prev, cur counters) Throttle {
	if prev.dir == "" || prev.dir != cur.dir || cur.periods < prev.periods || cur.throttledPeriods < prev.throttledPeriods || cur.throttledTime < prev.throttledTime {
		return Throttle{}
	}
	return Throttle{Known: true, Periods: cur.periods - prev.periods, ThrottledPeriods: cur.throttledPeriods - prev.throttledPeriods,
		ThrottledTime: cur.throttledTime - prev.throttledTime}
}
