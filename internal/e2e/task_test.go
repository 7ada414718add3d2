package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/testenv"
)

// taskTimeout is the session timeout of the task tests: short, so that the
// tests that wait for a session to expire stay quick.
const taskTimeout = 4 * time.Second

// backends runs f on a three-node cluster of each store backend.
func backends(t *testing.T, f func(t *testing.T, c *harness.Cluster)) {
	backendsWith(t, harness.Options{}, f)
}

// backendsWith is backends with opt's other settings (Extra flags) on
// every node.
func backendsWith(t *testing.T, opt harness.Options, f func(t *testing.T, c *harness.Cluster)) {
	opt.SessionTimeout = taskTimeout
	t.Run("embedded", func(t *testing.T) {
		f(t, newCluster(t, 3, opt))
	})
	t.Run("zookeeper", func(t *testing.T) {
		ens := testenv.StartEnsemble(t, 1)
		zk := opt
		zk.Coordinator, zk.PKI = ens.URL("/tasks"), ens.PKI
		f(t, newCluster(t, 3, zk))
	})
}

// ready waits for a leader and three live runners, and returns the leader.
func ready(t *testing.T, c *harness.Cluster) *harness.Node {
	t.Helper()
	st, err := harness.WaitAgreed(ctxFor(t, 60*time.Second), c.Nodes, 0)
	if err != nil {
		t.Fatalf("no leader: %v", err)
	}
	n := c.Node(st.Leader)
	err = harness.WaitFor(ctxFor(t, 30*time.Second), 20*time.Millisecond, func() bool {
		live, err := n.LiveRunners(context.Background())
		return err == nil && live == len(c.Nodes)
	})
	if err != nil {
		t.Fatalf("runners did not all register: %v", err)
	}
	return n
}

// create creates a task the way a client does: an unavailable answer
// (the node's session is between keepalives, e.g. while the embedded
// store's raft leadership moves just after the cluster formed) is retried
// within 10 s; any other error ends the test.
func create(t *testing.T, n *harness.Node, typ, spec string) string {
	t.Helper()
	ctx := ctxFor(t, 10*time.Second)
	var id string
	var last error
	err := harness.WaitFor(ctx, 100*time.Millisecond, func() bool {
		r, err := n.Client().Tasks.CreateTask(ctx, connect.NewRequest(&taskdv1.CreateTaskRequest{Type: typ, Spec: spec}))
		last = err
		if err != nil && connect.CodeOf(err) != connect.CodeUnavailable {
			t.Fatalf("create %s task: %v", typ, err)
		}
		if err == nil {
			id = r.Msg.Task.Id
		}
		return err == nil
	})
	if err != nil {
		t.Fatalf("create %s task: unavailable for 10 s: %v", typ, last)
	}
	return id
}

func getTask(ctx context.Context, n *harness.Node, id string) (*taskdv1.Task, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	r, err := n.Client().Tasks.GetTask(ctx, connect.NewRequest(&taskdv1.GetTaskRequest{Id: id}))
	if err != nil {
		return nil, err
	}
	return r.Msg.Task, nil
}

// waitTask waits until cond holds for the task, asking any running node.
func waitTask(t *testing.T, c *harness.Cluster, id string, limit time.Duration, what string, cond func(*taskdv1.Task) bool) *taskdv1.Task {
	t.Helper()
	var last *taskdv1.Task
	err := harness.WaitFor(ctxFor(t, limit), 20*time.Millisecond, func() bool {
		for _, n := range c.Running() {
			if tk, err := getTask(context.Background(), n, id); err == nil {
				last = tk
				return cond(tk)
			}
		}
		return false
	})
	if err != nil {
		t.Fatalf("task %s: %s did not happen within %v; last seen: %v", id, what, limit, last)
	}
	return last
}

// runningSleep creates a sleep task of d that writes a ledger and
// checkpoints every interval, and waits until attempt 1 has done done ms
// of it. It returns the task's id, its ledger and the task as then seen.
func runningSleep(t *testing.T, c *harness.Cluster, leader *harness.Node, d, interval time.Duration, done int64) (string, string, *taskdv1.Task) {
	t.Helper()
	ledger := filepath.Join(t.TempDir(), "ledger")
	id := create(t, leader, "sleep", sleepSpec(d, interval, ledger))
	tk := waitTask(t, c, id, 10*time.Second, "progress on attempt 1", func(tk *taskdv1.Task) bool {
		return tk.State == "running" && tk.Progress.GetDone() >= done
	})
	return id, ledger, tk
}

func sleepSpec(d, interval time.Duration, ledger string) string {
	return fmt.Sprintf(`{"duration":%q,"checkpoint_interval":%q,"ledger":%q}`, d.String(), interval.String(), ledger)
}

// ledgerLine is one unit of work a sleep attempt did.
type ledgerLine struct {
	attempt   int
	elapsedMS int64
	at        int64
}

