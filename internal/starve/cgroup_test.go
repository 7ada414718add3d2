package starve

import (
	"errors"
	"os"
	"path/filepath"
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
