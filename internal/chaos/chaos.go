// Package chaos is the fault-injection acceptance suite: a three-node taskd
// cluster in network namespaces, on a three-server ZooKeeper ensemble or on
// the embedded etcd, a steady workload of checkpointed sleep tasks,
// checkpointed exec tasks (a shell program in every node's --exec-dir) and
// verified copy tasks, a VIP sampled from a client namespace, and faults
// drawn from a seeded schedule. It checks the safety invariants during and
// after the run and reports one summary line:
//
//	chaos: backend=B faults=N tasks=M violations=V lost=L exits=E ticks=T ticks_lost=TL ticks_doubled=TD keyed=K key_overlaps=KO exec=X
//
// Every fault is bounded in time and the run stops by itself after Faults
// faults or Duration, whichever comes first.
package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/vipaddr"
)

// Config is one campaign.
type Config struct {
	Backend        string // "zk" or "embedded"
	Faults         int    // stop after this many faults
	Duration       time.Duration
	Seed           uint64
	SessionTimeout time.Duration
	Dir            string // scratch; the caller removes it
	Taskd, Taskctl string
	// Sampler is the argv of the ARP sampler run in the client namespace
	// (it calls vipaddr.SampleARP with $VIP, $SRC and $LIMIT).
	Sampler []string
	Log     io.Writer
	// Kinds, when not empty, restricts the faults to these kinds (for
	// exercising one kind, e.g. starve).
	Kinds []string
}

// Report is the outcome.
type Report struct {
	Backend                 string
	Faults, Tasks           int
	Violations, Lost, Exits int
	// Ticks of the campaign's schedule: fired exactly once, lost (no
	// task), doubled (more than one task).
	Ticks, TicksLost, TicksDoubled int
	// Keyed tasks ran with a concurrency key of limit 1; KeyOverlaps
	// counts moments two of one key worked at once (violations).
	Keyed, KeyOverlaps int
	// Exec tasks ran the campaign's exec program (--exec-dir).
	Exec int
	// Revoked counts the sessions the leader ended early (embedded etcd:
	// a member every other member's raft transport lost).
	Revoked                      int
	Problems                     []string
	FaultCounts                  map[string]int
	LeaderFailover, Resume, VIPs []time.Duration
	// ResumeSingle and ResumeCompound split Resume by the number of
	// faults that fell into each gap (at most one, or more).
	ResumeSingle, ResumeCompound []time.Duration
	// ResumeKeyFree is Resume less, for a keyed task, the time within the
	// gap that other tasks of its key were working (a queue, not a
	// recovery).
	ResumeKeyFree []time.Duration
	// SlowResumes explains every resume over 2 × timeout + 2 s.
	SlowResumes []SlowResume
	// SlowVIPMoves lists every VIP move over timeout + 2 s with the faults
	// that fell into it.
	SlowVIPMoves []string
}

// Summary is the one line the issue asks for.
func (r Report) Summary() string {
	return fmt.Sprintf("chaos: backend=%s faults=%d tasks=%d violations=%d lost=%d exits=%d ticks=%d ticks_lost=%d ticks_doubled=%d keyed=%d key_overlaps=%d exec=%d revoked=%d",
		r.Backend, r.Faults, r.Tasks, r.Violations, r.Lost, r.Exits, r.Ticks, r.TicksLost, r.TicksDoubled, r.Keyed, r.KeyOverlaps, r.Exec, r.Revoked)
}

// run is the state of one campaign.
type run struct {
	cfg     Config
	c       *harness.VIPCluster
	ens     *harness.Ensemble
	frng    *rand.Rand // the running fault's own choices (the fault goroutine; schedule.go)
	workRng *rand.Rand // the workload's pacing (its own goroutine)
	samples string
	ledger  string
	// schedAnchor is the campaign schedule's anchor (zero: none).
	schedAnchor time.Time

	mu       sync.Mutex
	rep      Report
	tasks    map[string]string // id -> type
	keyOf    map[string]string // id -> concurrency key, for keyed tasks
	copies   map[string][2]string
	killed   map[string]bool // nodes the harness killed and has not restarted
	stopped  map[string][][2]time.Time
	faulted  map[string]bool // nodes under a fault now (no task creation there)
	progress io.Writer
	sampler  *harness.Proc // the ARP sampler in the client namespace
	spans    []faultSpan   // the faults injected, in order
	gaps     []resumeGap   // the resume samples, for the breakdown
}

func (r *run) logf(format string, args ...any) {
	fmt.Fprintf(r.progress, "  "+format+"\n", args...)
}