func readLedger(t *testing.T, path string) map[string][]ledgerLine {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("ledger: %v", err)
	}
	defer f.Close()
	out := map[string][]ledgerLine{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) != 4 {
			t.Fatalf("ledger line %q", sc.Text())
		}
		a, _ := strconv.Atoi(fs[1])
		e, _ := strconv.ParseInt(fs[2], 10, 64)
		at, _ := strconv.ParseInt(fs[3], 10, 64)
		out[fs[0]] = append(out[fs[0]], ledgerLine{attempt: a, elapsedMS: e, at: at})
	}
	return out
}

// checkOneActive fails if, for any task, an attempt did work after a later
// attempt had started: then two attempts were active at the same instant.
func checkOneActive(t *testing.T, ledger map[string][]ledgerLine) {
	t.Helper()
	for id, lines := range ledger {
		sort.Slice(lines, func(i, j int) bool { return lines[i].at < lines[j].at })
		highest := 0
		for _, l := range lines {
			if l.attempt < highest {
				t.Errorf("task %s: attempt %d worked at %d after attempt %d had started", id, l.attempt, l.at, highest)
			}
			highest = max(highest, l.attempt)
		}
	}
}

// cordonLeader keeps tasks off the leader, so that killing a runner does
// not also kill the dispatcher.
func cordon(t *testing.T, n *harness.Node, node string) {
	t.Helper()
	_, err := n.Client().Runners.SetRunnerMarks(ctxFor(t, 10*time.Second), connect.NewRequest(&taskdv1.SetRunnerMarksRequest{Node: node, Action: "cordon"}))
	if err != nil {
		t.Fatalf("cordon %s: %v", node, err)
	}
}

// TestTaskResumesAfterRunnerKill: kill -9 of the runner mid-task; the task
// resumes on another runner from its checkpoint, repeating at most one
// checkpoint interval of work, within session timeout + 1 s.
func TestTaskResumesAfterRunnerKill(t *testing.T) {
	backends(t, func(t *testing.T, c *harness.Cluster) {
		leader := ready(t, c)
		cordon(t, leader, leader.Name)
		// On the embedded store, the death of the node that hosts the etcd
		// raft leader makes the next raft leader renew every lease, so the
		// dead runner's session outlives the timeout by the election and a
		// full TTL (docs/tasks.md). That case is etcd's, measured by
		// taskd-bench tasks; here the task runs on the other node.
		var raftHost *harness.Node
		for _, n := range c.Nodes {
			if hosts, err := n.LeadsRaft(context.Background()); err == nil && hosts && n != leader {
				raftHost = n
				cordon(t, leader, n.Name)
			}
		}
		const interval = 500 * time.Millisecond
		id, ledger, tk := runningSleep(t, c, leader, 12*time.Second, interval, 2000)
		victim := c.Node(tk.Runner)
		if raftHost != nil { // the task is placed; the raft host may take it over
			if _, err := leader.Client().Runners.SetRunnerMarks(ctxFor(t, 5*time.Second), connect.NewRequest(
				&taskdv1.SetRunnerMarksRequest{Node: raftHost.Name, Action: "uncordon"})); err != nil {
				t.Fatal(err)
			}
		}
		bound := taskTimeout + time.Second
		if hosts, err := victim.LeadsRaft(context.Background()); err == nil && hosts {
			t.Fatalf("the task runs on %s, which hosts the etcd raft leader; the test meant to avoid it", victim.Name)
		}
		killed := time.Now()
		victim.Kill()
		tk = waitTask(t, c, id, taskTimeout+10*time.Second, "attempt 2 running", func(tk *taskdv1.Task) bool {
			return tk.Attempt == 2 && tk.State == "running"
		})
		if tk.Runner == victim.Name {
			t.Fatalf("attempt 2 went to the killed runner %s", victim.Name)
		}
		waitTask(t, c, id, 30*time.Second, "success", func(tk *taskdv1.Task) bool { return tk.State == "succeeded" })

		lines := readLedger(t, ledger)[id]
		var max1, first2 int64 = -1, -1
		var at2 int64
		for _, l := range lines {
			switch {
			case l.attempt == 1:
				max1 = max(max1, l.elapsedMS)
			case l.attempt == 2 && first2 < 0:
				first2, at2 = l.elapsedMS, l.at
			}
		}
		// Attempt 2 resumes from checkpoint first2-interval. Everything
		// attempt 1 did past that checkpoint is repeated work.
		repeated := time.Duration(max1-(first2-interval.Milliseconds())) * time.Millisecond
		resume := time.Unix(0, at2).Sub(killed) - interval
		t.Logf("runner %s killed; attempt 2 on %s resumed after %v (bound %v), repeating %v of work", victim.Name, tk.Runner, resume, bound, repeated)
		if max1 < 0 || first2 < 0 || repeated > interval {
			t.Errorf("repeated %v of work (attempt 1 reached %d ms, attempt 2 started at %d ms); want <= %v", repeated, max1, first2, interval)
		}
		if resume > bound {
			t.Errorf("resumed %v after the kill; want <= %v", resume, bound)
		}
		checkOneActive(t, readLedger(t, ledger))
	})
}

