package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/harness"
)

// TestConsole drives the web console in headless Chromium against a real
// three-node cluster: log in as admin, see the leader, watch a task that
// taskctl created make progress, kill -9 its runner and see the task move
// on its page, cancel it from the page; then log in as a viewer, who sees
// no action and whose call, made from the page anyway, the API refuses.
func TestConsole(t *testing.T) {
	execDir := t.TempDir()
	if err := os.Chmod(execDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(execDir, "shout"), []byte(shoutProgram), 0o755); err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, 3, harness.Options{SessionTimeout: taskTimeout, Extra: []string{"--exec-dir", execDir}})
	leader := ready(t, c)
	b := newBrowser(t, c)

	// Log in with the leader's admin token; the cluster view names the
	// leader and its epoch.
	st, err := harness.WaitAgreed(ctxFor(t, 10*time.Second), c.Nodes, 0)
	if err != nil {
		t.Fatal(err)
	}
	b.login(leader, leader.Token)
	b.waitJS(5*time.Second, "the leader shown", fmt.Sprintf(`document.getElementById('leader')?.textContent === %q && document.getElementById('epoch')?.textContent === %q`, st.Leader, fmt.Sprint(st.Epoch)))
	b.waitJS(5*time.Second, "three members listed", `document.querySelectorAll('tr[data-member]').length === 3`)
	b.shot("cluster")

	// A task created with taskctl, on a runner other than the leader (the
	// test kills it) and other than the etcd raft leader's host (see
	// TestTaskResumesAfterRunnerKill).
	cordon(t, leader, leader.Name)
	var raftHost *harness.Node
	for _, n := range c.Nodes {
		if hosts, err := n.LeadsRaft(context.Background()); err == nil && hosts && n != leader {
			raftHost = n
			cordon(t, leader, n.Name)
		}
	}
	spec := sleepSpec(60*time.Second, 500*time.Millisecond, filepath.Join(t.TempDir(), "ledger"))
	code, out := runTaskctl(t, leader.CtlEnv(), "task", "create", "sleep", "--spec", spec)
	if code != 0 {
		t.Fatalf("taskctl task create: exit %d\n%s", code, out)
	}
	id := strings.TrimSpace(out)

	// The tasks table shows it, live, with a progress bar that moves.
	b.goTo("#/tasks")
	row := fmt.Sprintf(`document.querySelector('tr[data-task=%q]')`, id)
	b.waitJS(10*time.Second, "the task in the table, running", row+`?.dataset.state === 'running'`)
	pct := func(scope string) float64 {
		v, _ := eval[string](b, scope+`?.querySelector('.progress')?.dataset.pct || '-1'`)
		var f float64
		fmt.Sscan(v, &f)
		return f
	}
	first := pct(row)
	b.waitJS(5*time.Second, "the table's progress bar moves", fmt.Sprintf(`Number(%s?.querySelector('.progress')?.dataset.pct) > %f`, row, first))
	b.shot("tasks")

	// The task page: progress moves there too.
	b.goTo("#/task/" + id)
	b.waitJS(10*time.Second, "the task page, running", fmt.Sprintf(`document.getElementById('task-id')?.textContent === %q && document.getElementById('task-state')?.textContent === 'running'`, id))
	page := `document.getElementById('view')`
	first = pct(page)
	b.waitJS(5*time.Second, "the task page's progress bar moves", fmt.Sprintf(`Number(%s.querySelector('.progress')?.dataset.pct) > %f`, page, first))
	victim := c.Node(b.text("#task-runner"))
	if victim == nil || victim == leader {
		t.Fatalf("the task runs on %q; want a node other than the leader %s", b.text("#task-runner"), leader.Name)
	}
	if raftHost != nil {
		if _, err := leader.Client().Runners.SetRunnerMarks(ctxFor(t, 5*time.Second), connect.NewRequest(
			&taskdv1.SetRunnerMarksRequest{Node: raftHost.Name, Action: "uncordon"})); err != nil {
			t.Fatal(err)
		}
	}
	b.shot("task")

	// kill -9 of the runner: the page shows attempt 2 on another runner,
	// and attempt 1 on the victim in its history.
	victim.Kill()
	b.waitJS(taskTimeout+20*time.Second, "the task moved to another runner", fmt.Sprintf(
		`document.getElementById('task-attempt')?.textContent === '2' && document.getElementById('task-state')?.textContent === 'running' && !['', %q].includes(document.getElementById('task-runner')?.textContent) && document.querySelector('tr[data-attempt="1"]')?.children[1]?.textContent === %q`,
		victim.Name, victim.Name))
	b.shot("task-moved")

	// Cancel from the page; the store says cancelled.
	b.must(5*time.Second, "click cancel", chromedp.Click(`button[data-action="cancel"]`))
	b.waitJS(10*time.Second, "the page shows cancelled", `document.getElementById('task-state')?.textContent === 'cancelled'`)
	if tk, err := getTask(context.Background(), leader, id); err != nil || tk.State != "cancelled" {
		t.Fatalf("after cancel from the console, the API says %v (%v); want cancelled", tk, err)
	}
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}

	// The other views render with live data.
	b.goTo("#/runners")
	b.waitJS(20*time.Second, "three live runners", `document.querySelectorAll('tr[data-runner] td.ok').length === 3`)
	b.shot("runners")
	runnerActions(t, c, leader, b)
	b.goTo("#/vips")
	b.waitJS(10*time.Second, "the VIP view", `document.querySelector('#view h1')?.textContent === 'Virtual IPs' && document.querySelector('#view p, #view table')`)
	b.shot("vips")
	// An operator plants markup in the timeline: a cancel of a "task"
	// whose id is HTML is refused, and its audit event names that id. The
	// console shows it as text; the markup never runs (the token is in
	// the page's storage).
	const planted = `<img src=x onerror="window.__pwned=1">`
	if _, err := leader.Client().Tasks.CancelTask(ctxFor(t, 5*time.Second), connect.NewRequest(&taskdv1.TaskRef{Id: planted})); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("cancel of an id that is HTML: %v; want invalid_argument", err)
	}
	b.goTo("#/timeline")
	b.waitJS(10*time.Second, "the timeline shows the audit of the cancel", fmt.Sprintf(`[...document.querySelectorAll('tr[data-kind]')].some((r) => r.textContent.includes(%q))`, id))
	b.waitJS(10*time.Second, "the planted markup shown as text", fmt.Sprintf(`[...document.querySelectorAll('tr[data-kind]')].some((r) => r.textContent.includes(%q))`, planted))
	if pwned, err := eval[bool](b, `window.__pwned === 1 || document.querySelector('#view img') !== null`); err != nil || pwned {
		t.Errorf("markup from an audit event became HTML in the console (%v)", err)
	}
	b.shot("timeline")

	execLog(t, c, leader, b)
	filters(t, b)
	earlyFirstPage(t, leader, b)
	themes(t, b)
	bulkActions(t, c, leader, b)
	viewerCannotAct(t, c, leader, b)
}

