package bench

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/taskd/taskd/internal/harness"
)

// starveBench (issue 20): for each CPU quota, from the largest down, one
// node of a 3-node cluster runs in a cgroup with that quota (alone, or
// beside a busy loop with -busy) for -duration, and the benchmark counts
// its fences and whether it reported itself starved. The figure is the
// smallest quota at which the node kept its session without fencing.
func starveBench(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("starve", flag.ContinueOnError)
	backend := fs.String("backend", "zk", "embedded or zk")
	quotas := fs.String("quotas", "20000,10000,5000,2000,1000", "CFS quotas to try, in microseconds per 100 ms period, largest first")
	dur := fs.Duration("duration", 5*time.Minute, "how long each quota holds (at most 30m)")
	busy := fs.Bool("busy", false, "run a busy loop in the same cgroup")
	timeout := fs.Duration("session-timeout", 6*time.Second, "taskd --session-timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dur <= 0 || *dur > 30*time.Minute {
		return fmt.Errorf("-duration %v: use (0, 30m]", *dur)
	}
	var qs []int
	for _, f := range strings.Split(*quotas, ",") {
		q, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || q < 1000 || q > 100000 {
			return fmt.Errorf("-quotas: %q is not a quota in 1000-100000 us", f)
		}
		qs = append(qs, q)
	}
	if os.Geteuid() != 0 || !harness.CPUControllerAvailable() {
		return fmt.Errorf("needs root and a cgroup cpu controller")
	}
	e, cleanup, err := setup(*backend, *timeout)
	if err != nil {
		return err
	}
	defer cleanup()
	c, err := e.startCluster(3)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(len(qs))*(*dur+2*time.Minute)+time.Minute)
	defer cancel()
	if _, err := harness.WaitAgreed(ctx, c.Nodes, 0); err != nil {
		return err
	}
	node := c.Nodes[0]
	fmt.Fprintf(out, "starve: backend=%s session_timeout=%v node=%s busy_loop=%v duration=%v per quota\n", *backend, *timeout, node.Name, *busy, *dur)
	smallest := 0
	for _, q := range qs {
		fences, starved, err := starveRound(ctx, e.dir, node, q, *dur, *busy)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "starve: quota=%dus/100ms (%.0f%% of a CPU) fences=%d starved_events=%d exited=%v\n",
			q, float64(q)/1000, fences, starved, node.Proc.Exited())
		if node.Proc.Exited() {
			return fmt.Errorf("%s exited under quota %d", node.Name, q)
		}
		if fences == 0 {
			smallest = q
		}
		// Let it recover before the next quota.
		if err := harness.WaitFor(ctx, time.Second, func() bool {
			_, ok := harness.Agreed(ctx, c.Nodes)
			return ok
		}); err != nil {
			return err
		}
	}
	if smallest == 0 {
		fmt.Fprintf(out, "starve: the node fenced under every quota tried\n")
	} else {
		fmt.Fprintf(out, "starve: smallest quota tried without a fence in %v: %dus per 100ms (%.0f%% of a CPU)\n", *dur, smallest, float64(smallest)/1000)
	}
	return nil
}

// starveRound holds node under quota for d and counts the fences and
// starved events its log shows meanwhile.
func starveRound(ctx context.Context, dir string, node *harness.Node, quota int, d time.Duration, busy bool) (fences, starved int, err error) {
	cg, err := harness.NewCPUCgroup(fmt.Sprintf("taskd-bench-%d-%d", os.Getpid(), quota), quota)
	if err != nil {
		return 0, 0, err
	}
	defer cg.Close()
	if busy {
		p, err := harness.StartBusyLoop(filepath.Join(dir, "busy.log"))
		if err != nil {
			return 0, 0, err
		}
		defer func() { p.Signal(syscall.SIGKILL); p.Wait() }()
		if err := cg.Move(p.PID()); err != nil {
			return 0, 0, err
		}
	}
	before := len(node.Log())
	if err := cg.Move(node.Proc.PID()); err != nil {
		return 0, 0, err
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	case <-t.C:
	}
	if err := cg.Release(); err != nil {
		return 0, 0, err
	}
	log := node.Log()
	if len(log) >= before {
		log = log[before:]
	}
	return strings.Count(log, `"event":"fence_started"`), strings.Count(log, `"event":"starved"`), nil
}
