package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/pki"
)

// The fault kinds.
const (
	faultKillLeader  = "kill-leader"  // kill -9 the taskd leader, restart it
	faultKill        = "kill"         // kill -9 a random taskd node, restart it
	faultStop        = "stop"         // SIGSTOP a node past the session timeout, then SIGCONT
	faultPartition   = "partition"    // drop all traffic of a node's namespace (nftables)
	faultStoreLeader = "store-leader" // kill the ZooKeeper leader, or the node whose etcd leads raft
	faultZKKill      = "zk-kill"      // kill and restart one ZooKeeper server
	faultClock       = "clock-step"   // step one node's task-center wall clock, then step it back
	faultStarve      = "starve"       // squeeze a node with a 1% CPU quota next to a busy loop, then lift it
)

// starveQuotaUS is the starve fault's CFS quota per 100 ms: the setting
// that made the original's ZooKeeper client fence twice in 45 s (issue 20).
const starveQuotaUS = 1000

// faults injects faults until the budget or the time is spent.
func (r *run) faults(ctx context.Context) {
	kinds := []string{faultKillLeader, faultKill, faultStop, faultPartition, faultStoreLeader, faultClock}
	if r.ens != nil {
		kinds = append(kinds, faultZKKill)
	}
	if harness.CPUControllerAvailable() {
		kinds = append(kinds, faultStarve)
	}
	if len(r.cfg.Kinds) > 0 {
		kinds = slices.DeleteFunc(kinds, func(k string) bool { return !slices.Contains(r.cfg.Kinds, k) })
		if len(kinds) == 0 {
			r.violation("none of the fault kinds %v is available here", r.cfg.Kinds)
			return
		}
	}
	start := time.Now()
	sched := newSchedule(r.cfg.Seed, kinds)
	for i := 1; i <= r.cfg.Faults && time.Since(start) < r.cfg.Duration && ctx.Err() == nil; i++ {
		kind, own, gap := sched.next(i)
		r.frng = own
		began := time.Now()
		what := r.inject(ctx, kind)
		r.mu.Lock()
		r.rep.Faults++
		r.rep.FaultCounts[kind]++
		r.mu.Unlock()
		r.checkExits()
		if err := r.waitHealthy(90 * time.Second); err != nil {
			r.violation("no agreed leader with all members within 90s after fault %d (%s)", i, what)
			r.heal()
		}
		r.mu.Lock()
		r.spans = append(r.spans, faultSpan{n: i, kind: kind, what: what, began: began, whole: time.Now()})
		r.mu.Unlock()
		r.logf("fault %3d: %-12s %s; cluster whole again after %v", i, kind, what, time.Since(began).Round(100*time.Millisecond))
		pause(ctx, gap)
	}
}

// leaderSeenBy asks node from who leads ("" if it does not know or does
// not answer).
func (r *run) leaderSeenBy(from string) string {
	out, err := r.c.Ctl(from, "service", "list", "-o", "json")
	if err != nil {
		return ""
	}
	var v struct {
		Leader string `json:"leader"`
	}
	_ = json.Unmarshal([]byte(out), &v)
	return v.Leader
}

func (r *run) pick(not string) string {
	var c []string
	for _, n := range harness.VIPNodes {
		if n != not {
			c = append(c, n)
		}
	}
	return c[r.frng.IntN(len(c))]
}

func (r *run) setFaulted(node string, on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.faulted[node] = on
}

// killNode kills node, times the leader failover when it led, and
// restarts it after 1-2 s.
func (r *run) killNode(ctx context.Context, node string) string {
	wasLeader := r.leaderSeenBy(r.pick(node)) == node
	r.mu.Lock()
	r.killed[node] = true
	r.mu.Unlock()
	killed := time.Now()
	r.c.Kill(node)
	what := "kill -9 " + node
	if wasLeader {
		other := r.pick(node)
		var took time.Duration
		err := waitCond(4*r.cfg.SessionTimeout, 50*time.Millisecond, func() bool {
			l := r.leaderSeenBy(other)
			took = time.Since(killed)
			return l != "" && l != node
		})
		if err == nil {
			r.mu.Lock()
			r.rep.LeaderFailover = append(r.rep.LeaderFailover, took)
			r.mu.Unlock()
			what += fmt.Sprintf(" (leader; new leader after %v)", took.Round(time.Millisecond))
		}
	}
	pause(ctx, time.Second+time.Duration(r.frng.Int64N(int64(time.Second))))
	if err := r.c.Start(node); err != nil {
		r.logf("restart %s: %v", node, err)
	}
	r.mu.Lock()
	delete(r.killed, node)
	r.mu.Unlock()
	return what
}

