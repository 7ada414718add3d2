package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/chromedp/chromedp"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/webui"
)

// consoleBench times the web console in headless Chromium with many
// finished and many running tasks: the first rows of the task table after
// a page load, and a new task's row appearing live.
func consoleBench(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("console", flag.ContinueOnError)
	backend := fs.String("backend", "embedded", "embedded, zk or etcd")
	finished := fs.Int("finished", 100000, "finished tasks stored before the browser opens")
	running := fs.Int("running", 1000, "running sleep tasks while the browser is open")
	reps := fs.Int("reps", 5, "page loads timed")
	updates := fs.Int("updates", 20, "live updates timed (one new task each)")
	batch := fs.Bool("batch-writes", false, "run the nodes with --runner-batch-writes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, v := range []struct {
		name   string
		v, max int
	}{{"finished", *finished, 1000000}, {"running", *running, 3000}, {"reps", *reps, 100}, {"updates", *updates, 1000}} {
		if v.v < 0 || v.v > v.max {
			return fmt.Errorf("-%s must be 0-%d", v.name, v.max)
		}
	}
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		return fmt.Errorf("chromium (Debian package chromium): %w", err)
	}
	e, cleanup, err := setup(*backend, 6*time.Second)
	if err != nil {
		return err
	}
	defer cleanup()
	e.opts.Extra = append(e.opts.Extra, "--runner-capacity", fmt.Sprint(*running/3+*updates+10))
	if *batch {
		e.opts.Extra = append(e.opts.Extra, "--runner-batch-writes")
	}
	c, err := e.startCluster(3)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	st, err := harness.WaitAgreed(ctx, c.Nodes, 0)
	if err != nil {
		return err
	}
	kv, err := e.benchStore(c)
	if err != nil {
		return err
	}
	defer kv.Close()
	if err := storeFinished(ctx, kv, *finished); err != nil {
		return err
	}
	stored := time.Now()
	api := c.Node(st.Leader)
	if err := waitRunners(ctx, api, 3); err != nil {
		return err
	}
	if err := startSleepers(ctx, api, *running); err != nil {
		return err
	}
	ui, err := webui.AssetBytes()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "console: backend=%s 3 nodes, %d finished tasks, %d running, batch writes %v; the console's files: %d bytes in the binary\n", *backend, *finished, *running, *batch, ui)
	// Until the leader's backfill marks the finished-task index ready, a
	// page reads the whole history: say which the figures below measure.
	ready, err := indexReady(ctx, kv)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "finished-task index at the first timing (%s after the history was stored): %s\n", time.Since(stored).Round(time.Second), ready)

	bctx, stop, err := startChromium(ctx, chromium, c, e.dir)
	if err != nil {
		return err
	}
	defer stop()
	page := (&url.URL{Scheme: "https", Host: api.API, Path: "/ui/"}).String()
	if err := chromedp.Do(bctx, chromedp.Navigate(page), chromedp.WaitVisible(`#token`),
		chromedp.SendKeys(`#token`, api.Token), chromedp.Click(`#login-submit`)); err != nil {
		return fmt.Errorf("log in: %w", err)
	}
	if _, err := waitEval[int](bctx, 10*time.Second, `document.getElementById('view').checkVisibility() && document.getElementById('who').textContent !== '' ? 1 : 0`); err != nil {
		return fmt.Errorf("log in: %w", err)
	}
	// The server's part, without a browser: the console's first-page
	// request, and the live stream's first message (the snapshot of the
	// unfinished tasks), each timed alone.
	lists, snaps, err := serverParts(ctx, api, *reps*4)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "server: ListTasks as the console's first page asks it (limit 50, newest first, explain): %s\n", summary(lists))
	fmt.Fprintf(out, "server: WatchTasks call -> first message (the snapshot of %d unfinished tasks): %s\n", *running, summary(snaps))

	var paints, settled []time.Duration
	steps := make([][]time.Duration, 9)
	for range *reps {
		// A page load of the task table: the token stays in the tab.
		if err := chromedp.Do(bctx, chromedp.Navigate("about:blank"), chromedp.Navigate(page+"#/tasks")); err != nil {
			return fmt.Errorf("load the task table: %w", err)
		}
		ms, err := waitEval[float64](bctx, 20*time.Second, `(performance.getEntriesByName('taskd:tasks-rendered')[0] || {}).startTime || 0`)
		if err != nil {
			return fmt.Errorf("the task table's first rows: %w", err)
		}
		paints = append(paints, time.Duration(ms*float64(time.Millisecond)))
		// Where the time before the rows went: the page's document, its
		// files (the last one in), the scripts run, the first ListTasks
		// called, on the wire, its answer's first byte and its end (all
		// from navigation start).
		rt, err := chromedp.Run(bctx, chromedp.Evaluate[[]float64](`(() => {
			const nav = performance.getEntriesByType('navigation')[0] || {};
			const res = performance.getEntriesByType('resource');
			const files = res.filter((e) => !e.name.includes('/taskd.v1.')).map((e) => e.responseEnd);
			const list = res.filter((e) => e.name.endsWith('.TaskService/ListTasks'))[0] || {};
			const fcp = performance.getEntriesByName('first-contentful-paint')[0] || {};
			return [nav.responseEnd || 0, Math.max(0, ...files), nav.domContentLoadedEventEnd || 0, fcp.startTime || 0, list.startTime || 0, list.requestStart || 0, list.responseStart || 0, list.responseEnd || 0,
				((list.serverTiming || []).find((t) => t.name === 'handler') || {}).duration || 0];
		})()`))
		if err != nil || len(rt) != len(steps) {
			return fmt.Errorf("the page's timings: %v (%d values)", err, len(rt))
		}
		for i, ms := range rt {
			steps[i] = append(steps[i], time.Duration(ms*float64(time.Millisecond)))
		}
		// The page settles before the next load: its live stream's first
		// message (every unfinished task) is in. An operator does not
		// reload a page within its first second; a load that follows at
		// once competes in the server with the last page's snapshot.
		ms, err = waitEval[float64](bctx, 20*time.Second, `(performance.getEntriesByName('taskd:tasks-live')[0] || {}).startTime || 0`)
		if err != nil {
			return fmt.Errorf("the task table's live stream: %w", err)
		}
		settled = append(settled, time.Duration(ms*float64(time.Millisecond)))
	}
	fmt.Fprintf(out, "first rows of the task table after a page load (navigation start -> rows shown, 50 of %d): %s\n", *finished+*running, summary(paints))
	for i, what := range []string{"the page's document in", "the console's files in", "scripts run (DOMContentLoaded end)",
		"first contentful paint (the browser's first paint)", "first ListTasks sent",
		"first ListTasks on the wire (requestStart)", "first ListTasks answer's first byte (responseStart)", "first ListTasks answered"} {
		fmt.Fprintf(out, "  of which: navigation start -> %s: %s\n", what, summary(steps[i]))
	}
	// The server's own account (its Server-Timing header): the rest of
	// requestStart -> responseStart is the network, the TLS and HTTP/2
	// layers of both ends, and waiting for a CPU.
	fmt.Fprintf(out, "  the first ListTasks in the server (its Server-Timing, guard -> answer's headers): %s\n", summary(steps[8]))
	fmt.Fprintf(out, "  then: navigation start -> the table live (WatchTasks' first message in; the next load waits for it): %s\n", summary(settled))
	// How the last load got its files: the protocol, and the bytes that
	// crossed the network (0: from the browser's cache).
	if how, err := chromedp.Run(bctx, chromedp.Evaluate[string](`(() => {
		const res = performance.getEntriesByType('resource').filter((e) => !e.name.includes('/taskd.v1.'));
		return (performance.getEntriesByType('navigation')[0] || {}).nextHopProtocol + ', ' + res.length + ' files, ' + res.reduce((n, e) => n + e.transferSize, 0) + ' bytes over the network';
	})()`)); err == nil {
		fmt.Fprintf(out, "  the last load: %s\n", how)
	}

	// The same first-page request made by the open page's own transport
	// (JSON over fetch) once the page has loaded: the browser's share of
	// a ListTasks, apart from the page load.
	var inPage []time.Duration
	ms, err := chromedp.Run(bctx, chromedp.Evaluate[[]float64](`(async () => { const t = [];
		for (let i = 0; i < 10; i++) { const s = performance.now(); await call('TaskService', 'ListTasks', { limit: 50, newestFirst: true, explain: true }); t.push(performance.now() - s); }
		return t; })()`, chromedp.EvalAwaitPromise))
	if err != nil {
		return fmt.Errorf("ListTasks from the page: %w", err)
	}
	for _, v := range ms {
		inPage = append(inPage, time.Duration(v*float64(time.Millisecond)))
	}
	fmt.Fprintf(out, "ListTasks from the loaded page (its own JSON transport, one after another): %s\n", summary(inPage))

	// Live: the page records when each row first appears (its clock is
	// this machine's); the row of a new task is awaited after its create.
	if _, err := chromedp.Run(bctx, chromedp.Evaluate[bool](`(() => { window.__seen = {};
		new MutationObserver(() => { for (const r of document.querySelectorAll('tr[data-task]')) if (!(r.dataset.task in window.__seen)) window.__seen[r.dataset.task] = Date.now(); })
			.observe(document.getElementById('view'), { subtree: true, childList: true }); return true; })()`)); err != nil {
		return fmt.Errorf("watch the table: %w", err)
	}
	var live []time.Duration
	for range *updates {
		start := time.Now()
		id, err := createTask(ctx, api, &taskdv1.CreateTaskRequest{Type: "sleep", Spec: `{"duration":"1h"}`})
		if err != nil {
			return err
		}
		at, err := waitEval[float64](bctx, 10*time.Second, fmt.Sprintf(`window.__seen[%q] || 0`, id))
		if err != nil {
			return fmt.Errorf("task %s never showed in the table: %w", id, err)
		}
		live = append(live, time.UnixMilli(int64(at)).Sub(start))
	}
	fmt.Fprintf(out, "live update (create call -> the new task's row in the open table, %d running): %s\n", *running, summary(live))
	return nil
}

