package bench

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/harness"
)

// starveBench (issue 20): for each load (idle, or N long sleep tasks
// pinned to the node) and each CPU quota, from the largest down, one node
// of a 3-node cluster runs in a cgroup with that quota (alone, or beside a
// busy loop with -busy) for -duration, and the benchmark counts its fences
// and whether it reported itself starved. The figure, per load, is the
// smallest quota at which the node kept its session without fencing.
func starveBench(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("starve", flag.ContinueOnError)
	backend := fs.String("backend", "zk", "embedded, zk or etcd")
	quotas := fs.String("quotas", "20000,10000,5000,3000,2000,1000", "CFS quotas to try, in microseconds per 100 ms period, largest first")
	loads := fs.String("tasks", "0,8", "running tasks on the starved node, one round of every quota per entry: 0 is idle; N pins N sleep tasks to it (at most its runner capacity, 8 by default)")
	dur := fs.Duration("duration", 5*time.Minute, "how long each quota holds (at most 30m)")
	busy := fs.Bool("busy", false, "run a busy loop in the same cgroup")
	timeout := fs.Duration("session-timeout", 6*time.Second, "taskd --session-timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dur <= 0 || *dur > 30*time.Minute {
		return fmt.Errorf("-duration %v: use (0, 30m]", *dur)
	}
	qs, err := intList("-quotas", *quotas, 1000, 100000)
	if err != nil {
		return err
	}
	ts, err := intList("-tasks", *loads, 0, 8)
	if err != nil {
		return err
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
	rounds := time.Duration(len(qs) * len(ts))
	ctx, cancel := context.WithTimeout(context.Background(), rounds*(*dur+3*time.Minute)+time.Minute)
	defer cancel()
	if _, err := harness.WaitAgreed(ctx, c.Nodes, 0); err != nil {
		return err
	}
	node := c.Nodes[0]
	fmt.Fprintf(out, "starve: backend=%s session_timeout=%v node=%s busy_loop=%v duration=%v per quota\n", *backend, *timeout, node.Name, *busy, *dur)
	for _, n := range ts {
		smallest := 0
		for _, q := range qs {
			// A node still starved from the previous quota (within its
			// recovery grace) would enter this round starved and record
			// no new starved event: wait until it has recovered.
			if err := waitUnstarved(ctx, node); err != nil {
				return err
			}
			r := starveRound{dir: e.dir, c: c, node: node, quota: q, d: *dur, busy: *busy, tasks: n}
			res, err := r.run(ctx)
			if err != nil {
				return err
			}
			first := "none"
			if res.firstStarved > 0 {
				first = res.firstStarved.Round(100 * time.Millisecond).String()
			}
			fmt.Fprintf(out, "starve: tasks=%d quota=%dus/100ms (%.0f%% of a CPU) fences=%d starved_events=%d first_starved_after=%s exited=%v\n",
				n, q, float64(q)/1000, res.fences, res.starved, first, node.Proc.Exited())
			if node.Proc.Exited() {
				return fmt.Errorf("%s exited under quota %d", node.Name, q)
			}
			if res.fences == 0 {
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
			fmt.Fprintf(out, "starve: tasks=%d: the node fenced under every quota tried\n", n)
		} else {
			fmt.Fprintf(out, "starve: tasks=%d: smallest quota tried without a fence in %v: %dus per 100ms (%.0f%% of a CPU)\n", n, *dur, smallest, float64(smallest)/1000)
		}
	}
	return nil
}

// intList parses a comma-separated list of integers in [lo, hi].
func intList(flagName, s string, lo, hi int) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < lo || v > hi {
			return nil, fmt.Errorf("%s: %q is not a number in %d-%d", flagName, f, lo, hi)
		}
		out = append(out, v)
	}
	return out, nil
}

// starveRound is one quota held on one node for d, with tasks sleep tasks
// running on it.
type starveRound struct {
	dir   string
	c     *harness.Cluster
	node  *harness.Node
	quota int
	d     time.Duration
	busy  bool
	tasks int
}

// roundResult is what the node's log showed during a round.
type roundResult struct {
	fences, starved int
	// firstStarved is the time from the squeeze to the first starved
	// event (0: none).
	firstStarved time.Duration
}