func (r *run) violation(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rep.Violations++
	msg := fmt.Sprintf(format, args...)
	r.rep.Problems = append(r.rep.Problems, "violation: "+msg)
	r.logf("VIOLATION: %s", msg)
}

// Run runs one campaign and returns its report; the error is for a harness
// that could not run at all (not for invariant violations, which the
// report counts).
func Run(ctx context.Context, cfg Config) (Report, error) {
	if cfg.Backend != "zk" && cfg.Backend != "embedded" {
		return Report{}, fmt.Errorf("backend %q: want zk or embedded", cfg.Backend)
	}
	if cfg.Faults < 1 || cfg.Faults > 2000 || cfg.Duration <= 0 || cfg.Duration > 6*time.Hour {
		return Report{}, errors.New("faults must be 1-2000 and duration positive, at most 6h")
	}
	r := &run{cfg: cfg, workRng: rand.New(rand.NewPCG(cfg.Seed, 0x30b1)), tasks: map[string]string{},
		keyOf: map[string]string{}, copies: map[string][2]string{}, killed: map[string]bool{}, stopped: map[string][][2]time.Time{},
		faulted: map[string]bool{}, progress: cfg.Log}
	r.rep = Report{Backend: cfg.Backend, FaultCounts: map[string]int{}}
	if err := r.setup(); err != nil {
		return r.rep, err
	}
	defer r.teardown()
	fmt.Fprintf(cfg.Log, "chaos: backend=%s seed=%d faults<=%d duration<=%v session-timeout=%v\n",
		cfg.Backend, cfg.Seed, cfg.Faults, cfg.Duration, cfg.SessionTimeout)
	if err := r.waitHealthy(2 * time.Minute); err != nil {
		return r.rep, fmt.Errorf("cluster never formed: %w", err)
	}
	if err := r.startCopies(); err != nil {
		return r.rep, err
	}
	if err := r.startSchedule(); err != nil {
		return r.rep, err
	}
	wctx, stopWork := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); r.workload(wctx) }()
	r.faults(ctx)
	stopWork()
	wg.Wait()
	r.heal()
	r.finish(ctx)
	return r.rep, nil
}

func (r *run) setup() error {
	c, err := harness.NewVIPCluster(r.cfg.Dir, r.cfg.Taskd, r.cfg.Taskctl, r.cfg.SessionTimeout)
	if err != nil {
		return err
	}
	r.c = c
	vol := filepath.Join(r.cfg.Dir, "vol")
	if err := os.MkdirAll(vol, 0o755); err != nil {
		c.Close()
		return err
	}
	execDir, err := installExec(r.cfg.Dir)
	if err != nil {
		c.Close()
		return err
	}
	c.Extra = []string{"--volume-root", vol, "--exec-dir", execDir}
	c.ClockFiles = true
	if r.cfg.Backend == "zk" {
		var hosts []harness.NSHost
		var addrs []string
		for _, n := range harness.VIPNodes {
			hosts = append(hosts, harness.NSHost{NS: c.Lab.NS(n), Addr: c.Lab.Addr(n)})
			addrs = append(addrs, c.Lab.Addr(n)+":2281")
		}
		ens, err := harness.StartEnsembleIn(filepath.Join(r.cfg.Dir, "zk"), hosts, c.PKI)
		if err != nil {
			c.Close()
			return err
		}
		r.ens = ens
		c.Coordinator = "zks://" + strings.Join(addrs, ",") + "/taskd-chaos"
	}
	if err := c.StartAll(); err != nil {
		r.teardown()
		return err
	}
	limit := r.cfg.Duration + 10*time.Minute
	samples, sampler, err := c.StartSampler(limit, nil, r.cfg.Sampler...)
	if err != nil {
		r.teardown()
		return err
	}
	r.samples = samples
	r.sampler = sampler
	r.ledger = filepath.Join(r.cfg.Dir, "ledger")
	return nil
}

func (r *run) teardown() {
	if r.sampler != nil {
		r.sampler.Signal(syscall.SIGKILL)
		r.sampler.Wait()
	}
	if r.c != nil {
		r.c.Close()
	}
	if r.ens != nil {
		r.ens.Close()
	}
}

// waitHealthy waits until every node sees the same leader and all members.
func (r *run) waitHealthy(limit time.Duration) error {
	return waitCond(limit, 200*time.Millisecond, func() bool {
		var leader string
		for _, n := range harness.VIPNodes {
			l, _ := r.c.Leader(n)
			if l == "" || (leader != "" && l != leader) {
				return false
			}
			leader = l
		}
		return true
	})
}

func waitCond(limit, every time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	return harness.WaitFor(ctx, every, cond)
}