// indexReady tells whether the leader has marked the finished-task index
// ready (pages read from it) or not yet (pages read every record).
func indexReady(ctx context.Context, kv coord.Store) (string, error) {
	st, err := task.NewStore(kv, quorum.DefaultConfig().Root, nil, "", nil)
	if err != nil {
		return "", err
	}
	ok, err := st.IndexReady(ctx)
	if err != nil {
		return "", err
	}
	if !ok {
		return "NOT ready (the leader's backfill has not ended: each page reads every finished record)", nil
	}
	return "ready", nil
}

// startSleepers creates n hour-long sleep tasks and waits until all run.
func startSleepers(ctx context.Context, api *harness.Node, n int) error {
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 16 {
				if _, err := createTask(ctx, api, &taskdv1.CreateTaskRequest{Type: "sleep", Spec: `{"duration":"1h"}`}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := errors.Join(func() (all []error) {
		for err := range errs {
			all = append(all, err)
		}
		return all
	}()...); err != nil {
		return err
	}
	return harness.WaitFor(ctx, 200*time.Millisecond, func() bool {
		r, err := api.Client().Tasks.ListTasks(ctx, connect.NewRequest(&taskdv1.ListTasksRequest{Status: "running", Limit: 1}))
		return err == nil && int(r.Msg.Total) >= n
	})
}

// startChromium starts headless Chromium that trusts exactly the nodes'
// certificates and resolves no host name (it reaches only loopback).
func startChromium(ctx context.Context, bin string, c *harness.Cluster, dir string) (context.Context, func(), error) {
	profile, err := os.MkdirTemp(dir, "chromium")
	if err != nil {
		return nil, nil, err
	}
	opts, err := harness.ChromiumOptions(bin, profile, c)
	if err != nil {
		return nil, nil, err
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	bctx, cancel := chromedp.NewContext(actx)
	stop := func() {
		cancel()
		cancelAlloc() // kills Chromium and waits for it
	}
	if err := chromedp.Do(bctx); err != nil {
		stop()
		return nil, nil, fmt.Errorf("start chromium: %w", err)
	}
	return bctx, stop, nil
}

// waitEval evaluates expr every 5 ms until it is not zero.
func waitEval[T float64 | int](ctx context.Context, limit time.Duration, expr string) (T, error) {
	wctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var v T
	err := harness.WaitFor(wctx, 5*time.Millisecond, func() bool {
		got, err := chromedp.Run(wctx, chromedp.Evaluate[T](expr))
		v = got
		return err == nil && got != 0
	})
	return v, err
}

// serverParts times, n times each and one at a time, the console's
// first-page ListTasks and a WatchTasks stream's first message.
func serverParts(ctx context.Context, api *harness.Node, n int) (lists, snaps []time.Duration, err error) {
	cl := api.Client()
	for range n {
		start := time.Now()
		if _, err := cl.Tasks.ListTasks(ctx, connect.NewRequest(&taskdv1.ListTasksRequest{Limit: 50, NewestFirst: true, Explain: true})); err != nil {
			return nil, nil, fmt.Errorf("list tasks: %w", err)
		}
		lists = append(lists, time.Since(start))
		sctx, cancel := context.WithCancel(ctx)
		start = time.Now()
		st, err := cl.Tasks.WatchTasks(sctx, connect.NewRequest(&taskdv1.WatchTasksRequest{}))
		if err == nil && !st.Receive() {
			err = fmt.Errorf("watch tasks: no first message: %w", st.Err())
		}
		if err == nil {
			snaps = append(snaps, time.Since(start))
			err = st.Close()
		}
		cancel()
		if err != nil {
			return nil, nil, err
		}
	}
	return lists, snaps, nil
}