func (r *run) inject(ctx context.Context, kind string) string {
	long := r.cfg.SessionTimeout + time.Second
	switch kind {
	case faultKillLeader:
		l := r.leaderSeenBy(harness.VIPNodes[r.frng.IntN(3)])
		if l == "" {
			l = r.pick("")
		}
		return r.killNode(ctx, l)
	case faultKill:
		return r.killNode(ctx, r.pick(""))
	case faultStop:
		n := r.pick("")
		r.setFaulted(n, true)
		from := time.Now()
		r.c.Nodes[n].Signal(syscall.SIGSTOP)
		pause(ctx, long)
		r.c.Nodes[n].Signal(syscall.SIGCONT)
		r.mu.Lock()
		r.stopped[n] = append(r.stopped[n], [2]time.Time{from, time.Now()})
		r.mu.Unlock()
		r.setFaulted(n, false)
		return fmt.Sprintf("SIGSTOP %s for %v", n, long)
	case faultPartition:
		n := r.pick("")
		r.setFaulted(n, true)
		defer r.setFaulted(n, false)
		if err := r.partition(n, true); err != nil {
			return "partition failed: " + err.Error()
		}
		pause(ctx, long)
		if err := r.partition(n, false); err != nil {
			r.violation("cannot heal the partition of %s: %v", n, err)
		}
		return fmt.Sprintf("partition %s for %v", n, long)
	case faultClock:
		n := r.pick("")
		step := time.Duration(30+r.frng.IntN(570)) * time.Second
		if r.frng.IntN(2) == 0 {
			step = -step
		}
		if err := r.stepClock(n, step); err != nil {
			r.violation("clock step of %s not applied: %v", n, err)
			return "clock step failed"
		}
		pause(ctx, long)
		if err := r.stepClock(n, 0); err != nil {
			r.violation("clock step back of %s not applied: %v", n, err)
		}
		return fmt.Sprintf("wall clock of %s stepped by %v for %v", n, step, long)
	case faultStarve:
		return r.starve(ctx, r.pick(""), 2*long)
	case faultZKKill:
		s := r.ens.Servers[r.frng.IntN(len(r.ens.Servers))]
		s.Kill()
		pause(ctx, 2*time.Second+time.Duration(r.frng.Int64N(int64(2*time.Second))))
		if err := s.Start(); err != nil {
			r.logf("restart zookeeper %d: %v", s.ID, err)
		}
		return fmt.Sprintf("kill -9 zookeeper %d, restart", s.ID)
	case faultStoreLeader:
		if r.ens != nil {
			s := r.ens.Leader()
			if s == nil {
				return "no zookeeper leader found; nothing done"
			}
			s.Kill()
			pause(ctx, 3*time.Second)
			if err := s.Start(); err != nil {
				r.logf("restart zookeeper %d: %v", s.ID, err)
			}
			return fmt.Sprintf("kill -9 zookeeper leader %d, restart", s.ID)
		}
		n := r.raftLeader(ctx)
		if n == "" {
			return "no etcd raft leader found; nothing done"
		}
		return "etcd raft leader: " + r.killNode(ctx, n)
	}
	return "unknown fault " + kind
}

// starve moves node into a cgroup with a tight CPU quota shared with a
// busy loop for d, then moves it back and removes the cgroup. The node
// must not exit, and the invariants (one leader per epoch, no lost task)
// must hold while it is starved and after.
func (r *run) starve(ctx context.Context, node string, d time.Duration) string {
	cg, err := harness.NewCPUCgroup(fmt.Sprintf("taskd-chaos-%d-%d", os.Getpid(), time.Now().UnixNano()%1e9), starveQuotaUS)
	if err != nil {
		return "starvation not applied: " + err.Error()
	}
	defer func() {
		if err := cg.Close(); err != nil {
			r.logf("starve cleanup: %v", err)
		}
	}()
	// What the node was when it was starved, for the report: a starved
	// taskd leader or etcd raft leader slows the whole cluster, a plain
	// member only itself.
	roles := r.roles(ctx, node)
	busy, err := harness.StartBusyLoop(filepath.Join(r.cfg.Dir, "busy.log"))
	if err != nil {
		return "starvation not applied: " + err.Error()
	}
	defer func() { busy.Signal(syscall.SIGKILL); busy.Wait() }()
	r.setFaulted(node, true)
	defer r.setFaulted(node, false)
	if err := cg.Move(busy.PID()); err != nil {
		return "starvation not applied: " + err.Error()
	}
	if err := cg.Move(r.c.Nodes[node].PID()); err != nil {
		return "starvation not applied: " + err.Error()
	}
	pause(ctx, d)
	return fmt.Sprintf("%s%s under a CPU quota of %dus per 100ms next to a busy loop for %v", node, roles, starveQuotaUS, d)
}