// shoutProgram prints a line of markup and a protocol log line, waits for
// the file the spec's "gate" names, then prints a last line and succeeds.
const shoutProgram = `#!/bin/sh
spec=$(cat)
gate=$(printf '%s' "$spec" | sed -n 's/.*"gate":"\([^"]*\)".*/\1/p')
echo '<img src=x onerror="window.__pwned=2"> before the gate'
printf '{"log":"logged by the protocol"}\n' >&3
while [ ! -e "$gate" ]; do sleep 0.05; done
echo "after the gate"
`

// execLog: an exec task's page shows its log while the program runs (the
// markup it prints as text), then the lines after the gate as they come,
// and stops following when the task succeeds.
func execLog(t *testing.T, c *harness.Cluster, leader *harness.Node, b *browser) {
	gate := filepath.Join(t.TempDir(), "gate")
	id := create(t, leader, "shout", fmt.Sprintf(`{"gate":%q}`, gate))
	b.goTo("#/task/" + id)
	logHas := func(text string) string {
		return fmt.Sprintf(`[...document.querySelectorAll('#task-log .line')].some((l) => l.textContent.endsWith(%q))`, text)
	}
	b.waitJS(20*time.Second, "the log's first lines while the program waits",
		logHas(`<img src=x onerror="window.__pwned=2"> before the gate`)+` && `+logHas("logged by the protocol"))
	if st := b.text("#task-state"); st != "running" {
		t.Fatalf("the task is %q before its gate opened; want running", st)
	}
	if !strings.HasSuffix(b.text("#task-log-info"), "; following") {
		t.Errorf("the log's info line says %q while the task runs; want it following", b.text("#task-log-info"))
	}
	if pwned, err := eval[bool](b, `window.__pwned === 2 || document.querySelector('#task-log img') !== null`); err != nil || pwned {
		t.Errorf("markup from a task's output became HTML in the console (%v)", err)
	}
	b.shot("task-log")
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	b.waitJS(20*time.Second, "the last line and the task succeeded, the log no longer followed",
		logHas("after the gate")+` && document.getElementById('task-state')?.textContent === 'succeeded' && document.getElementById('task-log-info')?.textContent === '3 lines'`)
	if n, err := eval[int](b, `document.querySelectorAll('#task-log .line').length`); err != nil || n != 3 {
		t.Errorf("the log shows %d lines (%v); want 3, each once", n, err)
	}

	// A task cancelled while its program waits writes no line more; the
	// page stops following once its WatchTask says the task is final.
	id = create(t, leader, "shout", fmt.Sprintf(`{"gate":%q}`, filepath.Join(t.TempDir(), "never")))
	b.goTo("#/task/" + id)
	b.waitJS(20*time.Second, "the second task's first lines", logHas("logged by the protocol")+` && document.getElementById('task-state')?.textContent === 'running'`)
	b.must(5*time.Second, "click cancel", chromedp.Click(`button[data-action="cancel"]`))
	b.waitJS(20*time.Second, "cancelled, the log no longer followed",
		`document.getElementById('task-state')?.textContent === 'cancelled' && !document.getElementById('task-log-info')?.textContent.endsWith('following')`)
}

