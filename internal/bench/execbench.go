package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/keys"
)

// execNoop is the exec bench's program: it does nothing and succeeds.
const execNoop = "#!/bin/sh\nexit 0\n"

// execBench measures issue 15's figures on a 3-node cluster: the exec
// type's overhead per task (a program that does nothing against the
// built-in noop type, each task created and run one at a time), noop
// throughput with concurrency keys against without, and the dispatch
// latency of a keyed task while many keyed tasks wait over many keys.
func execBench(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("exec", flag.ContinueOnError)
	backend := fs.String("backend", "embedded", "embedded, zk or etcd")
	timeout := fs.Duration("session-timeout", 6*time.Second, "taskd --session-timeout")
	seqN := fs.Int("seq-n", 100, "tasks of each type run one at a time for the exec overhead")
	noopN := fs.Int("noop-n", 2000, "noop tasks per throughput run (without and with keys)")
	creators := fs.Int("creators", 32, "concurrent clients creating noop tasks")
	keysN := fs.Int("keys", 1000, "concurrency keys (limit 1) of the waiting tasks")
	waitingN := fs.Int("waiting", 10000, "keyed tasks left waiting behind their keys' holders")
	probeN := fs.Int("probe-n", 100, "keyed tasks with a free key timed create -> running among the waiting ones")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := checkRanges([]intFlag{{"seq-n", *seqN, 10000}, {"noop-n", *noopN, 100000}, {"creators", *creators, 256},
		{"keys", *keysN, 5000}, {"waiting", *waitingN, 100000}, {"probe-n", *probeN, 10000}}); err != nil {
		return err
	}
	e, cleanup, err := setup(*backend, *timeout)
	if err != nil {
		return err
	}
	defer cleanup()
	types := filepath.Join(e.dir, "types.d")
	if err := os.MkdirAll(types, 0o755); err != nil {
		return err
	}
	if err := os.Chmod(types, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(types, "xnoop"), []byte(execNoop), 0o755); err != nil {
		return err
	}
	// Room for every key's holder and the probes.
	capacity := (*keysN + *probeN + 2) / 3 * 2
	capacity = max(capacity, 64)
	e.opts.Extra = append(e.opts.Extra, "--exec-dir", types, "--runner-capacity", fmt.Sprint(capacity))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	c, kv, lay, closeCluster, err := e.taskCluster(ctx, 3)
	if err != nil {
		return err
	}
	defer closeCluster()
	fmt.Fprintf(out, "exec: backend=%s 3 nodes on loopback, session-timeout=%v runner-capacity=%d\n", *backend, *timeout, capacity)

	if *seqN > 0 {
		noop, err := oneAtATime(ctx, c, kv, lay, "noop", *seqN)
		if err != nil {
			return fmt.Errorf("noop one at a time: %w", err)
		}
		ex, err := oneAtATime(ctx, c, kv, lay, "xnoop", *seqN)
		if err != nil {
			return fmt.Errorf("exec one at a time: %w", err)
		}
		fmt.Fprintf(out, "noop (built-in) create->finished, one at a time:       %s\n", summary(noop))
		fmt.Fprintf(out, "exec (sh: exit 0) create->finished, one at a time:     %s\n", summary(ex))
		fmt.Fprintf(out, "exec overhead per task (p50 exec - p50 noop): %v\n", (median(ex) - median(noop)).Round(10*time.Microsecond))
	}
	if *noopN > 0 {
		plain, d1, err := noopThroughput(ctx, c, kv, lay, *noopN, *creators)
		if err != nil {
			return fmt.Errorf("noop throughput: %w", err)
		}
		keyed, d2, err := noopThroughputWith(ctx, c, kv, lay, *noopN, *creators, func(i int) *taskdv1.CreateTaskRequest {
			// 100 keys whose limit never binds: the cost of the keys'
			// bookkeeping, not of waiting for them.
			return &taskdv1.CreateTaskRequest{Type: "noop", Key: fmt.Sprintf("bench/k%d", i%100), KeyLimit: 1000}
		})
		if err != nil {
			return fmt.Errorf("keyed noop throughput: %w", err)
		}
		fmt.Fprintf(out, "noop throughput without keys: %d tasks in %v = %.0f tasks/s\n", *noopN, d1.Round(time.Millisecond), plain)
		fmt.Fprintf(out, "noop throughput with keys (100 keys, limit 1000): %d tasks in %v = %.0f tasks/s (%+.1f%%)\n", *noopN, d2.Round(time.Millisecond), keyed, (keyed/plain-1)*100)
	}
	if *waitingN > 0 && *probeN > 0 {
		lat, err := keyedLatency(ctx, c, kv, lay, *keysN, *waitingN, *probeN, *creators, out)
		if err != nil {
			return fmt.Errorf("keyed dispatch: %w", err)
		}
		fmt.Fprintf(out, "keyed dispatch create->running with %d tasks waiting over %d keys (limit 1): %s\n", *waitingN, *keysN, summary(lat))
	}
	return nil
}

