package bench

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/coord/etcd"
	"github.com/taskd/taskd/internal/coord/zk"
	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/task"
)

// taskBench measures the task center on a three-node loopback cluster:
// dispatch latency, noop throughput, resume after kill -9 of a runner, and
// `task list --status unfinished` with many finished tasks retained.
func taskBench(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("tasks", flag.ContinueOnError)
	backend := fs.String("backend", "embedded", "embedded, zk or etcd")
	timeout := fs.Duration("session-timeout", 6*time.Second, "taskd --session-timeout")
	latN := fs.Int("latency-n", 200, "tasks timed create -> running, one at a time")
	noopN := fs.Int("noop-n", 5000, "noop tasks for the throughput run")
	noopRounds := fs.Int("noop-rounds", 1, "throughput runs one after another on the same cluster (the first warms the store's and the nodes' code up)")
	creators := fs.Int("creators", 32, "concurrent clients creating noop tasks")
	ceilingOps := fs.Int("ceiling-ops", 1, "also measure the store's ceiling with this many keys to a transaction (1: only single-key transactions)")
	capacity := fs.Int("runner-capacity", 64, "taskd --runner-capacity")
	batch := fs.Bool("batch-writes", false, "run the nodes with --runner-batch-writes")
	resumeN := fs.Int("resume-n", 3, "kill -9 rounds for the resume time")
	resumeRaftN := fs.Int("resume-raft-n", 0, "kill -9 rounds where the runner hosts the etcd raft leader (embedded only), reported separately")
	retained := fs.Int("retained", 100000, "finished tasks stored before timing task list")
	listN := fs.Int("list-n", 200, "timed task list calls")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *ceilingOps < 1 {
		return fmt.Errorf("-ceiling-ops must be 1-100")
	}
	if *resumeRaftN > 0 && *backend != "embedded" {
		return fmt.Errorf("-resume-raft-n needs -backend embedded (no etcd raft runs in the nodes otherwise)")
	}
	if err := checkRanges([]intFlag{{"latency-n", *latN, 10000}, {"noop-n", *noopN, 100000}, {"noop-rounds", *noopRounds, 10}, {"resume-n", *resumeN, 20}, {"resume-raft-n", *resumeRaftN, 50},
		{"retained", *retained, 1000000}, {"list-n", *listN, 10000}, {"creators", *creators, 256}, {"ceiling-ops", *ceilingOps, 100}}); err != nil {
		return err
	}
	e, cleanup, err := setup(*backend, *timeout)
	if err != nil {
		return err
	}
	defer cleanup()
	e.opts.Extra = append(e.opts.Extra, "--runner-capacity", fmt.Sprint(*capacity))
	if *batch {
		e.opts.Extra = append(e.opts.Extra, "--runner-batch-writes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	c, kv, lay, closeCluster, err := e.taskCluster(ctx, 3)
	if err != nil {
		return err
	}
	defer closeCluster()
	fmt.Fprintf(out, "tasks: backend=%s 3 nodes on loopback, session-timeout=%v runner-capacity=%d batch-writes=%v\n", *backend, *timeout, *capacity, *batch)

	if *latN > 0 {
		lat, ack, err := dispatchLatency(ctx, c, kv, lay, *latN)
		if err != nil {
			return fmt.Errorf("dispatch latency: %w", err)
		}
		fmt.Fprintf(out, "dispatch latency create->running (assigned):      %s\n", summary(lat))
		fmt.Fprintf(out, "dispatch latency create->first checkpoint (10ms): %s\n", summary(ack))
	}
	if *noopN > 0 {
		meter := e.cpuMeter(c)
		wps, err := storeCeiling(ctx, kv, *noopN, *creators, 1)
		if err != nil {
			return fmt.Errorf("store ceiling: %w", err)
		}
		fmt.Fprintf(out, "store ceiling: %d single-key transactions from %d clients straight to the store = %.0f writes/s (a noop task needs 2 plus a share of a batch)\n", *noopN, *creators, wps)
		fmt.Fprintf(out, "store ceiling: CPU per write: %s\n", meter.perTask(*noopN))
		if *ceilingOps > 1 {
			meter := e.cpuMeter(c)
			wps, err := storeCeiling(ctx, kv, *noopN, *creators, *ceilingOps)
			if err != nil {
				return fmt.Errorf("store ceiling: %w", err)
			}
			fmt.Fprintf(out, "store ceiling: %d keys in transactions of %d from %d clients = %.0f writes/s\n", *noopN, *ceilingOps, *creators, wps)
			fmt.Fprintf(out, "store ceiling: CPU per write, %d to a transaction: %s\n", *ceilingOps, meter.perTask(*noopN))
		}
		for round := range *noopRounds {
			if *noopRounds > 1 {
				fmt.Fprintf(out, "noop round %d of %d:\n", round+1, *noopRounds)
			}
			meter := e.cpuMeter(c)
			rate, d, err := noopThroughput(ctx, c, kv, lay, *noopN, *creators)
			if err != nil {
				return fmt.Errorf("noop throughput: %w", err)
			}
			fmt.Fprintf(out, "noop: CPU during the run, per task: %s\n", meter.perTask(*noopN))
			if *batch {
				fmt.Fprintf(out, "noop: the runners' batchers so far: %s\n", batchCounters(ctx, c))
			}
			fmt.Fprintf(out, "noop throughput create->succeeded: %d tasks in %v = %.0f tasks/s (%d creators)\n", *noopN, d.Round(time.Millisecond), rate, *creators)
		}
	}
	if *resumeN > 0 {
		re, first, err := resumeAfterKill(ctx, out, c, kv, lay, *resumeN, false)
		if err != nil {
			return fmt.Errorf("resume: %w", err)
		}
		fmt.Fprintf(out, "resume after kill -9 of the runner, kill->attempt 2 assigned:       %s\n", summary(re))
		fmt.Fprintf(out, "resume after kill -9 of the runner, kill->attempt 2 first checkpoint: %s (checkpoint interval 100ms)\n", summary(first))
	}
	if *resumeRaftN > 0 {
		re, first, err := resumeAfterKill(ctx, out, c, kv, lay, *resumeRaftN, true)
		if err != nil {
			return fmt.Errorf("resume (raft host): %w", err)
		}
		fmt.Fprintf(out, "resume after kill -9 of the runner hosting the etcd raft leader, kill->attempt 2 assigned:       %s\n", summary(re))
		fmt.Fprintf(out, "resume after kill -9 of the runner hosting the etcd raft leader, kill->attempt 2 first checkpoint: %s\n", summary(first))
	}
	if *listN > 0 {
		lat, n, err := listUnfinished(ctx, c, kv, lay, *retained, *listN)
		if err != nil {
			return fmt.Errorf("list: %w", err)
		}
		fmt.Fprintf(out, "task list --status unfinished (%d unfinished, %d finished retained), API call: %s\n", n, *retained, summary(lat))
	}
	return nil
}

// intFlag is a numeric flag and its upper bound (the lower is 0).
type intFlag struct {
	name   string
	v, max int
}

func checkRanges(fs []intFlag) error {
	for _, f := range fs {
		if f.v < 0 || f.v > f.max {
			return fmt.Errorf("-%s must be 0-%d", f.name, f.max)
		}
	}
	return nil
}

// taskCluster starts n nodes with e's options, waits for a leader and n
// live runners, and opens the store directly (to watch records).
func (e *env) taskCluster(ctx context.Context, n int) (*harness.Cluster, coord.Store, keys.Tasks, func(), error) {
	var lay keys.Tasks
	c, err := e.startCluster(n)
	if err != nil {
		return nil, nil, lay, nil, err
	}
	st, err := harness.WaitAgreed(ctx, c.Nodes, 0)
	if err != nil {
		c.Close()
		return nil, nil, lay, nil, fmt.Errorf("no agreed leader among %d nodes: %w", n, err)
	}
	kv, err := e.benchStore(c)
	if err != nil {
		c.Close()
		return nil, nil, lay, nil, err
	}
	closeAll := func() { kv.Close(); c.Close() }
	root, err := keys.NewRoot(quorum.DefaultConfig().Root)
	if err == nil {
		if err = waitRunners(ctx, c.Node(st.Leader), n); err != nil {
			err = fmt.Errorf("waiting for %d live runners: %w", n, err)
		}
	}
	if err != nil {
		closeAll()
		return nil, nil, lay, nil, err
	}
	return c, kv, root.Tasks(), closeAll, nil
}

// benchStore opens the cluster's store directly, to watch records.
func (e *env) benchStore(c *harness.Cluster) (coord.Store, error) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// As a node of the cluster: its certificate (and, on ZooKeeper, the
	// cluster's digest credential; on external etcd, taskd's etcd user).
	switch e.backend {
	case "zk":
		creds, err := e.ens.PKI.Bundle("bench")
		if err != nil {
			return nil, err
		}
		return zk.Open(zk.Config{Servers: e.ens.Addrs(), Chroot: "/bench", Digest: e.ens.PKI.Secrets.ZKDigest, TLS: e.ens.PKI.ClientTLS(creds)}, log)
	case "etcd", "etcd-cert", "etcd-jwt":
		creds, err := e.ext.PKI.Bundle("bench")
		if err != nil {
			return nil, err
		}
		cc := etcd.ClientConfig{Endpoints: []string{e.ext.ClientURL}, TLS: e.ext.PKI.ClientTLS(creds)}
		if !e.certAuth() {
			cc.Username, cc.Password = e.ext.User, e.ext.Password
		}
		return etcd.Open(ctx, cc, log)
	}
	var eps []string
	for _, n := range c.Nodes {
		eps = append(eps, n.EtcdClientURL)
	}
	return etcd.Open(ctx, etcd.ClientConfig{Endpoints: eps, TLS: c.Nodes[0].Creds.ClientTLS("")}, log)
}

func waitRunners(ctx context.Context, n *harness.Node, want int) error {
	return harness.WaitFor(ctx, 20*time.Millisecond, func() bool {
		live, err := n.LiveRunners(ctx)
		return err == nil && live >= want
	})
}

// follower records, for every task id, when the watch of the active
// directory first showed it running, with progress, and deleted (finished).
type follower struct {
	mu      sync.Mutex
	changed chan struct{} // closed and replaced at every event
	marks   map[string]*marks
}

type marks struct {
	running, progress, deleted time.Time
	attemptAt                  map[int]time.Time // first seen running per attempt
	progressAt                 map[int]time.Time // the attempt's first write by its runner
	events                     map[int]int       // records seen per attempt
}

func follow(ctx context.Context, kv coord.Store, lay keys.Tasks) (*follower, func()) {
	f := &follower{changed: make(chan struct{}), marks: map[string]*marks{}}
	wctx, cancel := context.WithCancel(ctx)
	w := kv.Watch(wctx, lay.ActiveDir())
	events := w.Events()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range events {
			now := time.Now()
			if ev.Type == coord.EventSynced {
				continue
			}
			id, err := keys.Child(lay.ActiveDir(), ev.KV.Key, keys.ValidTaskID)
			if err != nil {
				continue
			}
			f.mu.Lock()
			m := f.marks[id]
			if m == nil {
				m = &marks{attemptAt: map[int]time.Time{}, progressAt: map[int]time.Time{}, events: map[int]int{}}
				f.marks[id] = m
			}
			if ev.Type == coord.EventDelete {
				m.deleted = now
			} else if r, err := task.Decode(ev.KV.Key, ev.KV.Value, ev.KV.Version); err == nil && r.State == task.Running {
				if m.running.IsZero() {
					m.running = now
				}
				if _, ok := m.attemptAt[r.Attempt]; !ok {
					m.attemptAt[r.Attempt] = now
				}
				// The assignment is the attempt's first record; the
				// runner's first checkpoint is the second.
				if m.events[r.Attempt]++; m.events[r.Attempt] == 2 {
					m.progressAt[r.Attempt] = now
				}
				if r.Progress.Done > 0 && m.progress.IsZero() {
					m.progress = now
				}
			}
			close(f.changed)
			f.changed = make(chan struct{})
			f.mu.Unlock()
		}
	}()
	return f, func() { cancel(); <-done; w.Close() }
}