// bulkActions: three tasks picked with the table's "select all" box are
// paused, then cancelled, each with one click; the store says so.
func bulkActions(t *testing.T, c *harness.Cluster, leader *harness.Node, b *browser) {
	var ids []string
	for range 3 {
		ids = append(ids, create(t, leader, "sleep", sleepSpec(120*time.Second, 500*time.Millisecond, filepath.Join(t.TempDir(), "ledger"))))
	}
	b.goTo("#/tasks")
	rows := fmt.Sprintf(`%q.split(' ').every((id) => document.querySelector('tr[data-task="' + id + '"] input[data-select]'))`, strings.Join(ids, " "))
	pickAll := func(what string) {
		b.waitJS(10*time.Second, "the three tasks selectable in the table ("+what+")", rows)
		b.must(5*time.Second, "select all", chromedp.Click(`input[data-select="all"]`))
		b.waitJS(5*time.Second, "three selected", `document.querySelectorAll('input[data-select]:checked:not([data-select="all"])').length === 3`)
	}
	all := func(state string) func(*taskdv1.Task) bool {
		return func(tk *taskdv1.Task) bool { return tk.State == state }
	}

	pickAll("before pause")
	b.must(5*time.Second, "pause selected", chromedp.Click(`button[data-bulk="PauseTask"]`))
	b.waitJS(10*time.Second, "the bulk pause reported", `document.getElementById('bulk-result')?.textContent === 'Pause: 3 of 3 done'`)
	for _, id := range ids {
		waitTask(t, c, id, 10*time.Second, "paused", all("paused"))
	}
	b.shot("tasks-bulk")

	pickAll("before cancel")
	b.must(5*time.Second, "cancel selected", chromedp.Click(`button[data-bulk="CancelTask"]`))
	b.waitJS(10*time.Second, "the bulk cancel reported", `document.getElementById('bulk-result')?.textContent === 'Cancel: 3 of 3 done'`)
	for _, id := range ids {
		waitTask(t, c, id, 10*time.Second, "cancelled", all("cancelled"))
	}
}