// pause waits d: the length of a fault or a gap between faults, not a
// stand-in for a condition.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// ctl runs taskctl on some node not under a fault, trying each such node.
func (r *run) ctl(args ...string) (string, error) {
	r.mu.Lock()
	var nodes []string
	for _, n := range harness.VIPNodes {
		if !r.faulted[n] && !r.killed[n] {
			nodes = append(nodes, n)
		}
	}
	r.mu.Unlock()
	var errs []error
	for _, n := range nodes {
		out, err := r.c.Ctl(n, args...)
		if err == nil {
			return out, nil
		}
		errs = append(errs, err)
	}
	return "", errors.Join(append(errs, errors.New("no node answered"))...)
}

// workload creates a checkpointed task every 1-2 s until ctx ends: a
// sleep task, or every other one the exec program (6 s of work, a
// checkpoint every 300 ms, both); every third has the concurrency key
// chaos/k0 or chaos/k1 (limit 1), so keys cover both types.
func (r *run) workload(ctx context.Context) {
	for i := 0; ctx.Err() == nil && i < 2000; i++ {
		typ := "sleep"
		spec := fmt.Sprintf(`{"duration":"6s","checkpoint_interval":"300ms","ledger":%q}`, r.ledger)
		if i%2 == 1 {
			typ = execType
			spec = fmt.Sprintf(`{"ledger":%q}`, r.ledger)
		}
		args := []string{"task", "create", typ, "--spec", spec, "--max-retries", "100"}
		key := ""
		if i%3 == 2 {
			key = fmt.Sprintf("chaos/k%d", i/3%2)
			args = append(args, "--key", key)
		}
		out, err := r.ctl(args...)
		if err == nil {
			id := strings.TrimSpace(out)
			r.mu.Lock()
			r.tasks[id] = typ
			if key != "" {
				r.keyOf[id] = key
			}
			r.mu.Unlock()
		}
		pause(ctx, time.Second+time.Duration(r.workRng.Int64N(int64(time.Second))))
	}
}

// startCopies creates two sparse images and verified copy tasks of them,
// each on a node drawn from a source of its own (the faults draw from
// theirs: schedule.go).
func (r *run) startCopies() error {
	rng := rand.New(rand.NewPCG(r.cfg.Seed, 0x7a5d))
	vol := filepath.Join(r.cfg.Dir, "vol")
	for i := range 2 {
		src := filepath.Join(vol, fmt.Sprintf("src%d.img", i))
		dst := filepath.Join(vol, fmt.Sprintf("dst%d.img", i))
		if err := sparseImage(src, 96<<20, rng); err != nil {
			return err
		}
		if err := os.WriteFile(dst, nil, 0o644); err != nil {
			return err
		}
		if err := os.Truncate(dst, 96<<20); err != nil {
			return err
		}
		node := harness.VIPNodes[rng.IntN(len(harness.VIPNodes))]
		out, err := r.c.Ctl(node, "copy", "file://"+src, "file://"+dst, "--verify", "--rate", "8M", "--node", node)
		if err != nil {
			return fmt.Errorf("create copy task: %w", err)
		}
		id := strings.TrimSpace(out)
		r.tasks[id] = "copy"
		r.copies[id] = [2]string{src, dst}
	}
	return nil
}

// sparseImage writes size bytes, about a quarter of them in random 1-4 MiB
// runs of random data, the rest holes.
func sparseImage(path string, size int64, rng *rand.Rand) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	for written := int64(0); written < size/4; {
		n := (1 + rng.Int64N(4)) << 20
		off := rng.Int64N(size/(1<<20)-4) << 20
		buf := make([]byte, n)
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			f.Close()
			return err
		}
		written += n
	}
	return f.Close()
}

// heal ends every lasting fault: nodes and servers run, no partition.
func (r *run) heal() {
	for _, n := range harness.VIPNodes {
		_, _ = r.c.Lab.IP("netns", "exec", r.c.Lab.NS(n), "nft", "delete", "table", "inet", "chaos")
		if p := r.c.Nodes[n]; p != nil {
			p.Signal(syscall.SIGCONT)
		}
	}
	r.checkExits()
	for _, n := range harness.VIPNodes {
		if p := r.c.Nodes[n]; p != nil && p.Exited() {
			if err := r.c.Start(n); err != nil {
				r.logf("restart %s: %v", n, err)
			}
			r.mu.Lock()
			delete(r.killed, n)
			r.mu.Unlock()
		}
	}
	if r.ens != nil {
		for _, s := range r.ens.Servers {
			if !s.Running() {
				_ = s.Start()
			}
		}
	}
}

