package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/stats"
)

// Issue 19's scale targets, printed next to the figures (the bench
// reports; it does not fail on a missed target).
const (
	scaleDispatchP99 = 50 * time.Millisecond // create -> running, p99
	scaleNoopRatio   = 0.7                   // large cluster's noop rate / the 3-node rate
	// A failover target is the session timeout plus this.
	scaleFailoverSlack = time.Second
)

// scaleConfig is the scale command's flags.
type scaleConfig struct {
	backend                          string
	nodes                            int
	timeout, phase                   time.Duration
	failoverN, latN, noopN, creators int
	capacity                         int
}

func (c scaleConfig) validate() error {
	if !slices.Contains([]string{"zk", "etcd", "etcd-cert", "etcd-jwt"}, c.backend) {
		return fmt.Errorf("-backend %q: use zk, etcd, etcd-cert or etcd-jwt (with the embedded store every node is an etcd member; the scale targets are for a shared external store)", c.backend)
	}
	if c.nodes < 4 || c.nodes > 50 {
		return errors.New("-nodes must be 4-50 (the 3-node cluster is always measured as the baseline)")
	}
	if c.phase < 30*time.Second || c.phase > 30*time.Minute {
		return errors.New("-phase-timeout must be 30s-30m")
	}
	if c.timeout < time.Second || c.timeout > 20*time.Second {
		return errors.New("-session-timeout must be 1s-20s (the bench's ZooKeeper allows at most 20s)")
	}
	for _, f := range []struct {
		name        string
		v, min, max int
	}{{"failover-n", c.failoverN, 1, 20}, {"latency-n", c.latN, 10, 10000}, {"noop-n", c.noopN, 100, 100000},
		{"creators", c.creators, 1, 256}, {"runner-capacity", c.capacity, 1, 1024}} {
		if f.v < f.min || f.v > f.max {
			return fmt.Errorf("-%s must be %d-%d", f.name, f.min, f.max)
		}
	}
	return nil
}

// scaleFigures are one cluster's measurements.
type scaleFigures struct {
	nodes    int
	startup  time.Duration
	lat, ack []time.Duration
	noopRate float64
	failover []time.Duration
}

// scaleBench measures a 3-node cluster and then an N-node cluster of the
// same backend, each on its own fresh store servers, and prints the issue
// 19 targets against the figures: failover within the session timeout +
// 1 s, dispatch p99 within 50 ms, and noop throughput at least 70% of the
// 3-node figure.
func scaleBench(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("scale", flag.ContinueOnError)
	var cfg scaleConfig
	fs.StringVar(&cfg.backend, "backend", "zk", "zk (3-server ZooKeeper ensemble), etcd (one external etcd server, nodes log in with a password) etcd-cert (the same server, nodes authenticate with their certificates alone) or etcd-jwt (password logins, the server issuing JWT tokens instead of simple ones)")
	fs.IntVar(&cfg.nodes, "nodes", 30, "nodes of the large cluster (4-50)")
	fs.DurationVar(&cfg.timeout, "session-timeout", 6*time.Second, "taskd --session-timeout")
	fs.DurationVar(&cfg.phase, "phase-timeout", 5*time.Minute, "limit of each phase: start-up, latency, throughput, each failover round")
	fs.IntVar(&cfg.failoverN, "failover-n", 5, "kill -9 rounds of the leader")
	fs.IntVar(&cfg.latN, "latency-n", 200, "tasks timed create -> running, one at a time, through the nodes in turn")
	fs.IntVar(&cfg.noopN, "noop-n", 2000, "noop tasks for the throughput run")
	fs.IntVar(&cfg.creators, "creators", 32, "concurrent clients creating noop tasks, spread over the nodes")
	fs.IntVar(&cfg.capacity, "runner-capacity", 64, "taskd --runner-capacity")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := cfg.validate(); err != nil {
		return err
	}
	dir, bin, remove, err := buildTemp()
	if err != nil {
		return err
	}
	defer remove()
	fmt.Fprintf(out, "scale: backend=%s nodes=%d (baseline 3) session-timeout=%v runner-capacity=%d failover-n=%d latency-n=%d noop-n=%d creators=%d phase-timeout=%v\n",
		cfg.backend, cfg.nodes, cfg.timeout, cfg.capacity, cfg.failoverN, cfg.latN, cfg.noopN, cfg.creators, cfg.phase)
	base, err := cfg.run(out, dir, bin, 3)
	if err != nil {
		return fmt.Errorf("3 nodes: %w", err)
	}
	big, err := cfg.run(out, dir, bin, cfg.nodes)
	if err != nil {
		return fmt.Errorf("%d nodes: %w", cfg.nodes, err)
	}
	cfg.report(out, base, big)
	return nil
}