// viewerCannotAct: a viewer sees a running task without any action, and
// the API refuses the cancel that the viewer's token makes from the page.
func viewerCannotAct(t *testing.T, c *harness.Cluster, leader *harness.Node, b *browser) {
	code, out := runTaskctl(t, leader.CtlEnv(), "token", "create", "--role", "viewer", "--description", "console test")
	var viewer string
	for _, l := range strings.Fields(out) {
		if strings.HasPrefix(l, "taskd.") {
			viewer = l
		}
	}
	if code != 0 || viewer == "" {
		t.Fatalf("taskctl token create: exit %d\n%s", code, out)
	}
	id := create(t, leader, "sleep", sleepSpec(60*time.Second, 500*time.Millisecond, filepath.Join(t.TempDir(), "ledger")))
	waitTask(t, c, id, 20*time.Second, "running", func(tk *taskdv1.Task) bool { return tk.State == "running" })

	if _, err := eval[string](b, `document.getElementById('logout').click(), ''`); err != nil {
		t.Fatal(err)
	}
	b.login(leader, viewer)
	if who := b.text("#who"); !strings.HasSuffix(who, "(viewer)") {
		t.Fatalf("logged in as %q; want a viewer", who)
	}
	b.goTo("#/task/" + id)
	b.waitJS(10*time.Second, "the viewer's task page", `document.getElementById('task-state')?.textContent === 'running'`)
	b.goTo("#/tasks")
	b.waitJS(10*time.Second, "the viewer's task table", fmt.Sprintf(`document.querySelector('tr[data-task=%q]')`, id))
	if n, _ := eval[int](b, `document.querySelectorAll('#view input[data-select], #view button[data-bulk], #view button[data-action]').length`); n != 0 {
		t.Errorf("the viewer's task table has %d selection boxes or action buttons; want none", n)
	}
	b.goTo("#/runners")
	b.waitJS(10*time.Second, "the viewer's runner table", `document.querySelectorAll('tr[data-runner]').length === 3`)
	b.goTo("#/task/" + id)
	b.waitJS(10*time.Second, "the viewer's task page", `document.getElementById('task-state')?.textContent === 'running'`)
	if n, _ := eval[int](b, `document.querySelectorAll('#view button').length`); n != 0 {
		t.Errorf("the viewer's task page has %d buttons; want none", n)
	}
	b.shot("viewer-task")

	// The page's own transport, with the viewer's token, asks to cancel.
	got, err := eval[string](b, fmt.Sprintf(`call('TaskService', 'CancelTask', {id: %q}).then(() => 'accepted', (e) => e.code)`, id))
	if err != nil {
		t.Fatal(err)
	}
	if got != "permission_denied" {
		t.Errorf("a viewer's cancel from the console: %q; want permission_denied", got)
	}
	if tk, err := getTask(context.Background(), leader, id); err != nil || tk.State != "running" {
		t.Errorf("after the viewer's refused cancel the task is %v (%v); want running", tk, err)
	}
}

