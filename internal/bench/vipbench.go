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
	"syscall"
	"time"

	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/vipaddr"
)

// vipLab starts a three-node cluster in network namespaces with an ARP
// sampler in the client namespace; close removes everything.
type vipLab struct {
	c       *harness.VIPCluster
	samples string
	close   func()
}

func startVIPLab(timeout time.Duration, sampleFor time.Duration) (*vipLab, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("network namespaces need root")
	}
	dir, err := os.MkdirTemp("", "taskd-vip-bench")
	if err != nil {
		return nil, err
	}
	taskd, taskctl, err := harness.Build(filepath.Join(dir, "bin"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	c, err := harness.StartVIPCluster(dir, taskd, taskctl, timeout)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	samples, sampler, err := c.StartSampler(sampleFor, nil, self, "arpsample")
	if err != nil {
		c.Close()
		os.RemoveAll(dir)
		return nil, err
	}
	return &vipLab{c: c, samples: samples, close: func() {
		sampler.Signal(syscall.SIGKILL)
		sampler.Wait()
		c.Close()
		os.RemoveAll(dir)
	}}, nil
}

func waitCond(what string, limit time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	if err := harness.WaitFor(ctx, 20*time.Millisecond, cond); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

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
	lab, err := startVIPLab(*timeout, time.Duration(*n)*(3**timeout+30*time.Second))
	if err != nil {
		return err
	}
	defer lab.close()
	c, samples := lab.c, lab.samples
	var leader string
	var electedAt time.Time
	if err := waitCond("first leader", time.Minute, func() bool {
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
		if err := waitCond("settle", 3**timeout, func() bool { return time.Since(electedAt) > *timeout+time.Second }); err != nil {
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
		if err := waitCond("vip answered elsewhere", 4**timeout, func() bool {
			var ok bool
			at, mac, ok = vipaddr.FirstAnswer(vipaddr.ReadSamples(samples), killed, oldMAC)
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
		if err := waitCond("rejoin", time.Minute, func() bool {
			leader, electedAt = c.Leader(old)
			return leader != "" && leader != old
		}); err != nil {
			return fmt.Errorf("round %d: %w", round, err)
		}
	}
	all := vipaddr.ReadSamples(samples)
	fmt.Fprintf(out, "vip-failover: %s (goal <= %v); samples=%d overlap_samples=%d\n",
		summary(times), *timeout+500*time.Millisecond, len(all), vipaddr.Overlaps(all))
	return nil
}

// vipDrain moves the VIP between the nodes of a three-node cluster with
// taskctl vip drain, n times, and times from the command's start until the
// client namespace sees the new holder answer ARP.
func vipDrain(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("vip-drain", flag.ContinueOnError)
	n := fs.Int("n", 20, "drains")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *n < 1 || *n > 500 {
		return errors.New("-n must be 1-500")
	}
	lab, err := startVIPLab(6*time.Second, time.Duration(*n)*10*time.Second+time.Minute)
	if err != nil {
		return err
	}
	defer lab.close()
	c, samples := lab.c, lab.samples
	var holder string
	if err := waitCond("first holder", time.Minute, func() bool {
		leader, _ := c.Leader("n1")
		_, mac, ok := vipaddr.FirstAnswer(vipaddr.ReadSamples(samples), time.Time{}, "")
		holder = c.NodeOf(mac)
		return leader != "" && ok && holder == leader
	}); err != nil {
		return err
	}
	fmt.Fprintf(out, "vip-drain: 3 nodes in network namespaces, embedded etcd, drains=%d with taskctl vip drain --to NODE, ARP sampled every 20 ms from a client namespace\n", *n)
	var times []time.Duration
	for round := 1; round <= *n; round++ {
		to := harness.VIPNodes[(slices.Index(harness.VIPNodes, holder)+1+round%2)%len(harness.VIPNodes)]
		oldMAC, err := c.Lab.MAC(holder)
		if err != nil {
			return err
		}
		start := time.Now()
		if _, err := c.Ctl("n1", "vip", "drain", "iscsi", "--to", to); err != nil {
			return fmt.Errorf("round %d: %w", round, err)
		}
		var at time.Time
		var mac string
		if err := waitCond("vip answered by the target", 10*time.Second, func() bool {
			var ok bool
			at, mac, ok = vipaddr.FirstAnswer(vipaddr.ReadSamples(samples), start, oldMAC)
			return ok
		}); err != nil {
			return fmt.Errorf("round %d: %w", round, err)
		}
		if got := c.NodeOf(mac); got != to {
			return fmt.Errorf("round %d: drained to %s but %s answers", round, to, got)
		}
		took := at.Sub(start)
		times = append(times, took)
		fmt.Fprintf(out, "  round %2d: %s -> %s, vip answers after %v\n", round, holder, to, took.Round(time.Millisecond))
		holder = to
	}
	all := vipaddr.ReadSamples(samples)
	fmt.Fprintf(out, "vip-drain: %s (goal <= 1s); samples=%d overlap_samples=%d\n", summary(times), len(all), vipaddr.Overlaps(all))
	return nil
}

// arpSample is what vip-failover runs in the client namespace.
func arpSample(_ []string, out io.Writer) error {
	ip, src, limit, err := harness.SamplerEnv()
	if err != nil {
		return err
	}
	return vipaddr.SampleARP(out, ip, src, limit)
}