// TestRestartedRunnerEndsItsOldSession: a runner killed with kill -9 and
// started again at once (as systemd's Restart= does) gives its task back
// when it rejoins, not when the store expires its old session. On the
// embedded etcd the new process revokes the old lease; on ZooKeeper,
// which cannot end another client's session, it removes the old
// session's runner records (task.Store.EndStaleRunner). A session
// timeout of 20 s tells the two apart: the task must run again within
// 0.6 of it, and never on two runners at once.
func TestRestartedRunnerEndsItsOldSession(t *testing.T) {
	const timeout = 20 * time.Second
	run := func(t *testing.T, c *harness.Cluster) {
		leader := ready(t, c)
		cordon(t, leader, leader.Name)
		id, ledger, tk := runningSleep(t, c, leader, 40*time.Second, 500*time.Millisecond, 1000)
		victim := c.Node(tk.Runner)
		raft, _ := victim.LeadsRaft(context.Background()) // embedded only: false on ZooKeeper
		killed := time.Now()
		victim.Kill()
		if err := victim.Start(); err != nil {
			t.Fatal(err)
		}
		tk = waitTask(t, c, id, timeout+10*time.Second, "attempt 2 running", func(tk *taskdv1.Task) bool {
			return tk.Attempt >= 2 && tk.State == "running"
		})
		took := time.Since(killed)
		bound := timeout * 6 / 10
		t.Logf("runner %s (etcd raft leader: %v) killed and started again; attempt %d running on %s after %v (session timeout %v)", victim.Name, raft, tk.Attempt, tk.Runner, took.Round(time.Millisecond), timeout)
		if took > bound {
			t.Errorf("attempt 2 ran %v after the kill; want <= %v (the restarted runner ends its old session's records)", took, bound)
		}
		if _, err := leader.Client().Tasks.CancelTask(ctxFor(t, 5*time.Second), connect.NewRequest(&taskdv1.TaskRef{Id: id})); err != nil {
			t.Fatal(err)
		}
		waitTask(t, c, id, 10*time.Second, "cancelled", func(tk *taskdv1.Task) bool { return tk.State == "cancelled" })
		checkOneActive(t, readLedger(t, ledger))
	}
	t.Run("embedded", func(t *testing.T) {
		run(t, newCluster(t, 3, harness.Options{SessionTimeout: timeout}))
	})
	t.Run("zookeeper", func(t *testing.T) {
		ens := testenv.StartEnsemble(t, 1)
		run(t, newCluster(t, 3, harness.Options{SessionTimeout: timeout, Coordinator: ens.URL("/tasks"), PKI: ens.PKI}))
	})
}

// TestTaskStoppedRunnerIsFenced: SIGSTOP a runner past its session timeout,
// then SIGCONT. The task moves on; the stopped runner's writes are rejected
// and it stops its attempt; the process stays up and rejoins; the ledger
// shows at most one active attempt at any instant.
func TestTaskStoppedRunnerIsFenced(t *testing.T) {
	backends(t, func(t *testing.T, c *harness.Cluster) {
		leader := ready(t, c)
		cordon(t, leader, leader.Name)
		ledger := filepath.Join(t.TempDir(), "ledger")
		var ids []string
		for range 3 {
			ids = append(ids, create(t, leader, "sleep", sleepSpec(10*time.Second, 200*time.Millisecond, ledger)))
		}
		tk := waitTask(t, c, ids[0], 10*time.Second, "running", func(tk *taskdv1.Task) bool { return tk.State == "running" && tk.Progress.GetDone() > 0 })
		victim := c.Node(tk.Runner)
		stoppedAt := time.Now()
		victim.Signal(syscall.SIGSTOP)
		stopped := true
		defer func() {
			if stopped {
				victim.Signal(syscall.SIGCONT)
			}
		}()
		waitTask(t, c, ids[0], taskTimeout+10*time.Second, "reassignment", func(tk *taskdv1.Task) bool {
			return tk.Attempt >= 2 && tk.State == "running" && tk.Runner != victim.Name
		})
		victim.Signal(syscall.SIGCONT)
		stopped = false
		for _, id := range ids {
			tk := waitTask(t, c, id, 40*time.Second, "success", func(tk *taskdv1.Task) bool { return tk.State == "succeeded" })
			// The attempts the stopped runner had were given back by the
			// dispatcher; none of them may have written its own outcome.
			// (After it rejoins, the node is a runner again with a new
			// session, and may run later attempts.)
			for _, h := range tk.History {
				if h.Runner == victim.Name && h.Started.AsTime().Before(stoppedAt) && h.Outcome != "runner lost" {
					t.Errorf("task %s: the stopped runner's attempt %d ended %q; want it given back as \"runner lost\"; history %v", id, h.N, h.Outcome, tk.History)
				}
			}
		}
		if victim.Proc.Exited() {
			t.Fatalf("%s exited after losing its session (code %d)", victim.Name, victim.Proc.ExitCode())
		}
		if !strings.Contains(victim.Log(), "no longer owns the task") && !strings.Contains(victim.Log(), "attempt stopped") {
			t.Errorf("%s did not log stopping its fenced attempt", victim.Name)
		}
		checkOneActive(t, readLedger(t, ledger))
		if _, err := harness.WaitAgreed(ctxFor(t, 30*time.Second), c.Nodes, 0); err != nil {
			t.Fatalf("stopped node did not rejoin: %v", err)
		}
	})
}

