package starve

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, p, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCgroupRead(t *testing.T) {
	v1stat := "nr_periods 120\nnr_throttled 90\nthrottled_time 4500000000\nnr_bursts 0\n"
	v2stat := "usage_usec 10\nnr_periods 50\nnr_throttled 5\nthrottled_usec 250000\n"
	cases := []struct {
		name, cgroup, mountinfo, statPath, stat string
		want                                    counters
		wantErr                                 error
	}{
		{"v1 cpu hierarchy", "2:cpuacct:/\n1:cpu:/taskd-x\n0::/\n",
			"30 25 0:26 / /sys/fs/cgroup/cpu rw,nosuid shared:9 - cgroup cgroup rw,cpu\n31 25 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
			"sys/fs/cgroup/cpu/taskd-x", v1stat, counters{periods: 120, throttledPeriods: 90, throttledTime: 4500 * time.Millisecond}, nil},
		{"v1 cpu,cpuacct mounted in a container", "4:cpu,cpuacct:/docker/abc/system.slice\n",
			"40 30 0:30 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro - cgroup cgroup rw,cpu,cpuacct\n",
			"sys/fs/cgroup/cpu,cpuacct/system.slice", v1stat, counters{periods: 120, throttledPeriods: 90, throttledTime: 4500 * time.Millisecond}, nil},
		{"v2 unified", "0::/system.slice/taskd.service\n",
			"25 1 0:23 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n",
			"sys/fs/cgroup/system.slice/taskd.service", v2stat, counters{periods: 50, throttledPeriods: 5, throttledTime: 250 * time.Millisecond}, nil},
		{"v2 without the cpu controller", "0::/x\n",
			"25 1 0:23 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
			"sys/fs/cgroup/x", "usage_usec 10\n", counters{}, errNoCPUController},
		{"no cgroup file system", "0::/x\n", "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n", "", "", counters{}, errNoCPUController},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, filepath.Join(dir, "proc/cgroup"), c.cgroup)
			writeFile(t, filepath.Join(dir, "proc/mountinfo"), c.mountinfo)
			if c.statPath != "" {
				writeFile(t, filepath.Join(dir, c.statPath, "cpu.stat"), c.stat)
			}
			got, err := cgroupFS{procSelf: filepath.Join(dir, "proc"), root: dir}.read()
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("err %v, want %v", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c.want.dir = filepath.Join(dir, c.statPath)
			if got != c.want {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestDelta(t *testing.T) {
	a := counters{dir: "/a", periods: 10, throttledPeriods: 2, throttledTime: time.Second}
	b := counters{dir: "/a", periods: 30, throttledPeriods: 12, throttledTime: 3 * time.Second}
	if d := delta(a, b); d != (Throttle{Known: true, Periods: 20, ThrottledPeriods: 10, ThrottledTime: 2 * time.Second}) {
		t.Fatalf("delta %+v", d)
	}
	moved := b
	moved.dir = "/b"
	if d := delta(a, moved); d.Known {
		t.Fatalf("delta across a cgroup move is known: %+v", d)
	}
	if d := delta(b, a); d.Known {
		t.Fatalf("delta of counters going backwards is known: %+v", d)
	}
	if d := delta(counters{}, a); d.Known {
		t.Fatalf("delta without a previous reading is known: %+v", d)
	}
}

func TestUnescape(t *testing.T) {
	if got := unescape(`/a\040b\\c`); got != `/a b\\c` {
		t.Fatalf("unescape: %q", got)
	}
}

// TestCgroupReadHost reads this machine's own cgroup: where a cpu
// controller is mounted the counters must be readable.
func TestCgroupReadHost(t *testing.T) {
	got, err := cgroupFS{procSelf: "/proc/self"}.read()
	if errors.Is(err, errNoCPUController) {
		t.Skipf("no cpu controller on this machine: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if got.throttledPeriods > got.periods {
		t.Fatalf("throttled %d of %d periods", got.throttledPeriods, got.periods)
	}
}

// v2CPUStat is a cgroup v2 cpu.stat as Linux 6.1 writes it for a cgroup
// with the cpu controller enabled and a cpu.max quota: nr_bursts,
// burst_usec and the usage lines must not confuse the parser, and
// throttled_usec is in microseconds (v1's throttled_time is nanoseconds).
const v2CPUStat = `usage_usec 48213377
user_usec 30110021
system_usec 18103356
core_sched.force_idle_usec 0
nr_periods 9312
nr_throttled 8871
throttled_usec 871234567
nr_bursts 0
burst_usec 0
`

// TestCgroupV2CPUStat: the v2 counters (nr_periods, nr_throttled,
// throttled_usec) read from kernel-shaped fixture text, and the period's
// throttling computed from two readings, as the monitor does each second.
func TestCgroupV2CPUStat(t *testing.T) {
	dir := t.TempDir()
	// A hybrid host without a v1 cpu hierarchy, and a v2 host inside a
	// cgroup namespace (mount root /, path relative to it).
	writeFile(t, filepath.Join(dir, "proc/cgroup"), "0::/system.slice/taskd.service\n")
	writeFile(t, filepath.Join(dir, "proc/mountinfo"),
		"24 29 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n"+
			"28 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n")
	stat := filepath.Join(dir, "sys/fs/cgroup/system.slice/taskd.service/cpu.stat")
	writeFile(t, stat, v2CPUStat)
	fs := cgroupFS{procSelf: filepath.Join(dir, "proc"), root: dir}
	first, err := fs.read()
	if err != nil {
		t.Fatal(err)
	}
	want := counters{dir: filepath.Dir(stat), periods: 9312, throttledPeriods: 8871, throttledTime: 871234567 * time.Microsecond}
	if first != want {
		t.Fatalf("first reading %+v, want %+v", first, want)
	}
	// One second later: 10 more periods, 9 of them throttled for 90 ms.
	writeFile(t, stat, strings.NewReplacer("nr_periods 9312", "nr_periods 9322", "nr_throttled 8871", "nr_throttled 8880",
		"throttled_usec 871234567", "throttled_usec 871324567").Replace(v2CPUStat))
	second, err := fs.read()
	if err != nil {
		t.Fatal(err)
	}
	got := delta(first, second)
	if got != (Throttle{Known: true, Periods: 10, ThrottledPeriods: 9, ThrottledTime: 90 * time.Millisecond}) {
		t.Fatalf("throttling in the period %+v", got)
	}
	s := Sample{Throttle: got}
	if !s.throttled() {
		t.Fatal("9 of 10 periods throttled does not count as throttled")
	}

	// A cgroup with a quota that was never hit: counters zero, known.
	writeFile(t, stat, "usage_usec 10\nuser_usec 5\nsystem_usec 5\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n")
	if c, err := fs.read(); err != nil || c.periods != 0 || c.throttledTime != 0 {
		t.Fatalf("untouched quota: %+v %v", c, err)
	}
	// Without the cpu controller v2 writes only the usage lines: no
	// throttling counters, an error the monitor reports once.
	writeFile(t, stat, "usage_usec 48213377\nuser_usec 30110021\nsystem_usec 18103356\n")
	if _, err := fs.read(); !errors.Is(err, errNoCPUController) {
		t.Fatalf("v2 without cpu: err %v, want errNoCPUController", err)
	}
}

// TestParseKV: cpu.stat lines that are not "key unsigned-number" are
// skipped, never misread.
func TestParseKV(t *testing.T) {
	got := parseKV([]byte("nr_periods 12\nnr_throttled -1\ngarbage\nthrottled_usec 18446744073709551615\n\nnr_bursts  7\nusage_usec 1 2\n"))
	want := map[string]uint64{"nr_periods": 12, "throttled_usec": 18446744073709551615, "nr_bursts": 7}
	if len(got) != len(want) {
		t.Fatalf("parsed %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("%s = %d, want %d (all: %v)", k, got[k], v, got)
		}
	}
}
