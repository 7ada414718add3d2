// Package bench measures taskd's timing figures on real processes and
// servers and prints them. It asserts nothing: tests do that.
package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/taskd/taskd/internal/stats"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/coord/zk"
	"github.com/taskd/taskd/internal/harness"
)

const usage = `usage: taskd-bench COMMAND [flags]

commands:
  failover   kill -9 the leader of a 3-node cluster, time until the survivors agree on a new leader
  handover   SIGTERM the leader of a 3-node cluster, time until the survivors agree on a new leader
  reconnect  kill the ZooKeeper server a session uses (3-server ensemble), time until the session is confirmed on another server
  idle       RSS and CPU of one idle node on the embedded default
  copy       volume copy against qemu-img convert, cp, dd, nbdcopy and rsync on generated images
  exec       issue 15's figures: exec overhead per task, noop throughput with/without keys, keyed dispatch with 10k waiting over 1k keys
  tasks      task center on a 3-node cluster: dispatch latency, noop throughput, resume after kill -9, task list with 100k finished
  schedules  schedules on a 3-node cluster: tick -> task created latency, leader CPU with 10k idle schedules, kill -9 of the leader at a tick (lost/doubled ticks)
  vip-failover  kill -9 the VIP holder of a 3-node cluster in network namespaces, time until the VIP answers elsewhere (root)
  starve     one node of a 3-node cluster under decreasing CPU quotas (cgroup, root): fences and starvation per quota, the smallest quota without a fence
  console    the web console in headless Chromium with 100k finished and 1k running tasks: first rows after a page load, live update of a new task
  scale      issue 19: a 3-node and then an N-node cluster (-nodes, default 30) on zk or an external etcd (-backend): kill -9 failover, dispatch latency, noop throughput, with the targets
  vip-drain     taskctl vip drain between the nodes of a 3-node cluster in network namespaces, time until the VIP answers on the target (root)
Run "taskd-bench COMMAND -h" for flags. Build first: the command builds taskd itself.
`