// TestTaskLeaderKilledDuringDispatch: kill -9 of the leader while tasks are
// being created and dispatched; no task is lost and none starts twice.
func TestTaskLeaderKilledDuringDispatch(t *testing.T) {
	backends(t, func(t *testing.T, c *harness.Cluster) {
		leader := ready(t, c)
		var api *harness.Node
		for _, n := range c.Nodes {
			if n != leader {
				api = n
				break
			}
		}
		ledger := filepath.Join(t.TempDir(), "ledger")
		const total = 40
		var ids []string
		for i := range total {
			if i == total/2 {
				leader.Kill()
			}
			// The API node stays up and the store keeps its quorum (two
			// etcd members of three, or the ZooKeeper ensemble), so every
			// create must succeed.
			id := create(t, api, "sleep", sleepSpec(600*time.Millisecond, 200*time.Millisecond, ledger))
			ids = append(ids, id)
		}
		for _, id := range ids {
			waitTask(t, c, id, 60*time.Second, "success", func(tk *taskdv1.Task) bool { return tk.State == "succeeded" })
		}
		lines := readLedger(t, ledger)
		for _, id := range ids {
			tk, err := getTask(context.Background(), api, id)
			if err != nil {
				t.Fatal(err)
			}
			starts := map[int]bool{}
			for _, l := range lines[id] {
				starts[l.attempt] = true
			}
			// Only a task whose first runner was the killed node may run again.
			if len(tk.History) > 0 && tk.History[0].Runner != leader.Name && (tk.Attempt != 1 || len(starts) != 1) {
				t.Errorf("task %s ran %d attempts (ledger %v) though its runner %s survived", id, tk.Attempt, starts, tk.History[0].Runner)
			}
		}
		checkOneActive(t, lines)
	})
}