// wait blocks until cond holds for the marks of id, or ctx ends.
func (f *follower) wait(ctx context.Context, id string, cond func(m *marks) bool) (marks, error) {
	for {
		f.mu.Lock()
		m, ch := f.marks[id], f.changed
		if m != nil && cond(m) {
			c := *m
			f.mu.Unlock()
			return c, nil
		}
		f.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return marks{}, fmt.Errorf("task %s: %w", id, ctx.Err())
		}
	}
}

func createTask(ctx context.Context, n *harness.Node, req *taskdv1.CreateTaskRequest) (string, error) {
	r, err := n.Client().Tasks.CreateTask(ctx, connect.NewRequest(req))
	if err != nil {
		return "", err
	}
	return r.Msg.Task.Id, nil
}

// dispatchLatency creates sleep tasks one at a time, through the three
// nodes in turn, and times create -> running (the leader's assignment seen
// by a watcher) and create -> first checkpoint (the runner has started the
// attempt and written; the first checkpoint is 10 ms into the task).
func dispatchLatency(ctx context.Context, c *harness.Cluster, kv coord.Store, lay keys.Tasks, n int) ([]time.Duration, []time.Duration, error) {
	f, stop := follow(ctx, kv, lay)
	defer stop()
	var lat, ack []time.Duration
	for i := range n {
		node := c.Nodes[i%len(c.Nodes)]
		start := time.Now()
		// The task lives until the bench has seen its first checkpoint
		// and cancels it. A task that ended by itself within 20 ms could
		// come and go unseen between two reads of a ZooKeeper watch, and
		// the wait below ran out on a task that had succeeded.
		id, err := createTask(ctx, node, &taskdv1.CreateTaskRequest{Type: "sleep", Spec: `{"duration":"1m","checkpoint_interval":"10ms"}`})
		if err != nil {
			return nil, nil, err
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		m, err := f.wait(wctx, id, func(m *marks) bool { return !m.progress.IsZero() })
		cancel()
		if err != nil {
			return nil, nil, err
		}
		lat = append(lat, m.running.Sub(start))
		ack = append(ack, m.progress.Sub(start))
		if _, err := node.Client().Tasks.CancelTask(ctx, connect.NewRequest(&taskdv1.TaskRef{Id: id})); err != nil {
			return nil, nil, fmt.Errorf("cancel latency task %s: %w", id, err)
		}
	}
	if len(ack) == 0 {
		return nil, nil, errors.New("no samples")
	}
	return lat, ack, nil
}

// storeCeiling measures how many small conditional writes per second the
// store itself takes from the bench process: the ceiling under any task
// throughput, since every task is at least a create and a finish.
func storeCeiling(ctx context.Context, kv coord.Store, n, clients, perTxn int) (float64, error) {
	work := make(chan int, (n+perTxn-1)/perTxn)
	for i := 0; i < n; i += perTxn {
		work <- i
	}
	close(work)
	errs := make(chan error, clients)
	var wg sync.WaitGroup
	start := time.Now()
	for range max(clients, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for first := range work {
				var ops []coord.Op
				for i := first; i < min(first+perTxn, n); i++ {
					// Under the cluster root: the only prefix the nodes' store users may write.
					key := fmt.Sprintf("/taskd/bench-ceiling/%d/%02x/%d", perTxn, i%256, i)
					ops = append(ops, coord.CreateOp(key, []byte(`{"state":"succeeded"}`), nil))
				}
				if _, err := kv.Txn(ctx, nil, ops); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	d := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return float64(n) / d.Seconds(), nil
}

// noopThroughput creates n noop tasks from concurrent clients spread over
// the nodes and times the first create to the last task's end.
func noopThroughput(ctx context.Context, c *harness.Cluster, kv coord.Store, lay keys.Tasks, n, creators int) (float64, time.Duration, error) {
	return noopThroughputWith(ctx, c, kv, lay, n, creators, func(int) *taskdv1.CreateTaskRequest { return &taskdv1.CreateTaskRequest{Type: "noop"} })
}

// noopThroughputWith is noopThroughput with the create request of the
// i-th task made by req (a noop task, with a key or not).
func noopThroughputWith(ctx context.Context, c *harness.Cluster, kv coord.Store, lay keys.Tasks, n, creators int, req func(i int) *taskdv1.CreateTaskRequest) (float64, time.Duration, error) {
	f, stop := follow(ctx, kv, lay)
	defer stop()
	ids := make(chan string, n)
	work := make(chan int, n)
	for i := range n {
		work <- i
	}
	close(work)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, creators)
	for w := range max(creators, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			node := c.Nodes[w%len(c.Nodes)]
			for i := range work {
				id, err := createTask(ctx, node, req(i))
				if err != nil {
					errs <- err
					return
				}
				ids <- id
			}
		}()
	}
	wg.Wait()
	created := time.Since(start)
	close(ids)
	close(errs)
	if err := <-errs; err != nil {
		return 0, 0, err
	}
	// Wait for each task to leave the active directory. A watch may
	// coalesce a short-lived key away entirely, so a task the watch did
	// not report within a second is looked up directly.
	for id := range ids {
		for {
			wctx, cancel := context.WithTimeout(ctx, time.Second)
			_, err := f.wait(wctx, id, func(m *marks) bool { return !m.deleted.IsZero() })
			cancel()
			if err == nil {
				break
			}
			key, err := lay.ActiveKey(id)
			if err != nil {
				return 0, 0, err
			}
			if _, err := kv.Get(ctx, key); errors.Is(err, coord.ErrNotFound) {
				break
			} else if err != nil || ctx.Err() != nil {
				return 0, 0, fmt.Errorf("task %s: %w", id, errors.Join(err, ctx.Err()))
			}
		}
	}
	// The end is the last finish time the runners recorded.
	done, err := c.Nodes[0].Client().Tasks.ListTasks(ctx, connect.NewRequest(&taskdv1.ListTasksRequest{Status: "finished", Type: "noop"}))
	if err != nil {
		return 0, 0, err
	}
	var last time.Time
	ok := 0
	// The stages of a task, by the times its record holds: created (the
	// API node), assigned (the leader's write), finished (the runner's).
	var queued, ran []time.Duration
	for _, t := range done.Msg.Tasks {
		if t.State == "succeeded" && !t.Finished.AsTime().Before(start) {
			ok++
			if t.Finished.AsTime().After(last) {
				last = t.Finished.AsTime()
			}
			queued = append(queued, t.Started.AsTime().Sub(t.Created.AsTime()))
			ran = append(ran, t.Finished.AsTime().Sub(t.Started.AsTime()))
		}
	}
	if ok < n {
		return 0, 0, fmt.Errorf("only %d of %d noop tasks succeeded", ok, n)
	}
	d := last.Sub(start)
	fmt.Fprintf(os.Stderr, "noop: creates done after %v\n", created.Round(time.Millisecond))
	fmt.Fprintf(os.Stderr, "noop: created->assigned %s\n", summary(queued))
	fmt.Fprintf(os.Stderr, "noop: assigned->finished %s\n", summary(ran))
	return float64(n) / d.Seconds(), d, nil
}

// resumeAfterKill runs a sleep task on a non-leader runner, kills that
// runner with SIGKILL, and times the kill -> the next attempt's assignment
// and its first checkpoint. The killed node is restarted after each round.
// With onRaftHost the task is placed on the node that hosts the etcd raft
// leader (the other runners cordoned until it runs), and a round where
// the raft leadership moved before the kill is an error.
func resumeAfterKill(ctx context.Context, out io.Writer, c *harness.Cluster, kv coord.Store, lay keys.Tasks, rounds int, onRaftHost bool) ([]time.Duration, []time.Duration, error) {
	f, stop := follow(ctx, kv, lay)
	defer stop()
	var re, first []time.Duration
	for range rounds {
		st, err := harness.WaitAgreed(ctx, c.Nodes, 0)
		if err != nil {
			return nil, nil, err
		}
		leader := c.Node(st.Leader)
		if err := waitRunners(ctx, leader, 3); err != nil {
			return nil, nil, err
		}
		// Keep the task off the leader, so that the kill measures a
		// runner's loss and not a failover.
		if _, err := leader.Client().Runners.SetRunnerMarks(ctx, connect.NewRequest(&taskdv1.SetRunnerMarksRequest{Node: leader.Name, Action: "cordon"})); err != nil {
			return nil, nil, err
		}
		var held []string // runners cordoned to place the task on the raft host
		if onRaftHost {
			if held, err = placeOnRaftHost(ctx, c, leader); err != nil {
				return nil, nil, err
			}
		}
		id, err := createTask(ctx, leader, &taskdv1.CreateTaskRequest{Type: "sleep", Spec: `{"duration":"60s","checkpoint_interval":"100ms"}`})
		if err != nil {
			return nil, nil, err
		}
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		if _, err := f.wait(wctx, id, func(m *marks) bool { return !m.progress.IsZero() }); err != nil {
			cancel()
			return nil, nil, err
		}
		cancel()
		r, err := getRecord(ctx, kv, lay, id)
		if err != nil {
			return nil, nil, err
		}
		victim := c.Node(r.Runner)
		for _, n := range held {
			if err := setMark(ctx, leader, n, "uncordon"); err != nil {
				return nil, nil, err
			}
		}
		raft := ""
		if leads, err := victim.LeadsRaft(ctx); err == nil && leads {
			raft = " (it hosted the etcd raft leader)"
		} else if onRaftHost {
			return nil, nil, fmt.Errorf("the raft leadership left %s before the kill", victim.Name)
		}
		killed := time.Now()
		victim.Kill()
		wctx, cancel = context.WithTimeout(ctx, time.Minute)
		m, err := f.wait(wctx, id, func(m *marks) bool { _, ok := m.progressAt[2]; return ok })
		cancel()
		if err != nil {
			return nil, nil, err
		}
		re = append(re, m.attemptAt[2].Sub(killed))
		first = append(first, m.progressAt[2].Sub(killed))
		fmt.Fprintf(out, "  resume round: killed runner %s%s: attempt 2 assigned after %v, first checkpoint after %v\n",
			victim.Name, raft, re[len(re)-1].Round(time.Millisecond), first[len(first)-1].Round(time.Millisecond))
		if _, err := leader.Client().Tasks.CancelTask(ctx, connect.NewRequest(&taskdv1.TaskRef{Id: id})); err != nil {
			return nil, nil, err
		}
		if _, err := leader.Client().Runners.SetRunnerMarks(ctx, connect.NewRequest(&taskdv1.SetRunnerMarksRequest{Node: leader.Name, Action: "uncordon"})); err != nil {
			return nil, nil, err
		}
		if err := victim.Start(); err != nil {
			return nil, nil, err
		}
	}
	return re, first, nil
}

func getRecord(ctx context.Context, kv coord.Store, lay keys.Tasks, id string) (*task.Record, error) {
	key, err := lay.ActiveKey(id)
	if err != nil {
		return nil, err
	}
	v, err := kv.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	return task.Decode(v.Key, v.Value, v.Version)
}

// listUnfinished stores retained finished records directly (the way the
// runners leave them), adds paused tasks through the API, and times
// ListTasks(status=unfinished).
func listUnfinished(ctx context.Context, c *harness.Cluster, kv coord.Store, lay keys.Tasks, retained, n int) ([]time.Duration, int, error) {
	if err := storeFinished(ctx, kv, retained); err != nil {
		return nil, 0, err
	}
	api := c.Running()[0]
	const unfinished = 50
	for range unfinished {
		id, err := createTask(ctx, api, &taskdv1.CreateTaskRequest{Type: "sleep", Spec: `{"duration":"1h"}`, Window: "00:00-00:01", WindowZone: "Pacific/Kiritimati"})
		if err != nil {
			return nil, 0, err
		}
		if _, err := api.Client().Tasks.PauseTask(ctx, connect.NewRequest(&taskdv1.TaskRef{Id: id})); err != nil {
			return nil, 0, err
		}
	}
	var lat []time.Duration
	got := 0
	for range n {
		start := time.Now()
		r, err := api.Client().Tasks.ListTasks(ctx, connect.NewRequest(&taskdv1.ListTasksRequest{Status: "unfinished"}))
		if err != nil {
			return nil, 0, err
		}
		lat = append(lat, time.Since(start))
		got = len(r.Msg.Tasks)
	}
	return lat, got, nil
}

// storedSpan is the history storeFinished spreads its tasks over: six of
// the default retention's seven days, so that no node's collection
// deletes them while a benchmark runs.
const storedSpan = 6 * 24 * time.Hour

// storeFinished stores n succeeded noop records directly, the way the
// runners leave them (record and finished-task index entry), 50 to a
// transaction (100 operations: etcd takes at most 128), created evenly
// over the last storedSpan, as a cluster's retained history is (the index
// then has an hour bucket of some hundreds of tasks per hour, not one
// bucket of them all), each finished a second after its creation.
func storeFinished(ctx context.Context, kv coord.Store, n int) error {
	st, err := task.NewStore(kv, quorum.DefaultConfig().Root, nil, "", nil)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	step := storedSpan / time.Duration(max(n, 1))
	const batch = 50
	for i := 0; i < n; i += batch {
		var ops []coord.Op
		for j := i; j < min(i+batch, n); j++ {
			at := now.Add(-time.Duration(n-j) * step)
			end := at.Add(time.Second)
			r := &task.Record{ID: uuid.NewString(), Type: "noop", Spec: json.RawMessage("{}"), State: task.Succeeded, MaxRetries: 3, Attempt: 1,
				Created: at, Started: at, Finished: end, Updated: end,
				History: []task.Attempt{{N: 1, Runner: "n1", Started: at, Ended: end, Outcome: "succeeded"}}}
			o, err := st.FinishedOps(r)
			if err != nil {
				return err
			}
			ops = append(ops, o...)
		}
		if err := storeBatch(ctx, kv, ops); err != nil {
			return fmt.Errorf("store finished tasks: %w", err)
		}
	}
	return nil
}

// placeOnRaftHost cordons every runner but the node that hosts the etcd
// raft leader (other than the taskd leader, already cordoned) and returns
// the runners it cordoned.
func placeOnRaftHost(ctx context.Context, c *harness.Cluster, leader *harness.Node) ([]string, error) {
	var host *harness.Node
	err := harness.WaitFor(ctx, 50*time.Millisecond, func() bool {
		for _, n := range c.Nodes {
			if leads, err := n.LeadsRaft(ctx); err == nil && leads && n != leader {
				host = n
				return true
			}
		}
		return false
	})
	if err != nil {
		return nil, fmt.Errorf("no node but the taskd leader hosts the etcd raft leader: %w", err)
	}
	var held []string
	for _, n := range c.Nodes {
		if n != host && n != leader {
			if err := setMark(ctx, leader, n.Name, "cordon"); err != nil {
				return nil, err
			}
			held = append(held, n.Name)
		}
	}
	return held, nil
}

// setMark cordons or uncordons node through leader.
func setMark(ctx context.Context, leader *harness.Node, node, action string) error {
	_, err := leader.Client().Runners.SetRunnerMarks(ctx, connect.NewRequest(&taskdv1.SetRunnerMarksRequest{Node: node, Action: action}))
	return err
}

// storeBatch writes one batch of new keys, again after a lost connection
// (a loaded ZooKeeper server stalls past the client's timeout): a retry
// that finds its first key written means the lost attempt was applied
// (nothing else writes these random ids).
func storeBatch(ctx context.Context, kv coord.Store, ops []coord.Op) error {
	var err error
	for range 5 {
		if _, err = kv.Txn(ctx, nil, ops); err == nil || !errors.Is(err, coord.ErrUnavailable) {
			break
		}
		if _, gerr := kv.Get(ctx, ops[0].Key); gerr == nil {
			return nil
		}
		t := time.NewTimer(time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	return err
}

// cpuMeter reads the CPU time (user + system) of the cluster's processes:
// the external store's servers (none with the embedded store, which runs
// in taskd), the taskd nodes, and this benchmark.
type cpuMeter struct {
	groups []cpuGroup
}

type cpuGroup struct {
	name  string
	pids  []int
	start int64 // clock ticks at the meter's start
}

func (e *env) cpuMeter(c *harness.Cluster) *cpuMeter {
	m := &cpuMeter{}
	var store, nodes []int
	if e.ens != nil {
		for _, s := range e.ens.Servers {
			store = append(store, s.PID())
		}
	}
	if e.ext != nil {
		store = append(store, e.ext.PID())
	}
	for _, n := range c.Nodes {
		nodes = append(nodes, n.Proc.PID())
	}
	for _, g := range []cpuGroup{{name: "store servers", pids: store}, {name: "taskd nodes", pids: nodes}, {name: "this benchmark", pids: []int{os.Getpid()}}} {
		if len(g.pids) > 0 {
			g.start = ticksOf(g.pids)
			m.groups = append(m.groups, g)
		}
	}
	return m
}

// perTask is the CPU time each group used since the meter started,
// divided by n tasks. The processes must live through the measurement:
// one that exited reads as 0.
func (m *cpuMeter) perTask(n int) string {
	var parts []string
	for _, g := range m.groups {
		d := float64(ticksOf(g.pids)-g.start) / 100 // USER_HZ
		parts = append(parts, fmt.Sprintf("%s %.2f ms (%.1f s)", g.name, 1000*d/float64(n), d))
	}
	return strings.Join(parts, ", ")
}

func ticksOf(pids []int) int64 {
	var sum int64
	for _, pid := range pids {
		t, err := cpuTicks(pid)
		if err == nil {
			sum += t
		}
	}
	return sum
}

// batchCounters sums the runners' batcher metrics (--runner-batch-writes):
// writes joined and alone, and the transactions that joined them.
func batchCounters(ctx context.Context, c *harness.Cluster) string {
	names := []string{
		`taskd_runner_batched_writes_total{how="joined"}`, `taskd_runner_batched_writes_total{how="alone"}`, "taskd_runner_write_batches_total",
	}
	sum := map[string]float64{}
	for _, n := range c.Nodes {
		b, err := n.Metrics(ctx)
		if err != nil {
			return err.Error()
		}
		for _, line := range strings.Split(b, "\n") {
			for _, name := range names {
				if v, ok := strings.CutPrefix(line, name+" "); ok {
					f, _ := strconv.ParseFloat(v, 64)
					sum[name] += f
				}
			}
		}
	}
	var parts []string
	for _, name := range names {
		parts = append(parts, fmt.Sprintf("%s %.0f", name, sum[name]))
	}
	return strings.Join(parts, ", ")
}
