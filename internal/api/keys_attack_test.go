package api_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/api"
	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/dispatch"
	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/pki"
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/runner"
	"github.com/taskd/taskd/internal/schedule"
	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/tasktype"
	"github.com/taskd/taskd/internal/testenv"
	"github.com/taskd/taskd/internal/vips"
)

// member is one in-process taskd on a real store: a quorum member whose
// leader role dispatches and whose member role runs tasks, with the task
// store and the VIP registry the API serves.
type member struct {
	backend string
	q       *quorum.Quorum
	tasks   *task.Store
	tokens  *auth.Tokens
	rings   *events.Rings
	reg     *vips.Registry
}

func (n *member) View() quorum.View          { v, _ := n.q.View(); return v }
func (n *member) Ready() bool                { return n.q.Ready() }
func (n *member) Coordinator() string        { return n.backend }
func (n *member) TaskStore() *task.Store     { return n.tasks }
func (n *member) Tokens() *auth.Tokens       { return n.tokens }
func (n *member) EventRings() *events.Rings  { return n.rings }
func (n *member) Events() *events.Recorder   { return nil }
func (n *member) VIPs() *vips.Registry       { return n.reg }
func (n *member) Schedules() *schedule.Store { return nil }
func (n *member) EtcdMembers() []string      { return nil }
func (n *member) Forget(ctx context.Context, name string) (quorum.Forgotten, error) {
	return n.q.Forget(ctx, name, nil)
}
func (n *member) SetPriority(ctx context.Context, node string, p int, force bool) error {
	return n.q.SetPriority(ctx, node, p, force)
}
func (n *member) SetSpecified(ctx context.Context, names []string, force bool) error {
	return n.q.SetSpecified(ctx, names, force)
}