// TestTaskControl: cancel, pause and resume on running tasks, through
// taskctl, with its exit codes.
func TestTaskControl(t *testing.T) {
	backends(t, func(t *testing.T, c *harness.Cluster) {
		leader := ready(t, c)
		env := leader.CtlEnv()
		ctl := func(args ...string) (int, string) { return runTaskctl(t, env, args...) }

		// Cancel takes effect within 1 s for a task that watches its
		// context, even with a long checkpoint interval.
		code, out := ctl("task", "create", "sleep", "--spec", `{"duration":"60s","checkpoint_interval":"20s"}`)
		if code != 0 {
			t.Fatalf("create: %d %s", code, out)
		}
		id := strings.TrimSpace(out)
		waitTask(t, c, id, 10*time.Second, "running", func(tk *taskdv1.Task) bool { return tk.State == "running" })

		// --max-wait running out is exit 9, the task goes on; a taskd that
		// does not answer within --max-wait is exit 3 (issue 13 bug 7:
		// both were 3).
		if code, out := ctl("task", "wait", id, "--max-wait", "1s"); code != 9 || !strings.Contains(out, "--max-wait 1s expired") {
			t.Errorf("wait --max-wait 1s on a 60 s task: exit %d %q; want 9 saying --max-wait expired", code, out)
		}
		waitTask(t, c, id, time.Second, "still running after the wait gave up", func(tk *taskdv1.Task) bool { return tk.State == "running" })
		nobody := fmt.Sprintf("127.0.0.1:%d", testenv.FreePorts(t, 1)[0])
		if code, out := ctl("task", "wait", id, "--max-wait", "1s", "--endpoint", nobody); code != 3 || !strings.Contains(out, "no answer") {
			t.Errorf("wait --max-wait 1s on a taskd that does not answer: exit %d %q; want 3", code, out)
		}
		asked := time.Now()
		if code, out := ctl("task", "cancel", id); code != 0 {
			t.Fatalf("cancel: %d %s", code, out)
		}
		waitTask(t, c, id, 5*time.Second, "cancelled", func(tk *taskdv1.Task) bool { return tk.State == "cancelled" })
		if d := time.Since(asked); d > time.Second {
			t.Errorf("cancel took %v; want <= 1 s", d)
		}
		if code, out := ctl("task", "cancel", id); code != 6 || !strings.Contains(out, "already cancelled") {
			t.Errorf("cancel of a finished task: exit %d %q; want 6", code, out)
		}

		// Pause parks at a checkpoint; pausing twice is harmless; resume
		// continues from the checkpoint on a new attempt.
		_, out = ctl("task", "create", "sleep", "--spec", `{"duration":"3s","checkpoint_interval":"200ms"}`)
		id = strings.TrimSpace(out)
		waitTask(t, c, id, 10*time.Second, "progress", func(tk *taskdv1.Task) bool { return tk.Progress.GetDone() >= 600 })
		for range 2 {
			if code, out := ctl("task", "pause", id); code != 0 {
				t.Fatalf("pause: %d %s", code, out)
			}
		}
		tk := waitTask(t, c, id, 5*time.Second, "paused", func(tk *taskdv1.Task) bool { return tk.State == "paused" })
		if !tk.HasCheckpoint || !strings.Contains(tk.Reason, "paused by a user") {
			t.Errorf("paused task: checkpoint %v, reason %q", tk.HasCheckpoint, tk.Reason)
		}
		if code, out := ctl("task", "pause", id); code != 0 {
			t.Errorf("pause of a paused task: %d %s", code, out)
		}
		done := tk.Progress.GetDone()
		if code, out := ctl("task", "resume", id); code != 0 {
			t.Fatalf("resume: %d %s", code, out)
		}
		code, out = ctl("task", "wait", id)
		if code != 0 {
			t.Fatalf("wait: %d %s", code, out)
		}
		tk, _ = getTask(context.Background(), leader, id)
		if tk.Attempt != 2 || !tk.History[1].ResumedFromCheckpoint || tk.History[0].ProgressDone < done {
			t.Errorf("resumed task: attempt %d, history %v; want attempt 2 resumed from %d ms", tk.Attempt, tk.History, done)
		}

		// A task that fails permanently fails at once; wait exits 7.
		_, out = ctl("task", "create", "sleep", "--spec", `{"duration":"5s","fail_after":"100ms","permanent":true}`)
		id = strings.TrimSpace(out)
		if code, out := ctl("task", "wait", id); code != 7 || !strings.Contains(out, "failing after") {
			t.Errorf("wait on a failing task: %d %q; want 7 and the cause", code, out)
		}

		// A client that retries a creation with an idempotency key gets
		// the first task back; the key reused for another request is a
		// conflict (exit 6) and creates nothing.
		code, out = ctl("task", "create", "noop", "--idempotency-key", "nightly/vol-7")
		if code != 0 {
			t.Fatalf("create with an idempotency key: %d %s", code, out)
		}
		first := strings.TrimSpace(out)
		if code, out := ctl("task", "create", "noop", "--idempotency-key", "nightly/vol-7"); code != 0 ||
			!strings.Contains(out, first) || !strings.Contains(out, "not created again") {
			t.Errorf("retried create: exit %d %q; want 0, task %s and a note", code, out, first)
		}
		if code, out := ctl("task", "create", "noop", "--priority", "5", "--idempotency-key", "nightly/vol-7"); code != 6 ||
			!strings.Contains(out, "idempotency key already used") || !strings.Contains(out, first) {
			t.Errorf("key reused for another request: exit %d %q; want 6 naming %s", code, out, first)
		}

		// Two tasks with one concurrency key: the second waits, and says
		// for which key and which task.
		_, out = ctl("task", "create", "sleep", "--spec", `{"duration":"60s"}`, "--key", "volume/vol-7")
		holder := strings.TrimSpace(out)
		waitTask(t, c, holder, 10*time.Second, "running", func(tk *taskdv1.Task) bool { return tk.State == "running" })
		_, out = ctl("task", "create", "sleep", "--spec", `{"duration":"60s"}`, "--key", "volume/vol-7")
		second := strings.TrimSpace(out)
		waitTask(t, c, second, 10*time.Second, "waiting for its key", func(tk *taskdv1.Task) bool {
			return strings.Contains(tk.Reason, `waiting for key "volume/vol-7": 1 of 1 running (`+holder+`)`)
		})
		// A task after the holder waits for it, and fails when the
		// holder is cancelled.
		_, out = ctl("task", "create", "noop", "--after", holder)
		dependent := strings.TrimSpace(out)
		waitTask(t, c, dependent, 10*time.Second, "waiting for the holder", func(tk *taskdv1.Task) bool {
			return strings.Contains(tk.Reason, "waiting for task "+holder+" (running)")
		})
		for _, id := range []string{holder, second} {
			if code, out := ctl("task", "cancel", id); code != 0 {
				t.Fatalf("cancel %s: %d %s", id, code, out)
			}
		}
		if code, out := ctl("task", "wait", dependent); code != 7 || !strings.Contains(out, "it waited for ended cancelled") {
			t.Errorf("wait on a task whose dependency was cancelled: exit %d %q; want 7 and the cause", code, out)
		}

		// Bad input: a clear error, exit 2 or 4, and nothing created.
		_, before := ctl("task", "list", "--status", "all", "-o", "json")
		bigSpec := filepath.Join(t.TempDir(), "big.json")
		hugeSpec := filepath.Join(t.TempDir(), "huge.json")
		for path, n := range map[string]int{bigSpec: 100 << 10, hugeSpec: 4 << 20} {
			if err := os.WriteFile(path, []byte(`{"duration":"1s","pad":"`+strings.Repeat("x", n)+`"}`), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		for _, bad := range []struct {
			code int
			args []string
		}{
			{2, []string{"task", "create", "nosuch"}},
			{2, []string{"task", "create", "sleep", "--spec", `{"duration":"soon"}`}},
			{2, []string{"task", "create", "sleep", "--spec", `{"duration":"1s"`}},
			{2, []string{"task", "create", "sleep", "--spec", `{"duration":"1s"}`, "--window", "25:00-01:00"}},
			{2, []string{"task", "create", "sleep", "--spec", `{"duration":"1s"}`, "--window", "08:00-08:00"}},
			{2, []string{"task", "create", "noop", "--priority", "5000"}},
			{2, []string{"task", "create", "sleep", "--spec", "@" + bigSpec}},
			{2, []string{"task", "create", "sleep", "--spec", "@" + hugeSpec}},
			{4, []string{"task", "show", "00000000-0000-4000-8000-000000000000"}},
			{4, []string{"task", "cancel", "00000000-0000-4000-8000-000000000000"}},
			{2, []string{"task", "show", "not-a-uuid"}},
			{2, []string{"task", "list", "--status", "sleeping"}},
			{2, []string{"task", "set-window", id}},
			{2, []string{"task", "create", "noop", "--idempotency-key", "with space"}},
			{2, []string{"task", "create", "noop", "--key", "vol 7"}},
			{4, []string{"task", "create", "noop", "--after", "00000000-0000-4000-8000-000000000000"}},
			{2, []string{"task", "create", "noop", "--after", "nosuch"}},
			{2, []string{"task", "create", "noop", "--after", holder, "--after-policy", "whenever"}},
			{2, []string{"task", "create", "noop", "--key", "vol-7", "--key-limit", "0"}},
			{2, []string{"copy", "file:///nosuch/a", "file:///nosuch/b", "--idempotency-key", strings.Repeat("k", 201)}},
		} {
			if code, out := ctl(bad.args...); code != bad.code || len(strings.TrimSpace(out)) == 0 {
				t.Errorf("taskctl %v: exit %d %q; want %d and a message", bad.args, code, out, bad.code)
			}
		}
		if _, after := ctl("task", "list", "--status", "all", "-o", "json"); after != before {
			t.Errorf("bad input changed the task list")
		}
	})
}

// TestTaskWindowAndDrain: set-window applies to a running task, which parks
// and says why; clearing the window resumes it. A drained runner's task
// moves to another runner at its next checkpoint.
func TestTaskWindowAndDrain(t *testing.T) {
	c := newCluster(t, 3, harness.Options{SessionTimeout: taskTimeout})
	leader := ready(t, c)
	id := create(t, leader, "sleep", `{"duration":"4s","checkpoint_interval":"200ms"}`)
	waitTask(t, c, id, 10*time.Second, "running", func(tk *taskdv1.Task) bool { return tk.State == "running" })
	// A one-minute window twelve hours away is closed now.
	now := time.Now().UTC()
	from := now.Add(12 * time.Hour)
	win := fmt.Sprintf("%s-%s", from.Format("15:04"), from.Add(time.Minute).Format("15:04"))
	_, err := leader.Client().Tasks.SetTaskWindow(ctxFor(t, 5*time.Second), connect.NewRequest(&taskdv1.SetTaskWindowRequest{Id: id, Window: win}))
	if err != nil {
		t.Fatal(err)
	}
	tk := waitTask(t, c, id, 5*time.Second, "parked", func(tk *taskdv1.Task) bool { return tk.State == "waiting" })
	if !strings.Contains(tk.Reason, "outside its run window") {
		t.Errorf("parked task's reason %q does not name the window", tk.Reason)
	}
	if _, err := leader.Client().Tasks.SetTaskWindow(ctxFor(t, 5*time.Second), connect.NewRequest(&taskdv1.SetTaskWindowRequest{Id: id, Clear: true})); err != nil {
		t.Fatal(err)
	}
	tk = waitTask(t, c, id, 5*time.Second, "running again", func(tk *taskdv1.Task) bool { return tk.State == "running" && tk.Attempt == 2 })

	// Drain its runner: the task moves.
	from1 := tk.Runner
	if _, err := leader.Client().Runners.SetRunnerMarks(ctxFor(t, 5*time.Second), connect.NewRequest(&taskdv1.SetRunnerMarksRequest{Node: from1, Action: "drain"})); err != nil {
		t.Fatal(err)
	}
	tk = waitTask(t, c, id, 5*time.Second, "moved", func(tk *taskdv1.Task) bool { return tk.State == "running" && tk.Runner != from1 })
	if !slices.ContainsFunc(tk.History, func(a *taskdv1.TaskAttempt) bool { return a.Outcome == "runner drained" }) {
		t.Errorf("history does not record the drain: %v", tk.History)
	}
	waitTask(t, c, id, 20*time.Second, "success", func(tk *taskdv1.Task) bool { return tk.State == "succeeded" })

	// Pinned to the drained (cordoned) node, a task waits and says why.
	r, err := leader.Client().Tasks.CreateTask(ctxFor(t, 5*time.Second), connect.NewRequest(&taskdv1.CreateTaskRequest{Type: "noop", Node: from1}))
	if err != nil {
		t.Fatal(err)
	}
	tk = waitTask(t, c, r.Msg.Task.Id, 5*time.Second, "reason", func(tk *taskdv1.Task) bool { return tk.Reason != "" })
	if !strings.Contains(tk.Reason, "cordoned") {
		t.Errorf("reason %q; want it to name the cordon", tk.Reason)
	}
	r, err = leader.Client().Tasks.CreateTask(ctxFor(t, 5*time.Second), connect.NewRequest(&taskdv1.CreateTaskRequest{Type: "noop", Node: "nosuchnode"}))
	if err != nil {
		t.Fatal(err)
	}
	tk = waitTask(t, c, r.Msg.Task.Id, 5*time.Second, "reason", func(tk *taskdv1.Task) bool { return tk.Reason != "" })
	if !strings.Contains(tk.Reason, "no live runner matches constraint node=nosuchnode") {
		t.Errorf("reason %q; want it to name the constraint", tk.Reason)
	}
}

// TestTaskRidesThroughZKOutage: the ZooKeeper ensemble loses its quorum
// for exactly two seconds (two of three servers hang: SIGSTOP, then
// SIGCONT) while a task checkpoints. Sessions outlive that (it is shorter
// than the 3.6 s local deadline, even with the heartbeat interval on top),
// so the task must neither fail an attempt nor spend a retry: the runner
// waits for the store instead of failing the attempt. A restart of the
// servers would add a JVM start and an election to the outage, which is
// what made this test depend on the machine's speed.
func TestTaskRidesThroughZKOutage(t *testing.T) {
	ens := testenv.StartEnsemble(t, 3)
	c := newCluster(t, 3, harness.Options{Coordinator: ens.URL("/ride"), PKI: ens.PKI})
	leader := ready(t, c)
	id := create(t, leader, "sleep", `{"duration":"8s","checkpoint_interval":"100ms"}`)
	waitTask(t, c, id, 10*time.Second, "progress", func(tk *taskdv1.Task) bool { return tk.Progress.GetDone() >= 1000 })
	zkOutage(t, leaderAndOne(t, ens), 2*time.Second)
	tk := waitTask(t, c, id, 40*time.Second, "an end", func(tk *taskdv1.Task) bool { return tk.State == "succeeded" || tk.State == "failed" })
	if tk.State != "succeeded" || tk.Attempt != 1 || tk.Retries != 0 {
		t.Fatalf("task after a ZooKeeper outage: %s, attempt %d, retries %d; want success on attempt 1 (history %v)",
			tk.State, tk.Attempt, tk.Retries, tk.History)
	}
}

// TestTaskResumesAfterZKOutagePastDeadline: the same outage, but longer
// than the local deadline (3.6 s of a 6 s session). Every node fences, no
// process exits, and the task resumes from its checkpoint on a new attempt
// without losing the progress it had checkpointed before the outage.
func TestTaskResumesAfterZKOutagePastDeadline(t *testing.T) {
	ens := testenv.StartEnsemble(t, 3)
	c := newCluster(t, 3, harness.Options{Coordinator: ens.URL("/ride-long"), PKI: ens.PKI})
	leader := ready(t, c)
	id := create(t, leader, "sleep", `{"duration":"8s","checkpoint_interval":"100ms"}`)
	before := waitTask(t, c, id, 10*time.Second, "progress", func(tk *taskdv1.Task) bool { return tk.Progress.GetDone() >= 1000 })
	// The leader and one follower hang, so the server left running is a
	// follower cut off from its leader: no node can confirm contact (the
	// heartbeat is a sync that goes through to the leader), and every node
	// fences at its local deadline.
	zkOutage(t, leaderAndOne(t, ens), 5*time.Second)
	tk := waitTask(t, c, id, 60*time.Second, "an end", func(tk *taskdv1.Task) bool { return tk.State == "succeeded" || tk.State == "failed" })
	if tk.State != "succeeded" {
		t.Fatalf("task after a ZooKeeper outage past the local deadline: %s (history %v)", tk.State, tk.History)
	}
	if len(tk.History) < 2 {
		t.Fatalf("the outage outlasted the local deadline but the task ran in one attempt: the runner did not fence (history %v)", tk.History)
	}
	for _, a := range tk.History[1:] {
		if !a.ResumedFromCheckpoint {
			t.Fatalf("attempt %d started over instead of resuming from the checkpoint (history %v)", a.N, tk.History)
		}
	}
	if first := tk.History[0]; first.ProgressDone < before.Progress.GetDone() {
		t.Fatalf("first attempt recorded %d done, less than the %d seen before the outage: checkpointed progress lost (history %v)",
			first.ProgressDone, before.Progress.GetDone(), tk.History)
	}
	for _, n := range c.Nodes {
		if n.Proc.Exited() {
			t.Fatalf("%s exited (code %d) during the outage", n.Name, n.Proc.ExitCode())
		}
		if !strings.Contains(n.Log(), `"event":"fence_started"`) {
			t.Errorf("%s did not fence during an outage past its local deadline", n.Name)
		}
	}
}

// leaderAndOne returns the ensemble's leader and one other server.
func leaderAndOne(t *testing.T, ens *harness.Ensemble) []*harness.ZKServer {
	t.Helper()
	l := ens.Leader()
	if l == nil {
		t.Fatal("the ZooKeeper ensemble has no leader")
	}
	for _, z := range ens.Servers {
		if z != l {
			return []*harness.ZKServer{l, z}
		}
	}
	t.Fatal("one-server ensemble")
	return nil
}

// zkOutage hangs servers (SIGSTOP) for exactly d, then resumes them.
func zkOutage(t *testing.T, servers []*harness.ZKServer, d time.Duration) {
	t.Helper()
	for _, z := range servers {
		z.Freeze()
	}
	thawed := false
	thaw := func() {
		if !thawed {
			for _, z := range servers {
				z.Thaw()
			}
			thawed = true
		}
	}
	t.Cleanup(thaw)
	outage := time.NewTimer(d) // the fault's length, not a wait for a condition
	<-outage.C
	thaw()
}

// TestTaskWaitSurvivesNodeRestart is issue 13 bug 4: `task wait` follows a
// task through the kill -9 and restart of the node it talks to (not the
// node that runs the task), and ends with the task's outcome. The kill
// lands while the wait's stream is open (the wait has printed the task):
// the stream then breaks mid-envelope ("internal: protocol error:
// incomplete envelope: unexpected EOF"), which the wait used to take for
// a final error and exit 1.
func TestTaskWaitSurvivesNodeRestart(t *testing.T) {
	c := newCluster(t, 3, harness.Options{SessionTimeout: taskTimeout})
	leader := ready(t, c)
	var api *harness.Node
	for _, n := range c.Nodes {
		if n != leader {
			api = n
			break
		}
	}
	cordon(t, leader, api.Name) // the task runs elsewhere and survives the restart
	const duration = 20 * time.Second
	id := create(t, leader, "sleep", fmt.Sprintf(`{"duration":%q,"checkpoint_interval":"200ms"}`, duration))
	tk := waitTask(t, c, id, 10*time.Second, "running", func(tk *taskdv1.Task) bool { return tk.State == "running" })
	if tk.Runner == api.Name {
		t.Fatalf("the task runs on %s, the cordoned node the wait talks to", api.Name)
	}
	logPath := filepath.Join(t.TempDir(), "wait.log")
	w, err := harness.StartProc(logPath, taskctlBin, "--endpoint", api.API, "--data-dir", api.DataDir, "task", "wait", id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Signal(syscall.SIGKILL); w.Wait() })
	waitOutput := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	// The wait prints a line per change of the task it receives on its
	// stream: once it has printed one, the stream is open.
	if err := harness.WaitFor(ctxFor(t, 10*time.Second), 20*time.Millisecond, func() bool {
		return strings.Contains(waitOutput(), "attempt 1") || w.Exited()
	}); err != nil || w.Exited() {
		t.Fatalf("task wait did not start following the task (%v, exit %d):\n%s", err, w.ExitCode(), waitOutput())
	}
	api.Kill()
	if err := harness.WaitFor(ctxFor(t, 10*time.Second), 20*time.Millisecond, func() bool {
		return strings.Contains(waitOutput(), "reconnecting") || w.Exited()
	}); err != nil || w.Exited() {
		t.Fatalf("after kill -9 of %s, task wait did not reconnect (%v, exit %d):\n%s", api.Name, err, w.ExitCode(), waitOutput())
	}
	if err := api.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.Done():
	case <-ctxFor(t, 60*time.Second).Done():
		t.Fatalf("task wait did not end:\n%s", waitOutput())
	}
	out := waitOutput()
	if w.ExitCode() != 0 || !strings.Contains(out, id+" succeeded") {
		t.Fatalf("task wait across a restart of its node: exit %d\n%s", w.ExitCode(), out)
	}
	t.Logf("task wait across kill -9 and restart of %s:\n%s", api.Name, out)
	final, err := getTask(ctxFor(t, 10*time.Second), leader, id)
	if err != nil || final.State != "succeeded" {
		t.Fatalf("task wait exited 0 but the task is %v (%v)", final, err)
	}
}
