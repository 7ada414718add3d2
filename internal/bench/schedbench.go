package bench

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/taskd/taskd/internal/keys"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/schedule"
	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/tasktype"
)

// schedBench measures schedules on a three-node loopback cluster: the
// latency from a tick to its task in the store, the leader's CPU with many
// idle schedules, and kill -9 of the leader at a tick (lost and doubled
// ticks).
func schedBench(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("schedules", flag.ContinueOnError)
	backend := fs.String("backend", "embedded", "embedded, zk or etcd")
	timeout := fs.Duration("session-timeout", 3*time.Second, "taskd --session-timeout")
	latN := fs.Int("latency-schedules", 20, "schedules ticking together for the latency run (0: skip)")
	latEvery := fs.Duration("latency-every", 2*time.Second, "their interval")
	latFor := fs.Duration("latency-for", 60*time.Second, "how long the latency run lasts")
	idleN := fs.Int("idle-schedules", 10000, "schedules stored for the idle CPU run (0: skip)")
	idleFor := fs.Duration("idle-for", 60*time.Second, "how long the leader's CPU is sampled")
	kills := fs.Int("kills", 100, "kill -9 trials of the leader at a tick (0: skip)")
	killEvery := fs.Duration("kill-every", 6*time.Second, "interval of the schedule in the kill trials (above the failover time)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *latN < 0 || *latN > 1000 || *idleN < 0 || *idleN > 100000 || *kills < 0 || *kills > 1000 {
		return errors.New("-latency-schedules 0-1000, -idle-schedules 0-100000, -kills 0-1000")
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
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Hour)
	defer cancel()
	if _, err := harness.WaitAgreed(ctx, c.Nodes, 0); err != nil {
		return err
	}
	kv, err := e.benchStore(c)
	if err != nil {
		return err
	}
	defer kv.Close()
	tasks, err := task.NewStore(kv, "/taskd", tasktype.Builtin(tasktype.Copy{}, nil, nil), "UTC", nil)
	if err != nil {
		return err
	}
	root, err := keys.NewRoot("/taskd")
	if err != nil {
		return err
	}
	scs := schedule.NewStore(kv, root, tasks)
	fmt.Fprintf(out, "schedules: backend=%s 3 nodes on loopback, session-timeout=%v\n", *backend, *timeout)

	if *latN > 0 {
		lat, err := tickLatency(ctx, kv, scs, tasks.Layout(), *latN, *latEvery, *latFor)
		if err != nil {
			return fmt.Errorf("latency: %w", err)
		}
		fmt.Fprintf(out, "tick -> task created, seen by a watch of the store (%d schedules every %v, ticking together, %v): %s\n", *latN, *latEvery, *latFor, summary(lat))
		fmt.Fprintf(out, "tick -> task created, the leader's log line after its transaction committed: %s\n", summary(firedFromLogs(c, "lat-")))
	}
	if *idleN > 0 {
		if err := idleCPU(ctx, out, c, scs, *idleN, *idleFor); err != nil {
			return fmt.Errorf("idle cpu: %w", err)
		}
	}
	if *kills > 0 {
		if err := killAtTick(ctx, out, c, scs, *kills, *killEvery); err != nil {
			return fmt.Errorf("kill at tick: %w", err)
		}
	}
	return nil
}

// tickLatency creates n interval schedules and times, for every tick,
// tick -> the task's first appearance in a watch of the store.
func tickLatency(ctx context.Context, kv coord.Store, scs *schedule.Store, lay keys.Tasks, n int, every, span time.Duration) ([]time.Duration, error) {
	wctx, cancel := context.WithCancel(ctx)
	w := kv.Watch(wctx, lay.ActiveDir())
	events := w.Events()
	var mu sync.Mutex
	var lat []time.Duration
	seen := map[string]bool{}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ev := range events {
			now := time.Now()
			if ev.Type != coord.EventPut {
				continue
			}
			r, err := task.Decode(ev.KV.Key, ev.KV.Value, ev.KV.Version)
			if err != nil || r.Schedule == "" || seen[r.ID] || r.Tick.IsZero() {
				continue
			}
			seen[r.ID] = true
			mu.Lock()
			lat = append(lat, now.Sub(r.Tick))
			mu.Unlock()
		}
	}()
	defer func() { cancel(); wg.Wait(); w.Close() }()
	names := make([]string, n)
	for i := range n {
		names[i] = fmt.Sprintf("lat-%03d", i)
		if _, err := scs.Create(ctx, schedule.CreateRequest{Name: names[i], Spec: schedule.Spec{Every: every.String()},
			Template: schedule.Template{Type: "noop"}, Overlap: "allow", KeepLast: 5}); err != nil {
			return nil, err
		}
	}
	t := time.NewTimer(span)
	select {
	case <-t.C:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	for _, name := range names {
		if err := scs.Delete(ctx, name); err != nil {
			return nil, err
		}
	}
	mu.Lock()
	defer mu.Unlock()
	// Ticks of schedules created in the same second coincide; a tick seen
	// before the schedule was synced to the leader (its first tick) is
	// included: it is what an operator waits for.
	return append([]time.Duration(nil), lat...), nil
}

// firedFromLogs reads the nodes' JSON logs for schedule_fired lines of
// schedules named prefix*: the line's time (right after the transaction
// that created the task returned) minus the tick.
func firedFromLogs(c *harness.Cluster, prefix string) []time.Duration {
	var out []time.Duration
	for _, nd := range c.Nodes {
		for _, line := range strings.Split(nd.Log(), "\n") {
			if !strings.Contains(line, `"event":"schedule_fired"`) {
				continue
			}
			var l struct {
				Time     time.Time `json:"time"`
				Schedule string    `json:"schedule"`
				Tick     time.Time `json:"tick"`
			}
			if json.Unmarshal([]byte(line), &l) == nil && strings.HasPrefix(l.Schedule, prefix) {
				out = append(out, l.Time.Sub(l.Tick))
			}
		}
	}
	return out
}

