package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
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
	c := newCluster(t, 3, harness.Options{SessionTimeout: taskTimeout})
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

	bulkActions(t, c, leader, b)
	viewerCannotAct(t, c, leader, b)
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