func startNode(t *testing.T, b testenv.Backend, kv coord.Store) *member {
	t.Helper()
	root, err := keys.NewRoot("/taskd")
	if err != nil {
		t.Fatal(err)
	}
	st, err := task.NewStore(kv, root.String(), tasktype.Builtin(tasktype.Copy{}, nil, nil), "UTC", nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := quorum.DefaultConfig()
	cfg.Name, cfg.NodeID, cfg.Address, cfg.Root = "n1", "id-n1", "127.0.0.1:1", root.String()
	cfg.SessionTimeout = 2 * time.Second
	rc := runner.DefaultConfig()
	rc.Node, rc.Deadline = cfg.Name, cfg.DeadlineOf
	run, err := runner.New(rc, st, quiet)
	if err != nil {
		t.Fatal(err)
	}
	disp, err := dispatch.New(dispatch.DefaultConfig(), st, quiet)
	if err != nil {
		t.Fatal(err)
	}
	roles := quorum.Roles{
		Leader: func(ctx context.Context, l *quorum.Leadership) error { return disp.Run(ctx, l, nil) },
		Member: run.Run,
	}
	q, err := quorum.New(cfg, kv, roles, quiet)
	if err != nil {
		t.Fatal(err)
	}
	n := &member{backend: b.Name, q: q, tasks: st, tokens: auth.NewTokens(kv, root), rings: events.NewRings(kv, root)}
	n.reg = vips.NewRegistry(kv, root, n.View, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return n
}

// serve runs the API of c on a loopback TLS listener, as taskd does, and
// returns a client of it with the node's own admin token (checked from
// memory: the verifier does not follow the store here).
func serve(t *testing.T, c api.Cluster) *api.Client {
	t.Helper()
	dir := t.TempDir()
	bundle, err := pki.Create(dir, "n1", []string{"127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	local, err := auth.LoadLocal(dir, "n1")
	if err != nil {
		t.Fatal(err)
	}
	v := auth.NewVerifier("/taskd", "n1", local, quiet)
	srv, err := api.NewServer(api.ServerConfig{Listen: "127.0.0.1:0", TLS: bundle.ServerTLS(false), Auth: v, CAHash: bundle.CA.Fingerprint()}, c, quiet)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("api server: %v", err)
		}
	})
	cl, err := api.NewClient(api.ClientConfig{Endpoint: ln.Addr().String(), Token: local.Token.String(), CA: bundle.CA.Pool(), ExpectNode: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// knownKeys lists the known-member records' keys (their last-seen times
// change on their own).
func knownKeys(t *testing.T, ctx context.Context, kv coord.Store) string {
	t.Helper()
	kvs, err := kv.List(ctx, "/taskd/known")
	if err != nil {
		t.Fatalf("list known members: %v", err)
	}
	var out []string
	for _, e := range kvs {
		out = append(out, e.Key)
	}
	return strings.Join(out, ",")
}

// storeState reads every directory a request could reach through a key
// built from its input, with versions: what a refused request must leave
// as it was.
func storeState(t *testing.T, ctx context.Context, kv coord.Store, id string) string {
	t.Helper()
	var out []string
	for _, d := range []string{"/taskd", "/taskd/tasks", "/taskd/tasks/active", "/taskd/tasks/done", "/taskd/tasks/done/" + id[:2],
		"/taskd/assigned", "/taskd/assigned/n1", "/taskd/runners", "/taskd/sessions", "/taskd/members", "/taskd/election",
		"/taskd/config", "/taskd/config/priority", "/taskd/config/runners", "/taskd/vips", "/taskd/vips/config",
		"/taskd/vips/assign", "/taskd/vips/held"} {
		kvs, err := kv.List(ctx, d)
		if err != nil {
			t.Fatalf("list %s: %v", d, err)
		}
		for _, e := range kvs {
			out = append(out, fmt.Sprintf("%s@%d=%s", e.Key, e.Version, e.Value))
		}
	}
	slices.Sort(out)
	return strings.Join(out, "\n")
}

// TestKeyTraversalRefused plays finding 3 through the API on both store
// backends: DeleteVIP {"service":"../../tasks/active/ID"} (which deleted a
// running task), DrainVIP "../../election/epoch" (which fenced the
// dispatcher cluster-wide), and every other RPC that takes a name or a
// task id, with names that leave their directory. Each is refused with
// InvalidArgument before anything is read, and nothing in the store, the
// running task or the leadership changes.
func TestKeyTraversalRefused(t *testing.T) {
	for _, b := range testenv.Backends(t) {
		t.Run(b.Name, func(t *testing.T) { testKeyTraversal(t, b) })
	}
}

func testKeyTraversal(t *testing.T, b testenv.Backend) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	kv := b.Open(t)
	n := startNode(t, b, kv)
	cl := serve(t, n)
	if err := testenv.WaitFor(ctx, 20*time.Millisecond, func() bool { return n.View().Leader == "n1" }); err != nil {
		t.Fatalf("no leader: %v", err)
	}
	if _, err := cl.VIPs.SetVIP(ctx, connect.NewRequest(&taskdv1.SetVIPRequest{Service: "iscsi", Address: "10.0.0.50", Interface: "eth0"})); err != nil {
		t.Fatal(err)
	}
	created, err := cl.Tasks.CreateTask(ctx, connect.NewRequest(&taskdv1.CreateTaskRequest{Type: "sleep", Spec: `{"duration":"1h","checkpoint_interval":"1h"}`}))
	if err != nil {
		t.Fatal(err)
	}
	id := created.Msg.Task.Id
	var running *taskdv1.Task
	if err := testenv.WaitFor(ctx, 20*time.Millisecond, func() bool {
		r, err := cl.Tasks.GetTask(ctx, connect.NewRequest(&taskdv1.GetTaskRequest{Id: id}))
		if err != nil {
			return false
		}
		running = r.Msg.Task
		return running.State == "running"
	}); err != nil {
		t.Fatalf("task %s never ran: %v", id, err)
	}
	// The leader's first collection marks the finished-task index ready
	// (CI: it wrote the key between the snapshots); after it an idle
	// node writes nothing on its own.
	if err := testenv.WaitFor(ctx, 20*time.Millisecond, func() bool {
		_, err := kv.Get(ctx, "/taskd/tasks/index-ready")
		return err == nil
	}); err != nil {
		t.Fatalf("the leader never marked the finished-task index ready: %v", err)
	}
	before := storeState(t, ctx, kv, id)
	knownBefore := knownKeys(t, ctx, kv)
	view := n.View()

	badIDs := []string{"../../election/epoch", "../active/" + id, id + "/..", "..", "", strings.ToUpper(id), id + "\x00", strings.Repeat("0", 4096)}
	badNames := []string{"../../election/epoch", "../runners/n1", "n1/..", "..", "n1\n", "-n1"}
	attacks := map[string]func() error{
		"DeleteVIP ../../tasks/active/ID": func() error {
			_, err := cl.VIPs.DeleteVIP(ctx, connect.NewRequest(&taskdv1.DeleteVIPRequest{Service: "../../tasks/active/" + id}))
			return err
		},
		"DrainVIP ../../election/epoch": func() error {
			_, err := cl.VIPs.DrainVIP(ctx, connect.NewRequest(&taskdv1.DrainVIPRequest{Service: "../../election/epoch"}))
			return err
		},
		"DrainVIP ../../election/epoch to n1 (wait)": func() error {
			_, err := cl.VIPs.DrainVIP(ctx, connect.NewRequest(&taskdv1.DrainVIPRequest{Service: "../../election/epoch", To: "n1", Wait: true}))
			return err
		},
		"DrainVIP iscsi to ../n1": func() error {
			_, err := cl.VIPs.DrainVIP(ctx, connect.NewRequest(&taskdv1.DrainVIPRequest{Service: "iscsi", To: "../n1"}))
			return err
		},
		"SetVIP ../../election/epoch": func() error {
			_, err := cl.VIPs.SetVIP(ctx, connect.NewRequest(&taskdv1.SetVIPRequest{Service: "../../election/epoch", Address: "10.0.0.51", Interface: "eth0"}))
			return err
		},
		"ListTasks type ../x": func() error {
			_, err := cl.Tasks.ListTasks(ctx, connect.NewRequest(&taskdv1.ListTasksRequest{Type: "../x"}))
			return err
		},
	}
	for _, bad := range badIDs {
		attacks["GetTask "+keys.Quote(bad)] = func() error {
			_, err := cl.Tasks.GetTask(ctx, connect.NewRequest(&taskdv1.GetTaskRequest{Id: bad}))
			return err
		}
		for name, rpc := range map[string]func(context.Context, *connect.Request[taskdv1.TaskRef]) (*connect.Response[taskdv1.GetTaskResponse], error){
			"CancelTask": cl.Tasks.CancelTask, "PauseTask": cl.Tasks.PauseTask, "ResumeTask": cl.Tasks.ResumeTask,
		} {
			attacks[name+" "+keys.Quote(bad)] = func() error {
				_, err := rpc(ctx, connect.NewRequest(&taskdv1.TaskRef{Id: bad}))
				return err
			}
		}
		attacks["SetTaskWindow "+keys.Quote(bad)] = func() error {
			_, err := cl.Tasks.SetTaskWindow(ctx, connect.NewRequest(&taskdv1.SetTaskWindowRequest{Id: bad, Clear: true}))
			return err
		}
		attacks["SetTaskRate "+keys.Quote(bad)] = func() error {
			_, err := cl.Tasks.SetTaskRate(ctx, connect.NewRequest(&taskdv1.SetTaskRateRequest{Id: bad, BytesPerSecond: 1}))
			return err
		}
		attacks["WatchTask "+keys.Quote(bad)] = func() error {
			stream, err := cl.Tasks.WatchTask(ctx, connect.NewRequest(&taskdv1.TaskRef{Id: bad}))
			if err != nil {
				return err
			}
			defer stream.Close()
			for stream.Receive() {
			}
			return stream.Err()
		}
	}
	for _, bad := range badNames {
		attacks["DeleteVIP "+keys.Quote(bad)] = func() error {
			_, err := cl.VIPs.DeleteVIP(ctx, connect.NewRequest(&taskdv1.DeleteVIPRequest{Service: bad}))
			return err
		}
		attacks["CreateTask node "+keys.Quote(bad)] = func() error {
			_, err := cl.Tasks.CreateTask(ctx, connect.NewRequest(&taskdv1.CreateTaskRequest{Type: "noop", Node: bad}))
			return err
		}
		attacks["CreateTask type "+keys.Quote(bad)] = func() error {
			_, err := cl.Tasks.CreateTask(ctx, connect.NewRequest(&taskdv1.CreateTaskRequest{Type: bad}))
			return err
		}
		attacks["SetRunnerMarks "+keys.Quote(bad)] = func() error {
			_, err := cl.Runners.SetRunnerMarks(ctx, connect.NewRequest(&taskdv1.SetRunnerMarksRequest{Node: bad, Action: "cordon", Force: true}))
			return err
		}
		attacks["SetPriority "+keys.Quote(bad)] = func() error {
			_, err := cl.Cluster.SetPriority(ctx, connect.NewRequest(&taskdv1.SetPriorityRequest{Node: bad, Priority: 1, Force: true}))
			return err
		}
		attacks["ForgetMember "+keys.Quote(bad)] = func() error {
			_, err := cl.Cluster.ForgetMember(ctx, connect.NewRequest(&taskdv1.ForgetMemberRequest{Node: bad}))
			return err
		}
		attacks["SetSpecifiedMembers "+keys.Quote(bad)] = func() error {
			_, err := cl.Cluster.SetSpecifiedMembers(ctx, connect.NewRequest(&taskdv1.SetSpecifiedMembersRequest{Members: []string{"n1", bad}, Force: true}))
			return err
		}
	}
	for name, attack := range attacks {
		err := attack()
		var ce *connect.Error
		if !errors.As(err, &ce) || ce.Code() != connect.CodeInvalidArgument || !strings.Contains(ce.Message(), "is not valid") {
			t.Errorf("%s: got %v, want InvalidArgument saying what is not valid", name, err)
		}
	}

	if after := storeState(t, ctx, kv, id); after != before {
		t.Errorf("refused requests changed the store:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if after := knownKeys(t, ctx, kv); after != knownBefore {
		t.Errorf("refused requests changed the known members: before %s, after %s", knownBefore, after)
	}
	now, err := cl.Tasks.GetTask(ctx, connect.NewRequest(&taskdv1.GetTaskRequest{Id: id}))
	if err != nil {
		t.Errorf("the running task after the attacks: %v", err)
	} else if got := now.Msg.Task; got.State != "running" || got.Attempt != running.Attempt {
		t.Errorf("the running task after the attacks: %s attempt %d, was running attempt %d", got.State, got.Attempt, running.Attempt)
	}
	if v := n.View(); v.Leader != view.Leader || v.Epoch != view.Epoch || v.LastFence != nil {
		t.Errorf("leadership changed: leader %s epoch %d fence %+v; before leader %s epoch %d", v.Leader, v.Epoch, v.LastFence, view.Leader, view.Epoch)
	}
	// The genuine requests still work: the task can be cancelled, the VIP
	// deleted.
	if _, err := cl.VIPs.DeleteVIP(ctx, connect.NewRequest(&taskdv1.DeleteVIPRequest{Service: "iscsi"})); err != nil {
		t.Errorf("DeleteVIP iscsi: %v", err)
	}
	if _, err := cl.Tasks.CancelTask(ctx, connect.NewRequest(&taskdv1.TaskRef{Id: id})); err != nil {
		t.Errorf("CancelTask: %v", err)
	}
}