// checkExits counts taskd processes that exited without the harness
// killing them.
func (r *run) checkExits() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range harness.VIPNodes {
		p := r.c.Nodes[n]
		if p == nil || !p.Exited() || r.killed[n] {
			continue
		}
		r.rep.Exits++
		r.rep.Problems = append(r.rep.Problems, fmt.Sprintf("exit: taskd on %s exited with code %d without being killed", n, p.ExitCode()))
		r.logf("UNPLANNED EXIT: %s code %d", n, p.ExitCode())
		r.killed[n] = true // counted once; heal restarts it
	}
}

// taskView is what finish reads of a task.
type taskView struct {
	ID      string `json:"id"`
	Type    string `json:"type"`
	State   string `json:"state"`
	Attempt int    `json:"attempt"`
	// Schedule and Tick: the schedule that made the task, and for which
	// tick.
	Schedule string     `json:"schedule"`
	Tick     *time.Time `json:"tick"`
	Error    *struct {
		Message string `json:"message"`
	} `json:"error"`
}

func (r *run) listTasks() (map[string]taskView, error) {
	out, err := r.ctl("task", "list", "--status", "all", "-o", "json")
	if err != nil {
		return nil, err
	}
	var resp struct {
		Tasks []taskView `json:"tasks"`
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil {
		return nil, fmt.Errorf("task list: %w", err)
	}
	m := map[string]taskView{}
	for _, t := range resp.Tasks {
		m[t.ID] = t
	}
	return m, nil
}

func terminal(state string) bool {
	return state == "succeeded" || state == "failed" || state == "cancelled"
}

// finish waits for the workload to drain and checks every invariant.
func (r *run) finish(ctx context.Context) {
	if err := r.waitHealthy(2 * time.Minute); err != nil {
		r.violation("the cluster did not recover after the faults: %v", err)
	}
	var last map[string]taskView
	err := waitCond(4*time.Minute, time.Second, func() bool {
		m, err := r.listTasks()
		if err != nil {
			return false
		}
		last = m
		for id := range r.tasks {
			if t, ok := m[id]; !ok || !terminal(t.State) {
				return false
			}
		}
		return true
	})
	r.rep.Tasks = len(r.tasks)
	for id, typ := range r.tasks {
		if typ == execType {
			r.rep.Exec++
		}
		t, ok := last[id]
		switch {
		case !ok:
			r.rep.Lost++
			r.rep.Problems = append(r.rep.Problems, fmt.Sprintf("lost: %s task %s is gone from the store", typ, id))
		case !terminal(t.State):
			r.rep.Lost++
			r.rep.Problems = append(r.rep.Problems, fmt.Sprintf("lost: %s task %s still %s after 4 minutes of calm (%v)", typ, id, t.State, err))
		case t.State != "succeeded":
			msg := ""
			if t.Error != nil {
				msg = t.Error.Message
			}
			r.violation("%s task %s ended %s: %s", typ, id, t.State, msg)
		}
	}
	r.checkLedger(last)
	r.breakDownResumes()
	r.checkTicks()
	r.checkCopies(last)
	r.checkVIP()
	r.checkFences()
	r.checkRevocations()
	r.checkExits()
}

// checkCopies compares every succeeded copy with its source.
func (r *run) checkCopies(tasks map[string]taskView) {
	for id, p := range r.copies {
		if t, ok := tasks[id]; !ok || t.State != "succeeded" {
			continue
		}
		same, err := sameContent(p[0], p[1])
		if err != nil || !same {
			r.violation("copy %s: %s differs from %s (%v)", id, p[1], p[0], err)
		}
	}
}

func sameContent(a, b string) (bool, error) {
	fa, err := os.Open(a)
	if err != nil {
		return false, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return false, err
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || !slices.Equal(ba[:na], bb[:nb]) {
			return false, nil
		}
		if ea != nil || eb != nil {
			return errors.Is(ea, io.EOF) || errors.Is(ea, io.ErrUnexpectedEOF), nil
		}
	}
}

// checkVIP: no sample answered by two MACs; VIP moves are timed from the
// last answer of one holder to the first of the next.
func (r *run) checkVIP() {
	all := vipaddr.ReadSamples(r.samples)
	if n := vipaddr.Overlaps(all); n > 0 {
		r.violation("%d ARP samples of the VIP were answered by two MACs", n)
	}
	var lastMAC string
	var lastAt int64
	for _, s := range all {
		if len(s.MACs) != 1 {
			continue
		}
		if lastMAC != "" && s.MACs[0] != lastMAC {
			r.rep.VIPs = append(r.rep.VIPs, time.Duration(s.At-lastAt))
			r.explainVIPMove(time.Unix(0, lastAt), time.Unix(0, s.At))
		}
		lastMAC, lastAt = s.MACs[0], s.At
	}
}
