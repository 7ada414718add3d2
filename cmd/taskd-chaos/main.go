// Command taskd-chaos runs the fault-injection acceptance suite (see
// internal/chaos and docs/chaos.md). Exit status: 0 when every campaign
// ends with no violation, lost task or unplanned exit; 1 when one does; 2
// when the harness cannot run (not root, a component missing).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/taskd/taskd/internal/chaos"
	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/stats"
	"github.com/taskd/taskd/internal/vipaddr"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "arpsample" {
		// Run by the campaign inside the client namespace.
		ip, src, limit, err := harness.SamplerEnv()
		if err == nil {
			err = vipaddr.SampleARP(os.Stdout, ip, src, limit)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		return
	}
	os.Exit(run())
}

func run() int {
	backend := flag.String("backend", "all", "zk, embedded or all (one campaign each)")
	faults := flag.Int("faults", 10, "faults per campaign (at most)")
	duration := flag.Duration("duration", 75*time.Second, "fault phase per campaign (at most)")
	long := flag.Bool("long", false, "long campaign: 200 faults, up to 2h per backend")
	seed := flag.Uint64("seed", 1, "seed of the fault schedule and the images")
	timeout := flag.Duration("session-timeout", 4*time.Second, "taskd --session-timeout")
	kinds := flag.String("kinds", "", "comma-separated fault kinds to draw from (default: all available)")
	keep := flag.Bool("keep", false, "keep each campaign's logs and data directories even when it passes")
	flag.Parse()
	if *long {
		*faults, *duration = 200, 2*time.Hour
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "taskd-chaos: network namespaces need root")
		return 2
	}
	backends := []string{*backend}
	if *backend == "all" {
		backends = []string{"zk", "embedded"}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "taskd-chaos:", err)
		return 2
	}
	bin, err := os.MkdirTemp("", "taskd-chaos-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, "taskd-chaos:", err)
		return 2
	}
	defer os.RemoveAll(bin)
	taskd, taskctl, err := harness.Build(bin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "taskd-chaos:", err)
		return 2
	}
	code := 0
	var summaries []string
	for _, b := range backends {
		dir, err := os.MkdirTemp("", "taskd-chaos-"+b)
		if err != nil {
			fmt.Fprintln(os.Stderr, "taskd-chaos:", err)
			return 2
		}
		cfg := chaos.Config{Backend: b, Faults: *faults, Duration: *duration, Seed: *seed, SessionTimeout: *timeout,
			Dir: dir, Taskd: taskd, Taskctl: taskctl, Sampler: []string{self, "arpsample"}, Log: os.Stdout}
		if *kinds != "" {
			cfg.Kinds = strings.Split(*kinds, ",")
		}
		rep, err := chaos.Run(ctx, cfg)
		if err != nil {
			fmt.Fprintf(os.Stderr, "taskd-chaos: %s: %v (logs kept in %s)\n", b, err, dir)
			return 2
		}
		for _, p := range rep.Problems {
			fmt.Println("  " + p)
		}
		fmt.Printf("  faults by kind: %v\n", rep.FaultCounts)
		fmt.Printf("  recovery: leader failover %s\n", stats.Summary(rep.LeaderFailover))
		fmt.Printf("  recovery: task resume (last work of one attempt to first of the next) %s\n", stats.Summary(rep.Resume))
		fmt.Printf("  recovery: task resume, gaps with at most one fault %s\n", stats.Summary(rep.ResumeSingle))
		fmt.Printf("  recovery: task resume, gaps with two faults or more %s\n", stats.Summary(rep.ResumeCompound))
		fmt.Printf("  recovery: task resume less the time other tasks of its concurrency key worked in the gap %s\n", stats.Summary(rep.ResumeKeyFree))
		for _, s := range rep.SlowResumes {
			fmt.Println("  " + s.String())
		}
		fmt.Printf("  recovery: vip move (last answer of one holder to first of the next) %s\n", stats.Summary(rep.VIPs))
		for _, s := range rep.SlowVIPMoves {
			fmt.Println("  " + s)
		}
		fmt.Println(rep.Summary())
		summaries = append(summaries, rep.Summary())
		if rep.Violations+rep.Lost+rep.Exits > 0 {
			code = 1
			fmt.Printf("  logs kept in %s\n", dir)
		} else if *keep {
			fmt.Printf("  logs kept in %s (-keep)\n", dir)
		} else {
			os.RemoveAll(filepath.Clean(dir))
		}
	}
	if len(summaries) > 1 {
		fmt.Println(strings.Join(summaries, "\n"))
	}
	return code
}