// runnerActions: an operator cordons a runner from the runners view and
// uncordons it; the API says so after each click, and the row too.
func runnerActions(t *testing.T, c *harness.Cluster, leader *harness.Node, b *browser) {
	var node string
	for _, n := range c.Nodes {
		if n != leader {
			node = n.Name
			break
		}
	}
	marks := func() *taskdv1.RunnerInfo {
		t.Helper()
		r, err := leader.Client().Runners.ListRunners(ctxFor(t, 5*time.Second), connect.NewRequest(&taskdv1.ListRunnersRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range r.Msg.Runners {
			if x.Node == node {
				return x
			}
		}
		t.Fatalf("runner %s not listed", node)
		return nil
	}
	if m := marks(); m.Cordoned || m.Draining {
		t.Fatalf("runner %s is already marked (%v)", node, m)
	}
	row := fmt.Sprintf(`tr[data-runner=%q]`, node)
	for _, step := range []struct {
		action, shows string
		cordoned      bool
	}{{"cordon", "cordoned", true}, {"uncordon", "schedulable", false}} {
		b.must(5*time.Second, step.action+" "+node, chromedp.Click(row+fmt.Sprintf(` button[data-action=%q]`, step.action)))
		b.waitJS(10*time.Second, "the row shows "+step.shows, fmt.Sprintf(`document.querySelector(%q)?.children[3]?.textContent === %q`, row, step.shows))
		if m := marks(); m.Cordoned != step.cordoned {
			t.Fatalf("after %s from the console the API says cordoned=%v", step.action, m.Cordoned)
		}
		if step.cordoned {
			b.shot("runners-cordoned")
		}
	}
}

// filters: the task table's type and state filters ask the server for
// the matching tasks only, and an older read answering last does not
// undo them.
func filters(t *testing.T, b *browser) {
	b.goTo("#/tasks")
	b.waitJS(10*time.Second, "the task table", `document.querySelectorAll('tr[data-task]').length > 1`)
	// Reads overlap: a live refresh is often in flight when a user
	// filters, and the two answers can arrive in either order. The page's
	// fetch holds back the answer to the next unfiltered read until the
	// filtered answer is shown.
	if _, err := eval[string](b, `(() => { window.__held = 'none'; window.__fetch = window.fetch;
		window.fetch = async (url, init) => {
			if (window.__held !== 'none' || !String(url).endsWith('/ListTasks') || JSON.parse(init.body).type !== '') return window.__fetch(url, init);
			window.__held = 'holding';
			const r = await window.__fetch(url, init);
			await new Promise((res) => { window.__release = res; });
			const json = r.json.bind(r);
			// Set once the page has had the answer's body and shown it (or not).
			r.json = async () => { const v = await json(); setTimeout(() => { window.__held = 'delivered'; }, 0); return v; };
			return r;
		};
		document.querySelector('button[aria-label="Apply filters"]').click(); return ''; })()`); err != nil {
		t.Fatal(err)
	}
	b.waitJS(10*time.Second, "an unfiltered read held back", `window.__held === 'holding'`)
	if _, err := eval[string](b, `(() => { document.querySelector('input[aria-label="Filter by type"]').value = 'shout';
		const st = document.querySelector('select[aria-label="Filter by state"]'); st.value = 'succeeded';
		document.querySelector('button[aria-label="Apply filters"]').click(); return ''; })()`); err != nil {
		t.Fatal(err)
	}
	b.waitJS(10*time.Second, "only the succeeded shout task", `document.getElementById('task-count')?.textContent === '1–1 of 1' && [...document.querySelectorAll('tr[data-task]')].every((r) => r.children[2].textContent === 'shout' && r.dataset.state === 'succeeded') && document.querySelectorAll('tr[data-task]').length === 1`)
	if _, err := eval[string](b, `(() => { window.__release(); return ''; })()`); err != nil {
		t.Fatal(err)
	}
	b.waitJS(10*time.Second, "the held answer delivered", `window.__held === 'delivered'`)
	if s, err := eval[string](b, `(() => { window.fetch = window.__fetch; return document.getElementById('task-count').textContent + ' / ' + document.querySelectorAll('tr[data-task]').length + ' rows'; })()`); err != nil || s != "1–1 of 1 / 1 rows" {
		t.Fatalf("the older unfiltered answer, arriving last, replaced the filtered table: %q (%v)", s, err)
	}
	b.shot("tasks-filtered")
	// Cleared, the filters show every task again.
	if _, err := eval[string](b, `(() => { document.querySelector('input[aria-label="Filter by type"]').value = '';
		document.querySelector('select[aria-label="Filter by state"]').value = '';
		document.querySelector('button[aria-label="Apply filters"]').click(); return ''; })()`); err != nil {
		t.Fatal(err)
	}
	b.waitJS(10*time.Second, "every task again", `document.querySelectorAll('tr[data-task]').length > 1 && [...document.querySelectorAll('tr[data-task]')].some((r) => r.children[2].textContent !== 'shout')`)
}

// earlyFirstPage: a page loaded on the task table, in a tab that holds a
// token, sends the table's first ListTasks from its head, before its
// files arrive, and the table shows that answer (the inline script runs,
// so the Content-Security-Policy's hash of it is right). A page loaded on
// another view sends none, and the table reached from there asks itself.
func earlyFirstPage(t *testing.T, leader *harness.Node, b *browser) {
	t.Helper()
	url := "https://" + leader.API + "/ui/"
	b.must(15*time.Second, "load the page on the task table", chromedp.Navigate("about:blank"), chromedp.Navigate(url+"#/tasks"))
	b.waitJS(10*time.Second, "the task table's first rows", `document.querySelectorAll('tr[data-task]').length > 1 && performance.getEntriesByName('taskd:tasks-rendered').length === 1`)
	// The rows came from the early call: it was taken, answered 200, and
	// it is the only ListTasks that started before the rows were shown.
	// It left while the page was parsed (domInteractive: before the
	// page's deferred scripts, the console's files, run).
	if s, err := eval[string](b, `(() => { const rendered = performance.getEntriesByName('taskd:tasks-rendered')[0].startTime;
		const ls = performance.getEntriesByType('resource').filter((e) => e.name.endsWith('/ListTasks'));
		const nav = performance.getEntriesByType('navigation')[0];
		const before = ls.filter((e) => e.startTime < rendered);
		return [performance.getEntriesByName('taskd:early-call-used').length, before.length, ls[0] ? ls[0].responseStatus : 0, ls[0] && ls[0].startTime < nav.domInteractive].join(' '); })()`); err != nil || s != "1 1 200 true" {
		t.Errorf("early call taken, ListTasks before the rows, its status, sent while parsed: %q (%v); want \"1 1 200 true\"", s, err)
	}
	// Leaving the table and coming back asks the server again.
	b.goTo("#/cluster")
	b.waitJS(10*time.Second, "the cluster view", `document.getElementById('leader')`)
	b.goTo("#/tasks")
	b.waitJS(10*time.Second, "the task table again", `document.querySelectorAll('tr[data-task]').length > 1`)
	if n, err := eval[float64](b, `performance.getEntriesByName('taskd:early-call-used').length`); err != nil || n != 1 {
		t.Errorf("the early call was taken %v times in one page load (%v); want once", n, err)
	}
	// A page loaded on another view makes no early call: once the table,
	// reached from there, shows rows, no ListTasks started before the
	// cluster view's first call (an early one would have, at parse time,
	// and would be answered by now).
	b.must(15*time.Second, "load the page on the cluster view", chromedp.Navigate("about:blank"), chromedp.Navigate(url+"#/cluster"))
	b.waitJS(10*time.Second, "the cluster view", `document.getElementById('leader')`)
	b.goTo("#/tasks")
	b.waitJS(10*time.Second, "the task table, asked by the view", `document.querySelectorAll('tr[data-task]').length > 1`)
	if s, err := eval[string](b, `(() => { const res = performance.getEntriesByType('resource');
		const members = res.find((e) => e.name.endsWith('/ListMembers'));
		return [performance.getEntriesByName('taskd:early-call-used').length, members ? res.filter((e) => e.name.endsWith('/ListTasks') && e.startTime < members.startTime).length : -1].join(' '); })()`); err != nil || s != "0 0" {
		t.Errorf("a page loaded on the cluster view: early call taken, ListTasks before its first call: %q (%v); want \"0 0\"", s, err)
	}
}

// themes: the console follows the system's light or dark preference.
func themes(t *testing.T, b *browser) {
	for _, theme := range []struct{ scheme, background string }{{"dark", "rgb(15, 19, 24)"}, {"light", "rgb(250, 250, 250)"}} {
		_, err := chromedp.Call(b.ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: theme.scheme}}})
		if err != nil {
			t.Fatalf("emulate %s: %v", theme.scheme, err)
		}
		b.waitJS(5*time.Second, "the "+theme.scheme+" theme", fmt.Sprintf(`getComputedStyle(document.body).backgroundColor === %q`, theme.background))
		b.shot("tasks-" + theme.scheme)
	}
}