// waitUnstarved waits until node says it is not starved (up to 2 min: the
// recovery grace is max(10 s, 2 × session timeout)).
func waitUnstarved(ctx context.Context, node *harness.Node) error {
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := harness.WaitFor(wctx, time.Second, func() bool {
		r, err := node.List(wctx)
		return err == nil && r.Self == node.Name && !r.SelfStarved
	}); err != nil {
		return fmt.Errorf("%s still starved (or silent) 2 min after its quota was lifted: %w", node.Name, err)
	}
	return nil
}

// run holds the node under the quota for d and counts the fences and
// starved events its log shows meanwhile.
func (r starveRound) run(ctx context.Context) (res roundResult, err error) {
	ids, err := r.startTasks(ctx)
	defer r.cancelTasks(ids)
	if err != nil {
		return res, err
	}
	cg, err := harness.NewCPUCgroup(fmt.Sprintf("taskd-bench-%d-%d-%d", os.Getpid(), r.quota, r.tasks), r.quota)
	if err != nil {
		return res, err
	}
	defer cg.Close()
	if r.busy {
		p, err := harness.StartBusyLoop(filepath.Join(r.dir, "busy.log"))
		if err != nil {
			return res, err
		}
		defer func() { p.Signal(syscall.SIGKILL); p.Wait() }()
		if err := cg.Move(p.PID()); err != nil {
			return res, err
		}
	}
	before := len(r.node.Log())
	squeezed := time.Now()
	if err := cg.Move(r.node.Proc.PID()); err != nil {
		return res, err
	}
	t := time.NewTimer(r.d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return res, ctx.Err()
	case <-t.C:
	}
	if err := cg.Release(); err != nil {
		return res, err
	}
	log := r.node.Log()
	if len(log) >= before {
		log = log[before:]
	}
	res.fences, res.starved = strings.Count(log, `"event":"fence_started"`), strings.Count(log, `"event":"starved"`)
	res.firstStarved = firstEventAfter(log, "starved", squeezed)
	return res, nil
}

// firstEventAfter is the time from since to the first JSON log line with
// "event" ev (0 when there is none).
func firstEventAfter(log, ev string, since time.Time) time.Duration {
	for line := range strings.Lines(log) {
		if !strings.Contains(line, `"event":"`+ev+`"`) {
			continue
		}
		var l struct {
			Time time.Time `json:"time"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Time.After(since) {
			return l.Time.Sub(since)
		}
	}
	return 0
}

// startTasks creates r.tasks sleep tasks pinned to the node, outlasting
// the round, and waits until all run there (before the quota: the load is
// there when the squeeze begins).
func (r starveRound) startTasks(ctx context.Context) ([]string, error) {
	var ids []string
	for i := range r.tasks {
		id, err := createTask(ctx, r.c.Nodes[1], &taskdv1.CreateTaskRequest{Type: "sleep", Node: r.node.Name,
			Spec: fmt.Sprintf(`{"duration":%q}`, (r.d + 5*time.Minute).String())})
		if err != nil {
			return ids, fmt.Errorf("create task %d pinned to %s: %w", i, r.node.Name, err)
		}
		ids = append(ids, id)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	err := harness.WaitFor(wctx, 200*time.Millisecond, func() bool {
		for _, id := range ids {
			t, err := r.c.Nodes[1].Client().Tasks.GetTask(wctx, connect.NewRequest(&taskdv1.GetTaskRequest{Id: id}))
			if err != nil || t.Msg.Task.State != "running" || t.Msg.Task.Runner != r.node.Name {
				return false
			}
		}
		return true
	})
	if err != nil {
		return ids, fmt.Errorf("%d tasks pinned to %s not all running: %w", r.tasks, r.node.Name, err)
	}
	return ids, nil
}

// cancelTasks cancels the round's tasks (best effort: a leftover sleep
// task ends by itself after its duration).
func (r starveRound) cancelTasks(ids []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, id := range ids {
		_, _ = r.c.Nodes[1].Client().Tasks.CancelTask(ctx, connect.NewRequest(&taskdv1.TaskRef{Id: id}))
	}
}