// idleCPU samples the leader's CPU from /proc, first with no schedules,
// then with n daily schedules that do not tick during the sample.
func idleCPU(ctx context.Context, out io.Writer, c *harness.Cluster, scs *schedule.Store, n int, span time.Duration) error {
	sample := func(what string) error {
		st, err := harness.WaitAgreed(ctx, c.Nodes, 0)
		if err != nil {
			return err
		}
		pid := c.Node(st.Leader).Proc.PID()
		cpu0, err := cpuTicks(pid)
		if err != nil {
			return err
		}
		start := time.Now()
		t := time.NewTimer(span)
		<-t.C
		cpu1, err := cpuTicks(pid)
		if err != nil {
			return err
		}
		sec := float64(cpu1-cpu0) / 100 // USER_HZ
		el := time.Since(start).Seconds()
		fmt.Fprintf(out, "leader CPU, %s: %.2fs in %.0fs = %.2f%% of one core (leader %s, from /proc/%d/stat)\n", what, sec, el, 100*sec/el, st.Leader, pid)
		return nil
	}
	if err := sample("no schedules"); err != nil {
		return err
	}
	// Daily ticks spread over the hours that are at least 3 h away, in a
	// few zones, so none fires during the sample.
	now := time.Now().UTC()
	zones := []string{"UTC", "Europe/Berlin", "America/New_York", "Asia/Shanghai"}
	start := time.Now()
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for i := range n {
		zone := zones[i%len(zones)]
		loc, _ := time.LoadLocation(zone)
		h := (now.Add(time.Duration(3+i%18) * time.Hour).In(loc).Hour())
		req := schedule.CreateRequest{Name: fmt.Sprintf("idle-%05d", i), Spec: schedule.Spec{Cron: fmt.Sprintf("%d %d * * *", i%60, h), Zone: zone},
			Template: schedule.Template{Type: "noop"}}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if _, err := scs.Create(ctx, req); err != nil {
				mu.Lock()
				firstErr = errors.Join(firstErr, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	fmt.Fprintf(out, "stored %d daily schedules in %v\n", n, time.Since(start).Round(time.Millisecond))
	settle := time.NewTimer(10 * time.Second) // the leader takes them in through its watch
	<-settle.C
	return sample(fmt.Sprintf("%d idle schedules", n))
}

// killAtTick kills -9 the leader at a tick of an interval schedule, n
// times, restarting it each time, and counts the ticks without a task
// (lost) and with more than one (doubled).
func killAtTick(ctx context.Context, out io.Writer, c *harness.Cluster, scs *schedule.Store, n int, every time.Duration) error {
	sc, err := scs.Create(ctx, schedule.CreateRequest{Name: "kill-tick", Spec: schedule.Spec{Every: every.String()},
		Template: schedule.Template{Type: "noop"}, Overlap: "allow", KeepLast: 1000})
	if err != nil {
		return err
	}
	anchor := sc.Created.Truncate(time.Second)
	first := harness.NextTick(anchor, every, 0, anchor)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	var failovers []time.Duration
	var epoch int64
	for i := range n {
		st, err := harness.WaitAgreed(ctx, c.Nodes, epoch)
		if err != nil {
			return fmt.Errorf("trial %d: no leader: %w", i+1, err)
		}
		victim := c.Node(st.Leader)
		tick := harness.NextTick(anchor, every, 2*time.Second, time.Now())
		at := tick.Add(time.Duration(rng.IntN(41)-20) * time.Millisecond)
		t := time.NewTimer(time.Until(at))
		<-t.C
		killed := time.Now()
		victim.Kill()
		nst, err := harness.WaitAgreed(ctx, others(c, victim.Name), st.Epoch)
		if err != nil {
			return fmt.Errorf("trial %d: no successor: %w", i+1, err)
		}
		failovers = append(failovers, time.Since(killed))
		if err := victim.Start(); err != nil {
			return err
		}
		epoch = nst.Epoch - 1
		if (i+1)%10 == 0 {
			fmt.Fprintf(os.Stderr, "kill trial %d/%d\n", i+1, n)
		}
	}
	last := harness.NextTick(anchor, every, 0, time.Now())
	var made map[int64]int
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := harness.WaitFor(wctx, 100*time.Millisecond, func() bool {
		made, err = harness.TicksMade(wctx, c.Running()[0], "kill-tick")
		return err == nil && made[last.UnixNano()] > 0
	}); err != nil {
		return fmt.Errorf("last tick %v never fired: %w", last, err)
	}
	got := harness.CountTicks(made, anchor, every, first, last)
	// Which leader fired the killed ticks: the old one before it died, or
	// the new one after (caught up), from the nodes' logs.
	caught := 0
	for _, nd := range c.Nodes {
		caught += strings.Count(nd.Log(), `"event":"schedule_caught_up","schedule":"kill-tick"`)
	}
	fmt.Fprintf(out, "kill -9 of the leader at a tick (±20 ms), %d trials, schedule every %v: ticks=%d lost=%d doubled=%d (caught up by the new leader: %d); failover kill->new leader: %s\n",
		n, every, got.Fired+got.Missed+got.Doubled, got.Missed, got.Doubled, caught, summary(failovers))
	for _, t := range got.MissedAt {
		fmt.Fprintf(out, "  lost tick %s\n", t.Format(time.RFC3339))
	}
	for _, t := range got.DoubledAt {
		fmt.Fprintf(out, "  doubled tick %s\n", t.Format(time.RFC3339))
	}
	return nil
}