// run measures one cluster of n nodes on fresh store servers under dir,
// and stops every process it started before it returns.
func (cfg scaleConfig) run(out io.Writer, dir, bin string, n int) (*scaleFigures, error) {
	sub := filepath.Join(dir, fmt.Sprintf("nodes-%d", n))
	if err := os.MkdirAll(sub, 0o755); err != nil {
		return nil, err
	}
	e, stop, err := startEnv(sub, bin, cfg.backend, cfg.timeout)
	if err != nil {
		return nil, fmt.Errorf("store servers: %w", err)
	}
	defer stop()
	e.opts.Extra = append(e.opts.Extra, "--runner-capacity", fmt.Sprint(cfg.capacity))
	f := &scaleFigures{nodes: n}
	fmt.Fprintf(out, "== %d nodes (%s)\n", n, loadAvg())

	ctx, cancel := context.WithTimeout(context.Background(), cfg.phase)
	start := time.Now()
	c, kv, lay, closeCluster, err := e.taskCluster(ctx, n)
	cancel()
	e.printLogins(out)
	if err != nil {
		return nil, fmt.Errorf("start-up (limit %v): %w", cfg.phase, err)
	}
	defer closeCluster()
	f.startup = time.Since(start)
	fmt.Fprintf(out, "  start-up: %d nodes agreed on a leader with %d live runners after %v (%s)\n", n, n, f.startup.Round(time.Millisecond), loadAvg())

	ctx, cancel = context.WithTimeout(context.Background(), cfg.phase)
	f.lat, f.ack, err = dispatchLatency(ctx, c, kv, lay, cfg.latN)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("dispatch latency (limit %v): %w", cfg.phase, err)
	}
	fmt.Fprintf(out, "  dispatch latency create->running (assigned):      %s\n", summary(f.lat))
	fmt.Fprintf(out, "  dispatch latency create->first checkpoint (10ms): %s (%s)\n", summary(f.ack), loadAvg())

	ctx, cancel = context.WithTimeout(context.Background(), cfg.phase)
	var took time.Duration
	meter := e.cpuMeter(c)
	f.noopRate, took, err = noopThroughput(ctx, c, kv, lay, cfg.noopN, cfg.creators)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("noop throughput (limit %v): %w", cfg.phase, err)
	}
	fmt.Fprintf(out, "  noop throughput create->succeeded: %d tasks in %v = %.0f tasks/s (%d creators) (%s)\n",
		cfg.noopN, took.Round(time.Millisecond), f.noopRate, cfg.creators, loadAvg())
	fmt.Fprintf(out, "  noop: CPU during the run, per task: %s\n", meter.perTask(cfg.noopN))

	settle := cfg.timeout + time.Second // as failover: a stable cluster before each kill
	for i := range cfg.failoverN {
		ctx, cancel = context.WithTimeout(context.Background(), cfg.phase)
		d, what, err := leaderRound(ctx, c, false, settle, func(n *harness.Node) { n.Signal(syscall.SIGKILL) })
		cancel()
		if err != nil {
			return nil, fmt.Errorf("failover round %d (limit %v): %w", i+1, cfg.phase, err)
		}
		f.failover = append(f.failover, d)
		fmt.Fprintf(out, "  failover round %d: kill -9 %-24s %v (%s)\n", i+1, what, d.Round(time.Millisecond), loadAvg())
	}
	fmt.Fprintf(out, "  failover kill -9 -> survivors agree: %s\n", summary(f.failover))
	e.printLogins(out)
	return f, nil
}

// printLogins prints, on external etcd, the password logins the server
// has seen so far (after start-up, and at the end of the cluster's run).
func (e *env) printLogins(out io.Writer) {
	if e.ext == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	started, failed, invalid, err := e.ext.Logins(ctx)
	if err != nil {
		fmt.Fprintf(out, "  etcd logins: %v\n", err)
		return
	}
	fmt.Fprintf(out, "  etcd logins (Authenticate calls, a bcrypt check each): %d, %d of them failed; requests refused for an invalid auth token: %d\n", started, failed, invalid)
}

// report prints both clusters' figures side by side, with the targets.
func (cfg scaleConfig) report(out io.Writer, base, big *scaleFigures) {
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}
	failTarget := cfg.timeout + scaleFailoverSlack
	bigFail, baseFail := stats.Quantile(big.failover, 1), stats.Quantile(base.failover, 1)
	bigP99, baseP99 := stats.Quantile(big.lat, 0.99), stats.Quantile(base.lat, 0.99)
	ratio := big.noopRate / base.noopRate
	ms := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	fmt.Fprintf(out, "== %s: %d nodes vs 3 nodes\n", cfg.backend, big.nodes)
	fmt.Fprintf(out, "start-up to agreed leader and all runners live: %v vs %v\n", ms(big.startup), ms(base.startup))
	fmt.Fprintf(out, "failover max: %v vs %v; target <= session timeout + %v = %v: %s\n",
		ms(bigFail), ms(baseFail), scaleFailoverSlack, failTarget, verdict(bigFail <= failTarget))
	fmt.Fprintf(out, "dispatch create->running p99: %v vs %v; target <= %v: %s\n", ms(bigP99), ms(baseP99), scaleDispatchP99, verdict(bigP99 <= scaleDispatchP99))
	fmt.Fprintf(out, "noop throughput: %.0f vs %.0f tasks/s, ratio %.2f; target >= %.2f: %s\n", big.noopRate, base.noopRate, ratio, scaleNoopRatio, verdict(ratio >= scaleNoopRatio))
}

// loadAvg is the machine's 1, 5 and 15 minute load averages.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "load ?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "load ?"
	}
	return "load " + strings.Join(f[:3], " ")
}