// roles names what node is now, " (taskd leader, etcd raft leader)", or
// "" when it is neither.
func (r *run) roles(ctx context.Context, node string) string {
	var is []string
	if r.leaderSeenBy(node) == node {
		is = append(is, "taskd leader")
	}
	if r.ens == nil && r.raftLeader(ctx) == node {
		is = append(is, "etcd raft leader")
	}
	if len(is) == 0 {
		return ""
	}
	return " (" + strings.Join(is, ", ") + ")"
}

// partition drops (on) or restores (off) all traffic of node's namespace
// except loopback.
func (r *run) partition(node string, on bool) error {
	ns := r.c.Lab.NS(node)
	if !on {
		_, err := r.c.Lab.IP("netns", "exec", ns, "nft", "delete", "table", "inet", "chaos")
		return err
	}
	rules := filepath.Join(r.cfg.Dir, "partition-"+node+".nft")
	ruleset := `table inet chaos {
	chain in { type filter hook input priority -10; policy drop; iif "lo" accept; }
	chain out { type filter hook output priority -10; policy drop; oif "lo" accept; }
}
`
	if err := os.WriteFile(rules, []byte(ruleset), 0o644); err != nil {
		return err
	}
	_, err := r.c.Lab.IP("netns", "exec", ns, "nft", "-f", rules)
	return err
}

// raftLeader finds the node whose embedded etcd leads raft, asking each
// member's client port from inside its namespace.
func (r *run) raftLeader(ctx context.Context) string {
	for _, n := range harness.VIPNodes {
		if r.c.Nodes[n] == nil || r.c.Nodes[n].Exited() {
			continue
		}
		ns := r.c.Lab.NS(n)
		creds, err := pki.Load(r.c.DataDir(n))
		if err != nil {
			continue
		}
		leads, err := harness.EtcdLeads(ctx, creds, "https://127.0.0.1:2379", func(_ context.Context, addr string) (net.Conn, error) {
			return harness.DialInNS(ns, addr, 2*time.Second)
		})
		if err == nil && leads {
			return n
		}
	}
	return ""
}

// ledgerLine is one unit of work a sleep attempt did.
type ledgerLine struct {
	attempt   int
	elapsedMS int64
	at        int64
}

// checkLedger: for every task, no attempt did work after a later attempt
// had started (two active attempts at once), and every succeeded task did
// all of its work. The gaps between attempts are the resume times.
func (r *run) checkLedger(tasks map[string]taskView) {
	f, err := os.Open(r.ledger)
	if err != nil {
		r.violation("ledger unreadable: %v", err)
		return
	}
	defer f.Close()
	byTask := map[string][]ledgerLine{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) != 4 {
			r.violation("ledger line %q", sc.Text())
			continue
		}
		a, _ := strconv.Atoi(fs[1])
		e, _ := strconv.ParseInt(fs[2], 10, 64)
		at, _ := strconv.ParseInt(fs[3], 10, 64)
		byTask[fs[0]] = append(byTask[fs[0]], ledgerLine{attempt: a, elapsedMS: e, at: at})
	}
	for id, lines := range byTask {
		sort.Slice(lines, func(i, j int) bool { return lines[i].at < lines[j].at })
		highest := 0
		var maxElapsed, lastAt int64
		for _, l := range lines {
			if l.attempt < highest {
				r.violation("task %s: attempt %d worked at %s after attempt %d had started",
					id, l.attempt, time.Unix(0, l.at).Format(time.StampMicro), highest)
			}
			if l.attempt > highest && highest > 0 {
				r.rep.Resume = append(r.rep.Resume, time.Duration(l.at-lastAt))
				r.gaps = append(r.gaps, resumeGap{task: id, from: highest, to: l.attempt, lastWork: time.Unix(0, lastAt), firstWork: time.Unix(0, l.at)})
			}
			highest = max(highest, l.attempt)
			maxElapsed = max(maxElapsed, l.elapsedMS)
			lastAt = l.at
		}
		if t, ok := tasks[id]; ok && t.State == "succeeded" && maxElapsed != 6000 {
			r.violation("task %s succeeded but its ledger shows %d ms of its 6000 ms done", id, maxElapsed)
		}
	}
	r.checkKeys(byTask)
	r.keyWaits(byTask)
	for id, typ := range r.tasks {
		if t, ok := tasks[id]; (typ == "sleep" || typ == execType) && ok && t.State == "succeeded" && len(byTask[id]) == 0 {
			r.violation("task %s succeeded without any work in the ledger", id)
		}
	}
}

