package bench

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/taskd/taskd/internal/harness"
)

// copyTool is one contender in a set: how to reset its target (untimed),
// the timed command, and what to clean up after.
type copyTool struct {
	name   string
	argv   []string
	target string // the file the copy ends in
	reset  func() error
	stop   func() []*syscall.Rusage // servers of the NBD path
	limit  limitKind                // a dd run of the set's limit line, not a copy
	// incremental marks the set's incremental rows (compared with each
	// other and with the full copy, not with the other tools); they copy
	// source (their own, not the set's).
	incremental incrRole
	source      string
	// ours: one of taskd's rows, compared with every other tool of the
	// set (not only through the first row).
	ours bool
	// fullCopy: taskd's full copy in a set whose first row is incremental
	// (the reference of the in-place limit's floor ratio).
	fullCopy bool
}

type copyResult struct {
	walls          []time.Duration
	cpu            []float64
	maxRSS         int64
	readB, writeB  []int64
	du             int64
	correct        string
	logicalBytes   int64
	correctChecked bool
}

type copySet struct {
	name   string
	source string // expected content of every target
	size   int64
	tools  []*copyTool
	// The limit line: what the first tool has to read and write at
	// least, timed with dd in the same repetitions.
	limitRead, limitWrite int64
}

func copyBench(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("copy", flag.ContinueOnError)
	quick := fs.Bool("quick", false, "1 GiB images instead of 4 GiB")
	reps := fs.Int("reps", 5, "repetitions; the tools take turns within each")
	dirFlag := fs.String("dir", "", "work directory (default: new under /var/tmp); needs about 4x the image size free")
	drop := fs.Bool("drop-caches", true, "sync and drop the page cache before every timed run (needs root)")
	setsFlag := fs.String("sets", "file4k,sparse25,sparse25-halfzero,random100,incremental,dirty-bitmap,nbd", "sets to run")
	seed := fs.Uint64("seed", 1, "image generator seed")
	keep := fs.Bool("keep", false, "keep the work directory")
	sizeMiB := fs.Int64("size-mib", 0, "image size in MiB (overrides -quick; for a smoke run)")
	granularity := fs.Int("bitmap-granularity", 4096, "dirty bitmap granularity in bytes for the dirty-bitmap set (qemu's default is 65536)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *reps < 1 || *reps > 50 {
		return errors.New("-reps must be 1-50")
	}
	size := int64(4 << 30)
	if *quick {
		size = 1 << 30
	}
	if *sizeMiB > 0 {
		size = *sizeMiB << 20
	}
	dir := *dirFlag
	if dir == "" {
		d, err := os.MkdirTemp("/var/tmp", "taskd-copy-bench")
		if err != nil {
			return err
		}
		dir = d
	}
	if !*keep {
		defer os.RemoveAll(dir)
	}
	for _, tool := range []string{"qemu-img", "qemu-nbd", "nbdcopy", "rsync", "cmp", "cp", "dd", "sync"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not installed (scripts/test-deps.sh --bench installs the benchmark's tools): %w", tool, err)
		}
	}
	taskd, _, err := harness.Build(filepath.Join(dir, "bin"))
	if err != nil {
		return err
	}
	taskdCopy, err := harness.BuildCopy(filepath.Join(dir, "bin"))
	if err != nil {
		return err
	}
	bins := copyBins{copy: taskdCopy, taskd: taskd}
	if *drop && os.Geteuid() != 0 {
		fmt.Fprintln(out, "note: not root, page cache not dropped between runs")
		*drop = false
	}

	gen := imageGen{seed: *seed, size: size}
	img := func(name string) string { return filepath.Join(dir, name+".raw") }
	fmt.Fprintf(out, "copy benchmark: images of %s, seed %d, %d repetitions, page cache dropped: %v, dir %s\n",
		humanSize(size), *seed, *reps, *drop, dir)
	var sets []*copySet
	for _, name := range strings.Split(*setsFlag, ",") {
		s, err := makeSet(name, gen, dir, img, bins, *granularity)
		if err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
		if err := addLimit(s, name, gen, dir, img); err != nil {
			return fmt.Errorf("set %s: limit line: %w", name, err)
		}
		sets = append(sets, s)
	}

	for _, s := range sets {
		results := map[string]*copyResult{}
		for rep := range *reps {
			for _, t := range s.tools {
				r := results[t.name]
				if r == nil {
					r = &copyResult{logicalBytes: s.size}
					switch t.limit {
					case limitRead:
						r.logicalBytes = s.limitRead
					case limitWrite, limitInPlace:
						r.logicalBytes = s.limitWrite
					}
					results[t.name] = r
				}
				want := s.source
				if t.source != "" {
					want = t.source
				}
				if err := runTool(t, r, want, *drop); err != nil {
					return fmt.Errorf("set %s, %s, repetition %d: %w", s.name, t.name, rep+1, err)
				}
			}
		}
		printSet(out, s, results)
	}
	return nil
}

