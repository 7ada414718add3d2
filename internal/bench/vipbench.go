package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/vip"
)

// vipFailover kills the VIP holder (the leader) of a three-node cluster in
// network namespaces, n times, and times until a client namespace sees the
// VIP answer ARP from another node. A sampler asks every 20 ms and counts
// samples answered by two MACs.
func vipFailover(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("vip-failover", flag.ContinueOnError)
	n := fs.Int("n", 20, "kills")
	timeout := fs.Duration("session-timeout", 6*time.Second, "taskd --session-timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *n < 1 || *n > 200 {
		return errors.New("-n must be 1-200")
	}
	if os.Geteuid() != 0 {
		return errors.New("network namespaces need root")
	}
	dir, err := os.MkdirTemp("", "taskd-vip-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	taskd, taskctl, err := harness.Build(filepath.Join(dir, "bin"))
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	c, err := harness.StartVIPCluster(dir, taskd, taskctl, *timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	limit := time.Duration(*n) * (3**timeout + 30*time.Second)
	samples, sampler, err := c.StartSampler(limit, nil, self, "arpsample")
	if err != nil {
		return err
	}
	defer func() { sampler.Signal(syscall.SIGKILL); sampler.Wait() }()

	wait := func(what string, limit time.Duration, cond func() bool) error {
		ctx, cancel := context.WithTimeout(context.Background(), limit)
		defer cancel()
		if err := harness.WaitFor(ctx, 20*time.Millisecond, cond); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	}
	var leader string
	var electedAt time.Time
	if err := wait("first leader", time.Minute, func() bool {
		leader, electedAt = c.Leader("n1")
		return leader != ""
	}); err != nil {
		return err
	}
	fmt.Fprintf(out, "vip-failover: 3 nodes in network namespaces, embedded etcd, session-timeout=%v, kills=%d, ARP sampled every 20 ms from a client namespace\n", *timeout, *n)
	var times []time.Duration
	for round := 1; round <= *n; round++ {
		// Settle: etcd renews every lease when raft leadership moves,
		// which a new leader causes (docs/operations.md).
		if err := wait("settle", 3**timeout, func() bool { return time.Since(electedAt) > *timeout+time.Second }); err != nil {
			return err
		}
		old := leader
		oldMAC, err := c.Lab.MAC(old)
		if err != nil {
			return err
		}
		killed := time.Now()
		c.Kill(old)
		var at time.Time
		var mac string
		if err := wait("vip answered elsewhere", 4**timeout, func() bool {
			var ok bool
			at, mac, ok = vip.FirstAnswer(vip.ReadSamples(samples), killed, oldMAC)
			return ok
		}); err != nil {
			return fmt.Errorf("round %d: %w", round, err)
		}
		took := at.Sub(killed)
		times = append(times, took)
		fmt.Fprintf(out, "  round %2d: kill -9 of %s, vip answers from %s after %v\n", round, old, c.NodeOf(mac), took.Round(time.Millisecond))
		if err := c.Start(old); err != nil {
			return err
		}
		if err := wait("rejoin", time.Minute, func() bool {
			leader, electedAt = c.Leader(old)
			return leader != "" && leader != old
		}); err != nil {
			return fmt.Errorf("round %d: %w", round, err)
		}
	}
	all := vip.ReadSamples(samples)
	fmt.Fprintf(out, "vip-failover: %s (goal <= %v); samples=%d overlap_samples=%d\n",
		summary(times), *timeout+500*time.Millisecond, len(all), vip.Overlaps(all))
	return nil
}

// arpSample is what vip-failover runs in the client namespace.
func arpSample(_ []string, out io.Writer) error {
	ip, src, limit, err := harness.SamplerEnv()
	if err != nil {
		return err
	}
	return vip.SampleARP(out, ip, src, limit)
}