// oneAtATime creates n tasks of typ one at a time, through the three
// nodes in turn, and times create -> the record leaving the active
// directory (finished).
func oneAtATime(ctx context.Context, c *harness.Cluster, kv coord.Store, lay keys.Tasks, typ string, n int) ([]time.Duration, error) {
	f, stop := follow(ctx, kv, lay)
	defer stop()
	var out []time.Duration
	for i := range n {
		node := c.Nodes[i%len(c.Nodes)]
		start := time.Now()
		id, err := createTask(ctx, node, &taskdv1.CreateTaskRequest{Type: typ, Spec: "{}"})
		if err != nil {
			return nil, err
		}
		if err := waitFinished(ctx, f, kv, lay, id); err != nil {
			return nil, err
		}
		f.mu.Lock()
		end := f.marks[id].deleted
		f.mu.Unlock()
		out = append(out, end.Sub(start))
	}
	return out, nil
}

// waitFinished waits until the watch saw id leave the active directory.
func waitFinished(ctx context.Context, f *follower, kv coord.Store, lay keys.Tasks, id string) error {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err := f.wait(wctx, id, func(m *marks) bool { return !m.deleted.IsZero() })
	if err != nil {
		key, kerr := lay.ActiveKey(id)
		if kerr == nil {
			_, kerr = kv.Get(ctx, key)
		}
		return fmt.Errorf("task %s not seen finished (the watch coalesced it, or it still runs: %v): %w", id, kerr, err)
	}
	return nil
}

// keyedLatency creates keys holders (long sleep tasks, one per key, limit
// 1) and waiting tasks behind them, then times probe tasks with a key of
// their own, one at a time, create -> running: each is one dispatcher
// pass over all the waiting tasks.
func keyedLatency(ctx context.Context, c *harness.Cluster, kv coord.Store, lay keys.Tasks, keysN, waitingN, probeN, creators int, out io.Writer) ([]time.Duration, error) {
	f, stop := follow(ctx, kv, lay)
	defer stop()
	total := keysN + waitingN
	work := make(chan int, total)
	for i := range total {
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
				// An hour with one checkpoint: the holders stay running
				// and write nothing meanwhile.
				_, err := createTask(ctx, node, &taskdv1.CreateTaskRequest{Type: "sleep", Spec: `{"duration":"1h","checkpoint_interval":"1h"}`,
					Key: fmt.Sprintf("bench/key-%d", i%keysN), KeyLimit: 1})
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	// Every key's holder running: the rest wait behind them.
	if err := harness.WaitFor(ctx, 200*time.Millisecond, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		n := 0
		for _, m := range f.marks {
			if !m.running.IsZero() {
				n++
			}
		}
		return n >= keysN
	}); err != nil {
		return nil, errors.New("the keys' holders did not all start")
	}
	fmt.Fprintf(out, "keyed: %d tasks created and %d holders running after %v\n", total, keysN, time.Since(start).Round(time.Millisecond))
	var lat []time.Duration
	for i := range probeN {
		node := c.Nodes[i%len(c.Nodes)]
		t0 := time.Now()
		id, err := createTask(ctx, node, &taskdv1.CreateTaskRequest{Type: "sleep", Spec: `{"duration":"1h","checkpoint_interval":"1h"}`,
			Key: fmt.Sprintf("bench/probe-%d", i), KeyLimit: 1})
		if err != nil {
			return nil, err
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		m, err := f.wait(wctx, id, func(m *marks) bool { return !m.running.IsZero() })
		cancel()
		if err != nil {
			return nil, err
		}
		lat = append(lat, m.running.Sub(t0))
	}
	return lat, nil
}