func runTool(t *copyTool, r *copyResult, source string, drop bool) error {
	if err := t.reset(); err != nil {
		return fmt.Errorf("reset: %w", err)
	}
	if drop {
		if err := dropCaches(); err != nil {
			return err
		}
	}
	start := time.Now()
	cmd := exec.Command(t.argv[0], t.argv[1:]...)
	outb, err := cmd.CombinedOutput()
	if err != nil {
		if t.stop != nil {
			t.stop()
		}
		return fmt.Errorf("%s: %v\n%s", strings.Join(t.argv, " "), err, outb)
	}
	rus := []*syscall.Rusage{cmd.ProcessState.SysUsage().(*syscall.Rusage)}
	if t.limit != limitRead {
		// Every tool's time includes making the target durable; for
		// tools that flush themselves this sync finds nothing left.
		syncCmd := exec.Command("sync", t.target)
		if out, err := syncCmd.CombinedOutput(); err != nil {
			return fmt.Errorf("sync %s: %v: %s", t.target, err, out)
		}
		rus = append(rus, syncCmd.ProcessState.SysUsage().(*syscall.Rusage))
	}
	wall := time.Since(start)
	if t.stop != nil {
		rus = append(rus, t.stop()...)
	}
	var cpu float64
	var rd, wr int64
	for _, ru := range rus {
		if ru == nil {
			continue
		}
		cpu += tv(ru.Utime) + tv(ru.Stime)
		rd += ru.Inblock * 512
		wr += ru.Oublock * 512
		r.maxRSS = max(r.maxRSS, ru.Maxrss)
	}
	r.walls = append(r.walls, wall)
	r.cpu = append(r.cpu, cpu)
	r.readB = append(r.readB, rd)
	r.writeB = append(r.writeB, wr)
	if t.limit != limitNone {
		r.correct = "(limit)"
		return nil
	}
	var st syscall.Stat_t
	if err := syscall.Stat(t.target, &st); err != nil {
		return err
	}
	r.du = st.Blocks * 512
	if !r.correctChecked {
		r.correctChecked = true
		out, err := runQuiet("cmp", source, t.target)
		r.correct = "cmp ok"
		if err != nil {
			r.correct = "DIFFERS: " + strings.TrimSpace(out)
		}
	}
	return nil
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

func dropCaches() error {
	if out, err := runQuiet("sync"); err != nil {
		return fmt.Errorf("sync: %v %s", err, out)
	}
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		return fmt.Errorf("drop caches: %w", err)
	}
	return nil
}

// removeFiles removes each path that exists.
func removeFiles(paths ...string) error {
	for _, p := range paths {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

func runQuiet(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

func median[T int64 | float64 | time.Duration](v []T) T {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func humanSize(n int64) string { return humanize.IBytes(uint64(max(n, 0))) }

func printSet(out io.Writer, s *copySet, results map[string]*copyResult) {
	fmt.Fprintf(out, "\n### %s (%s logical)\n\n", s.name, humanSize(s.size))
	fmt.Fprintln(out, "| tool | wall p50 (min-max) | GB/s | read | written | CPU s | peak RSS | target du | correct |")
	fmt.Fprintln(out, "|---|---|---|---|---|---|---|---|---|")
	for _, t := range s.tools {
		r := results[t.name]
		w := median(r.walls)
		fmt.Fprintf(out, "| %s | %.3fs (%.3f-%.3f) | %.2f | %s | %s | %.2f | %s | %s | %s |\n",
			t.name, w.Seconds(), slices.Min(r.walls).Seconds(), slices.Max(r.walls).Seconds(),
			float64(r.logicalBytes)/w.Seconds()/1e9, humanSize(median(r.readB)), humanSize(median(r.writeB)),
			median(r.cpu), humanSize(r.maxRSS<<10), humanSize(r.du), r.correct)
	}
	first := results[s.tools[0].name]
	fmt.Fprintln(out)
	for _, t := range s.tools[1:] {
		if t.limit != limitNone || t.incremental != incrNone {
			continue
		}
		r := results[t.name]
		lo, hi := pairedRange(first.walls, r.walls)
		fmt.Fprintf(out, "ratio %s / %s = %.2f (per repetition %.2f-%.2f)\n", s.tools[0].name, t.name,
			median(first.walls).Seconds()/median(r.walls).Seconds(), lo, hi)
	}
	// taskd's other rows against the other tools too: the checkpointed
	// copy, and the copy inside the daemon's binary (its start-up).
	for _, c := range s.tools[1:] {
		if !c.ours {
			continue
		}
		for _, t := range s.tools[1:] {
			if t.ours || t.limit != limitNone || t.incremental != incrNone {
				continue
			}
			r, cr := results[t.name], results[c.name]
			lo, hi := pairedRange(cr.walls, r.walls)
			fmt.Fprintf(out, "ratio %s / %s = %.2f (per repetition %.2f-%.2f)\n", c.name, t.name,
				median(cr.walls).Seconds()/median(r.walls).Seconds(), lo, hi)
		}
	}
	printLimit(out, s, results)
	printIncremental(out, s, results)
}