// Main runs the named benchmark and returns an exit code.
func Main(args []string, out io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" {
		fmt.Fprint(out, usage)
		return 0
	}
	cmds := map[string]func([]string, io.Writer) error{
		"failover": failover, "handover": handover, "reconnect": reconnect, "idle": idle, "copy": copyBench, "vip-failover": vipFailover, "vip-drain": vipDrain, "tasks": taskBench, "exec": execBench,
		"schedules": schedBench, "scale": scaleBench, "starve": starveBench, "console": consoleBench,
		"arpsample":     arpSample,    // run by vip-failover inside the client namespace
		"inplace-write": inPlaceWrite, // run by copy: its in-place limit line
	}
	f, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(os.Stderr, "unknown command %q\n%s", args[0], usage)
		return 2
	}
	if err := f(args[1:], out); err != nil {
		fmt.Fprintf(os.Stderr, "taskd-bench %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

type env struct {
	dir     string
	bin     string
	backend string
	ens     *harness.Ensemble
	ext     *harness.EtcdProc
	opts    harness.Options
}

// setup builds taskd into a new temporary directory and starts the
// backend's servers; the cleanup stops them and removes the directory.
func setup(backend string, timeout time.Duration) (*env, func(), error) {
	dir, bin, removeDir, err := buildTemp()
	if err != nil {
		return nil, nil, err
	}
	e, stop, err := startEnv(dir, bin, backend, timeout)
	if err != nil {
		removeDir()
		return nil, nil, err
	}
	return e, func() { stop(); removeDir() }, nil
}

// buildTemp builds taskd into a new temporary directory; remove deletes
// the directory (unless TASKD_BENCH_KEEP is set).
func buildTemp() (dir, bin string, remove func(), err error) {
	if dir, err = os.MkdirTemp("", "taskd-bench"); err != nil {
		return "", "", nil, err
	}
	remove = func() {
		if os.Getenv("TASKD_BENCH_KEEP") != "" {
			fmt.Fprintf(os.Stderr, "kept %s (TASKD_BENCH_KEEP)\n", dir)
			return
		}
		os.RemoveAll(dir)
	}
	if bin, _, err = harness.Build(dir); err != nil {
		remove()
		return "", "", nil, err
	}
	fmt.Fprintf(os.Stderr, "taskd-bench: taskd built from %s\n", sourceOf())
	return dir, bin, remove, nil
}

// sourceOf names the source the nodes' taskd was built from: the module
// in the working directory (not the one taskd-bench was built from), with
// its commit when it is a git checkout. A before/after comparison runs
// each side from its own checkout.
func sourceOf() string {
	wd, err := os.Getwd()
	if err != nil {
		return "the working directory"
	}
	out, err := exec.Command("git", "-C", wd, "describe", "--always", "--dirty").Output()
	if err != nil {
		return wd
	}
	return wd + " at " + strings.TrimSpace(string(out))
}

// startEnv starts the servers of backend under dir for nodes running bin:
// nothing for embedded (the nodes form their own etcd cluster), a
// 3-server ZooKeeper ensemble for zk, one external etcd server (Debian's,
// TLS with client certificates and password auth) for etcd. stop kills
// them.
func startEnv(dir, bin, backend string, timeout time.Duration) (e *env, stop func(), err error) {
	e = &env{dir: dir, bin: bin, backend: backend, opts: harness.Options{SessionTimeout: timeout}}
	stop = func() {
		if e.ens != nil {
			e.ens.Close()
		}
		if e.ext != nil {
			e.ext.Kill()
		}
	}
	switch backend {
	case "embedded":
	case "zk":
		e.ens, err = harness.StartEnsemble(filepath.Join(dir, "zk"), 3, nil)
		if err != nil {
			return nil, nil, err
		}
		e.opts.Coordinator, e.opts.PKI = e.ens.URL("/bench"), e.ens.PKI
	case "etcd", "etcd-cert", "etcd-jwt":
		if err := e.startExtEtcd(); err != nil {
			stop()
			return nil, nil, err
		}
	default:
		return nil, nil, fmt.Errorf("backend %q: use embedded, zk, etcd, etcd-cert or etcd-jwt", backend)
	}
	return e, stop, nil
}

// startExtEtcd starts the external etcd server and points the nodes at it
// as an operator would: etcds:// with the node certificates (signed by the
// server's CA, which becomes the cluster's) and taskd's etcd user.
func (e *env) startExtEtcd() error {
	var err error
	if e.ext, err = harness.StartEtcdProc(filepath.Join(e.dir, "etcd"), harness.EtcdProcOptions{JWT: e.backend == "etcd-jwt"}); err != nil {
		return err
	}
	pw := filepath.Join(e.dir, "etcd-password")
	if err := os.WriteFile(pw, []byte(e.ext.Password+"\n"), 0o600); err != nil {
		return err
	}
	e.opts.Coordinator = "etcds://" + strings.TrimPrefix(e.ext.ClientURL, "https://")
	e.opts.PKI = e.ext.PKI
	if !e.certAuth() {
		e.opts.Extra = append(e.opts.Extra, "--etcd-user", e.ext.User, "--etcd-password-file", pw)
	}
	return nil
}

// certAuth: the nodes reach the external etcd with their certificates
// alone (backend etcd-cert); etcd takes the common name as the user.
func (e *env) certAuth() bool { return e.backend == "etcd-cert" }

// startCluster starts n taskd nodes; the caller closes the cluster.
func (e *env) startCluster(n int) (*harness.Cluster, error) {
	c, err := harness.NewCluster(filepath.Join(e.dir, "cluster"), e.bin, n, e.opts)
	if err != nil {
		return nil, err
	}
	if e.certAuth() {
		names := []string{"bench"}
		for _, node := range c.Nodes {
			names = append(names, node.Name)
		}
		if err := e.ext.AddCertUsers(names...); err != nil {
			c.Close()
			return nil, err
		}
	}
	if err := c.StartAll(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func others(c *harness.Cluster, name string) []*harness.Node {
	var out []*harness.Node
	for _, n := range c.Running() {
		if n.Name != name {
			out = append(out, n)
		}
	}
	return out
}

// leaderRound runs one disruption of the leader and returns the time until
// the survivors agree on a successor.
func leaderRound(ctx context.Context, c *harness.Cluster, embedded bool, settle time.Duration, disrupt func(*harness.Node)) (time.Duration, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	st, err := harness.WaitAgreed(ctx, c.Nodes, 0)
	if err != nil {
		return 0, "", fmt.Errorf("no agreed leader before the round: %w", err)
	}
	old := c.Node(st.Leader)
	if embedded {
		if err := harness.WaitFor(ctx, 20*time.Millisecond, func() bool {
			leads, err := old.LeadsRaft(ctx)
			return err == nil && !leads
		}); err != nil {
			return 0, "", fmt.Errorf("leader kept raft leadership: %w", err)
		}
	}
	t := time.NewTimer(settle) // a stable cluster: see docs/operations.md
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return 0, "", ctx.Err()
	}
	start := time.Now()
	disrupt(old)
	nst, err := harness.WaitAgreed(ctx, others(c, old.Name), st.Epoch)
	if err != nil {
		return 0, "", fmt.Errorf("no successor: %w", err)
	}
	took := time.Since(start)
	old.Kill()
	if err := old.Start(); err != nil {
		return 0, "", err
	}
	if _, err := harness.WaitAgreed(ctx, c.Nodes, nst.Epoch-1); err != nil {
		return 0, "", fmt.Errorf("restarted %s did not rejoin: %w", old.Name, err)
	}
	return took, fmt.Sprintf("%s -> %s (epoch %d)", old.Name, nst.Leader, nst.Epoch), nil
}

func leaderBench(name string, args []string, out io.Writer, sig syscall.Signal) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	rounds := fs.Int("n", 10, "rounds")
	backend := fs.String("backend", "embedded", "embedded, zk or etcd")
	timeout := fs.Duration("session-timeout", 6*time.Second, "taskd --session-timeout")
	settle := fs.Duration("settle", 0, "wait before each disruption (default: session timeout + 1s for kill, 1s for term)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *rounds < 1 || *rounds > 200 {
		return errors.New("-n must be 1-200")
	}
	if *settle == 0 {
		*settle = time.Second
		if sig == syscall.SIGKILL {
			*settle = *timeout + time.Second
		}
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
	fmt.Fprintf(out, "%s: backend=%s session-timeout=%v rounds=%d settle=%v\n", name, *backend, *timeout, *rounds, *settle)
	var samples []time.Duration
	for i := range *rounds {
		d, what, err := leaderRound(context.Background(), c, *backend == "embedded", *settle, func(n *harness.Node) { n.Signal(sig) })
		if err != nil {
			return fmt.Errorf("round %d: %w", i+1, err)
		}
		samples = append(samples, d)
		fmt.Fprintf(out, "  round %2d: %-26s %v\n", i+1, what, d.Round(time.Millisecond))
	}
	fmt.Fprintf(out, "%s: %s\n", name, summary(samples))
	return nil
}

func failover(args []string, out io.Writer) error {
	return leaderBench("failover", args, out, syscall.SIGKILL)
}

func handover(args []string, out io.Writer) error {
	return leaderBench("handover", args, out, syscall.SIGTERM)
}

func summary(s []time.Duration) string { return stats.Summary(s) }

// reconnect measures, in-process, how long a ZooKeeper session takes to be
// confirmed on another server after its server is killed.
func reconnect(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("reconnect", flag.ContinueOnError)
	rounds := fs.Int("n", 10, "rounds")
	timeout := fs.Duration("session-timeout", 6*time.Second, "session timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *rounds < 1 || *rounds > 200 {
		return errors.New("-n must be 1-200")
	}
	dir, err := os.MkdirTemp("", "taskd-bench-zk")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ens, err := harness.StartEnsemble(dir, 3, nil)
	if err != nil {
		return err
	}
	defer ens.Close()
	creds, err := ens.PKI.Bundle("bench")
	if err != nil {
		return err
	}
	logOut := io.Discard
	if os.Getenv("TASKD_BENCH_DEBUG") != "" {
		logOut = os.Stderr
	}
	store, err := zk.Open(zk.Config{Servers: ens.Addrs(), Digest: ens.PKI.Secrets.ZKDigest, TLS: ens.PKI.ClientTLS(creds)},
		slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		return err
	}
	defer store.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	sess, err := store.NewSession(ctx, *timeout)
	if err != nil {
		return err
	}
	defer sess.Close(ctx)
	server := func() string { return sess.(interface{ Server() string }).Server() }
	fmt.Fprintf(out, "reconnect: 3-server ZooKeeper ensemble, session-timeout=%v rounds=%d\n", *timeout, *rounds)
	var samples []time.Duration
	expired := 0
	for i := range *rounds {
		var victim *harness.ZKServer
		for _, z := range ens.Servers {
			if z.Addr() == server() {
				victim = z
			}
		}
		if victim == nil {
			return fmt.Errorf("session server %s not found", server())
		}
		start := time.Now()
		victim.Kill()
		err := harness.WaitFor(ctx, 5*time.Millisecond, func() bool {
			st, _ := sess.State()
			return st == coord.StateRunning && server() != victim.Addr() && sess.LastContact().After(start)
		})
		if err != nil {
			return fmt.Errorf("round %d: %w", i+1, err)
		}
		d := time.Since(start)
		select {
		case <-sess.Done():
			expired++
		default:
		}
		samples = append(samples, d)
		fmt.Fprintf(out, "  round %2d: killed zk%d, session confirmed on %s after %v\n", i+1, victim.ID, server(), d.Round(time.Millisecond))
		if err := victim.Start(); err != nil {
			return err
		}
		if err := harness.WaitFor(ctx, 50*time.Millisecond, func() bool { return victim.Mode() != "" }); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "reconnect: %s sessions_expired=%d\n", summary(samples), expired)
	return nil
}

// idle starts one node on the embedded default and samples its RSS and CPU.
func idle(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("idle", flag.ContinueOnError)
	dur := fs.Duration("duration", 60*time.Second, "how long to sample after the node is ready")
	if err := fs.Parse(args); err != nil {
		return err
	}
	e, cleanup, err := setup("embedded", 6*time.Second)
	if err != nil {
		return err
	}
	defer cleanup()
	c, err := e.startCluster(1)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *dur+time.Minute)
	defer cancel()
	if _, err := harness.WaitAgreed(ctx, c.Nodes, 0); err != nil {
		return err
	}
	pid := c.Nodes[0].Proc.PID()
	cpu0, err := cpuTicks(pid)
	if err != nil {
		return err
	}
	start := time.Now()
	var peak, last int64
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for time.Since(start) < *dur {
		<-tick.C
		rss, err := rssKiB(pid)
		if err != nil {
			return err
		}
		last, peak = rss, max(peak, rss)
	}
	cpu1, err := cpuTicks(pid)
	if err != nil {
		return err
	}
	elapsed := time.Since(start)
	cpuSec := float64(cpu1-cpu0) / 100 // USER_HZ
	fmt.Fprintf(out, "idle: single node, embedded etcd, sampled %v after ready\n", elapsed.Round(time.Second))
	fmt.Fprintf(out, "idle: rss_last=%.1fMiB rss_peak=%.1fMiB cpu=%.2fs (%.2f%% of one core)\n",
		float64(last)/1024, float64(peak)/1024, cpuSec, 100*cpuSec/elapsed.Seconds())
	return nil
}

func rssKiB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.ParseInt(strings.Fields(v)[0], 10, 64)
		}
	}
	return 0, errors.New("no VmRSS")
}

func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return ut + st, nil
}