// checkKeys: tasks of one concurrency key (limit 1) never worked at
// once. Each attempt's work spans its first to its last ledger line; two
// spans of different tasks of one key must not overlap.
func (r *run) checkKeys(byTask map[string][]ledgerLine) {
	type span struct {
		id       string
		from, to int64
	}
	byKey := map[string][]span{}
	for id, key := range r.keyOf {
		r.rep.Keyed++
		for _, w := range workSpans(byTask[id]) {
			byKey[key] = append(byKey[key], span{id: id, from: w[0], to: w[1]})
		}
	}
	for key, spans := range byKey {
		sort.Slice(spans, func(i, j int) bool { return spans[i].from < spans[j].from })
		var last span // the span that reaches furthest so far
		for _, cur := range spans {
			if last.id != "" && cur.id != last.id && cur.from < last.to {
				r.rep.KeyOverlaps++
				r.violation("key %s: tasks %s and %s worked at once (%s until %s)", key, last.id, cur.id,
					time.Unix(0, cur.from).Format(time.StampMicro), time.Unix(0, last.to).Format(time.StampMicro))
			}
			if cur.to > last.to {
				last = cur
			}
		}
	}
}

// workSpans gives each attempt's work, from its first ledger line to its
// last (unix nanoseconds).
func workSpans(lines []ledgerLine) [][2]int64 {
	spans := map[int]*[2]int64{}
	for _, l := range lines {
		sp, ok := spans[l.attempt]
		if !ok {
			sp = &[2]int64{l.at, l.at}
			spans[l.attempt] = sp
		}
		sp[0], sp[1] = min(sp[0], l.at), max(sp[1], l.at)
	}
	out := make([][2]int64, 0, len(spans))
	for _, sp := range spans {
		out = append(out, *sp)
	}
	return out
}

// keyWaits: for each resume gap of a keyed task, how long other tasks of
// its key (limit 1) were working inside the gap. The task could not run
// then whatever the faults did: that part of the gap is a queue, not a
// recovery.
func (r *run) keyWaits(byTask map[string][]ledgerLine) {
	for i := range r.gaps {
		g := &r.gaps[i]
		g.key = r.keyOf[g.task]
		if g.key == "" {
			continue
		}
		from, to := g.lastWork.UnixNano(), g.firstWork.UnixNano()
		for id, key := range r.keyOf {
			if key != g.key || id == g.task {
				continue
			}
			for _, w := range workSpans(byTask[id]) {
				if lo, hi := max(w[0], from), min(w[1], to); hi > lo {
					g.keyBusy += time.Duration(hi - lo)
				}
			}
		}
	}
}

// checkFences: every fence finished before the session could expire,
// except on a node that was stopped (SIGSTOP) during that session: a
// stopped process cannot run at its deadline (its VIP addresses expire by
// their kernel lifetime and its task writes are fenced by the store).
func (r *run) checkFences() {
	r.eachLogLine(func(n string, line []byte) {
		var l struct {
			Time  time.Time `json:"time"`
			Event string    `json:"event"`
			Late  string    `json:"late_by"`
		}
		if json.Unmarshal(line, &l) != nil || l.Event != "fence_finished" || l.Late == "" {
			return
		}
		r.mu.Lock()
		excused := slices.ContainsFunc(r.stopped[n], func(iv [2]time.Time) bool {
			return l.Time.After(iv[0]) && l.Time.Before(iv[1].Add(r.cfg.SessionTimeout))
		})
		r.mu.Unlock()
		if !excused {
			r.violation("fence on %s at %s finished %s after the session could expire", n, l.Time.Format(time.StampMilli), l.Late)
		}
	})
}

// eachLogLine calls f with every line of every node's log.
func (r *run) eachLogLine(f func(node string, line []byte)) {
	for _, n := range harness.VIPNodes {
		fh, err := os.Open(r.c.LogPath(n))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			f(n, sc.Bytes())
		}
		fh.Close()
	}
}

// stepClock sets node's injected wall-clock offset (docs/chaos.md) and
// confirms from its log that taskd applied it.
func (r *run) stepClock(node string, d time.Duration) error {
	// Only the log written after the signal is searched.
	var from int64
	if fi, err := os.Stat(r.c.LogPath(node)); err == nil {
		from = fi.Size()
	}
	if err := os.WriteFile(r.c.ClockFile(node), []byte(d.String()+"\n"), 0o644); err != nil {
		return err
	}
	p := r.c.Nodes[node]
	if p == nil || p.Exited() {
		return fmt.Errorf("%s is not running", node)
	}
	p.Signal(syscall.SIGUSR2)
	return waitCond(5*time.Second, 20*time.Millisecond, func() bool { return r.logHasEvent(node, "clock_offset", from) })
}

// logHasEvent reports whether node's log, from byte offset from on, has a
// line with the event attribute ev.
func (r *run) logHasEvent(node, ev string, from int64) bool {
	f, err := os.Open(r.c.LogPath(node))
	if err != nil {
		return false
	}
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, from, 1<<40))
	return err == nil && strings.Contains(string(b), `"event":"`+ev+`"`)
}
