package quorum_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/testenv"
	"go.uber.org/goleak"
)

type backend = testenv.Backend

func backends(t *testing.T) []backend { return testenv.Backends(t) }

var rootSeq atomic.Int64

// node is one in-process quorum member.
type node struct {
	name   string
	q      *quorum.Quorum
	cancel context.CancelFunc
	done   chan error

	mu      sync.Mutex
	leads   []*quorum.Leadership
	fences  []quorum.FenceReport
	leading atomic.Int32 // role instances running now
}

func testConfig(name, root string, prio int) quorum.Config {
	cfg := quorum.DefaultConfig()
	cfg.Name, cfg.NodeID, cfg.Address, cfg.Priority, cfg.Root = name, "id-"+name, name+":1", prio, root
	cfg.SessionTimeout = 2 * time.Second
	cfg.FenceBudget = 300 * time.Millisecond
	cfg.YieldGrace = time.Second
	cfg.CampaignStagger = 500 * time.Millisecond
	return cfg
}

func startNode(t *testing.T, store coord.Store, cfg quorum.Config) *node {
	t.Helper()
	n := &node{name: cfg.Name, done: make(chan error, 1)}
	roles := quorum.Roles{Leader: func(ctx context.Context, l *quorum.Leadership) error {
		n.leading.Add(1)
		defer n.leading.Add(-1)
		n.mu.Lock()
		n.leads = append(n.leads, l)
		n.mu.Unlock()
		<-ctx.Done()
		return nil
	}}
	q, err := quorum.New(cfg, store, roles, slog.Default().With("test", t.Name()), quorum.WithFenceHook(func(r quorum.FenceReport) {
		n.mu.Lock()
		n.fences = append(n.fences, r)
		n.mu.Unlock()
	}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.q, n.cancel = q, cancel
	go func() { n.done <- q.Run(ctx) }()
	t.Cleanup(n.stop)
	return n
}

func (n *node) stop() {
	if n.cancel == nil {
		return
	}
	n.cancel()
	<-n.done
	n.cancel = nil
}

func (n *node) view() quorum.View { v, _ := n.q.View(); return v }

// waitLeader waits until every node agrees on one leader and returns it.
func waitLeader(t *testing.T, nodes []*node, limit time.Duration) (string, int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	var leader string
	var epoch int64
	err := testenv.WaitFor(ctx, 20*time.Millisecond, func() bool {
		leader, epoch = "", 0
		for _, n := range nodes {
			v := n.view()
			if v.Leader == "" || (leader != "" && (v.Leader != leader || v.Epoch != epoch)) {
				return false
			}
			leader, epoch = v.Leader, v.Epoch
		}
		return true
	})
	if err != nil {
		for _, n := range nodes {
			v := n.view()
			t.Logf("%s sees leader %q epoch %d session %s", n.name, v.Leader, v.Epoch, v.Session)
		}
		t.Fatalf("no agreed leader: %v", err)
	}
	return leader, epoch
}

func TestMain(m *testing.M) {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	// Every goroutine quorum starts is joined on shutdown; so are the
	// stores' own once they are closed.
	goleak.VerifyTestMain(m)
}

func TestQuorum(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			t.Run("PriorityElection", func(t *testing.T) { testPriorityElection(t, b) })
			t.Run("RaisePriorityOneHandover", func(t *testing.T) { testRaisePriority(t, b) })
			t.Run("PartitionFencesBeforeExpiry", func(t *testing.T) { testPartitionFence(t, b) })
			t.Run("DuplicateName", func(t *testing.T) { testDuplicateName(t, b) })
			t.Run("UnhealthyEverywhereNoCarousel", func(t *testing.T) { testAllUnhealthy(t, b) })
			t.Run("SpecifiedMembers", func(t *testing.T) { testSpecified(t, b) })
			t.Run("StarvedLeaderYieldsOnce", func(t *testing.T) { testStarvedLeader(t, b) })
			t.Run("CraftedMembers", func(t *testing.T) { testCraftedMembers(t, b) })
			t.Run("KnownMembers", func(t *testing.T) { testKnownMembers(t, b) })
		})
	}
}

// root lies under /taskd/, the key space a node's store credentials allow.
func root() string { return fmt.Sprintf("/taskd/qt%d-%d", time.Now().UnixNano(), rootSeq.Add(1)) }

func testPriorityElection(t *testing.T, b backend) {
	r := root()
	var nodes []*node
	for i, p := range []int{10, 50, 30} {
		nodes = append(nodes, startNode(t, b.Dial(t, b.Addr), testConfig(fmt.Sprintf("n%d", i+1), r, p)))
	}
	_, epoch := waitLeader(t, nodes, 15*time.Second)
	// All three started together; the best candidate (n2, priority 50) should
	// win unless it was not yet registered when the others campaigned, in
	// which case it takes over after the grace period.
	leader, epoch2 := waitLeaderIs(t, nodes, "n2", 15*time.Second)
	if epoch2 < epoch {
		t.Fatalf("epoch went backwards: %d -> %d", epoch, epoch2)
	}
	active := 0
	for _, n := range nodes {
		active += int(n.leading.Load())
	}
	if active != 1 {
		t.Fatalf("%d leader roles running, want exactly 1 (leader %s)", active, leader)
	}
	// The leader's epoch write is fenced by the store and succeeds now.
	n2 := nodes[1]
	n2.mu.Lock()
	l := n2.leads[len(n2.leads)-1]
	n2.mu.Unlock()
	if _, err := l.Txn(context.Background(), nil, []coord.Op{coord.CreateOp(r+"/probe", []byte("x"), nil)}); err != nil {
		t.Fatalf("current leader's fenced write failed: %v", err)
	}
}

func waitLeaderIs(t *testing.T, nodes []*node, want string, limit time.Duration) (string, int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	var epoch int64
	err := testenv.WaitFor(ctx, 20*time.Millisecond, func() bool {
		for _, n := range nodes {
			v := n.view()
			if v.Leader != want {
				return false
			}
			epoch = v.Epoch
		}
		return true
	})
	if err != nil {
		t.Fatalf("%s did not become leader everywhere: %v", want, err)
	}
	return want, epoch
}

func testRaisePriority(t *testing.T, b backend) {
	r := root()
	n1 := startNode(t, b.Dial(t, b.Addr), testConfig("n1", r, 100))
	waitLeaderIs(t, []*node{n1}, "n1", 15*time.Second)
	n2 := startNode(t, b.Dial(t, b.Addr), testConfig("n2", r, 50))
	n3 := startNode(t, b.Dial(t, b.Addr), testConfig("n3", r, 50))
	nodes := []*node{n1, n2, n3}
	_, e0 := waitLeaderIs(t, nodes, "n1", 15*time.Second)

	// Count distinct leaders seen by n2 from now on.
	var changes atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		last := "n1"
		for {
			v, ch := n2.q.View()
			if v.Leader != "" && v.Leader != last {
				changes.Add(1)
				last = v.Leader
			}
			select {
			case <-ctx.Done():
				return
			case <-ch:
			}
		}
	}()
	if err := n1.q.SetPriority(context.Background(), "n3", 200, false); err != nil {
		t.Fatal(err)
	}
	_, e1 := waitLeaderIs(t, nodes, "n3", 15*time.Second)
	// Watch for three more grace periods: leadership must stay on n3.
	stable, scancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer scancel()
	if err := testenv.WaitFor(stable, 50*time.Millisecond, func() bool { return n2.view().Leader != "n3" }); err == nil {
		t.Fatalf("leadership moved away from n3 again: %s", n2.view().Leader)
	}
	cancel()
	wg.Wait()
	if c := changes.Load(); c != 1 {
		t.Fatalf("saw %d leadership changes, want exactly 1", c)
	}
	if e1 != e0+1 {
		t.Fatalf("epoch %d -> %d, want one election", e0, e1)
	}
	if err := n1.q.SetPriority(context.Background(), "nosuch", 5, false); !errors.Is(err, quorum.ErrNotMember) {
		t.Fatalf("set-priority of an unknown node: %v", err)
	}
	if err := n1.q.SetPriority(context.Background(), "n2", 256, true); err == nil {
		t.Fatal("priority 256 accepted")
	}
}

// testPartitionFence cuts the leader off from the store: it must fence before
// its session can expire, a successor must be elected with a new epoch, and
// the old leader's write must be rejected by the store.
func testPartitionFence(t *testing.T, b backend) {
	r := root()
	proxy := testenv.StartProxy(t, b.Addr)
	n1 := startNode(t, b.Dial(t, proxy.Addr()), testConfig("n1", r, 200))
	waitLeaderIs(t, []*node{n1}, "n1", 15*time.Second)
	n2 := startNode(t, b.Dial(t, b.Addr), testConfig("n2", r, 100))
	_, e1 := waitLeaderIs(t, []*node{n1, n2}, "n1", 15*time.Second)
	n1.mu.Lock()
	old := n1.leads[len(n1.leads)-1]
	n1.mu.Unlock()

	proxy.Pause()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := testenv.WaitFor(ctx, 20*time.Millisecond, func() bool {
		v := n2.view()
		return v.Leader == "n2" && v.Epoch > e1
	}); err != nil {
		t.Fatalf("no successor: %v", err)
	}
	// The fence report reaches the hook once the fence's work is done;
	// whether the fence itself finished before the session could expire is
	// in the report's times, checked below, not in when it arrives.
	var fences []quorum.FenceReport
	if err := testenv.WaitFor(ctx, 20*time.Millisecond, func() bool {
		n1.mu.Lock()
		defer n1.mu.Unlock()
		fences = append([]quorum.FenceReport(nil), n1.fences...)
		return len(fences) > 0
	}); err != nil {
		t.Fatal("old leader never fenced")
	}
	f := fences[0]
	if !f.BeforeExpiry {
		t.Fatalf("fence finished %v after the earliest expiry (%+v)", f.Finished.Sub(f.EarliestExpiry), f)
	}
	if n1.leading.Load() != 0 {
		t.Fatal("old leader's role still running after fence")
	}
	elected := n2.view().ElectedAt
	if !f.Finished.Before(elected) {
		t.Fatalf("old leader fenced at %v, after the new epoch began at %v", f.Finished, elected)
	}
	proxy.Resume()
	_, err := old.Txn(ctx, nil, []coord.Op{coord.CreateOp(r+"/late", []byte("stale"), nil)})
	if !errors.Is(err, quorum.ErrFenced) {
		t.Fatalf("late write of the old leader: got %v, want ErrFenced", err)
	}
	store := b.Dial(t, b.Addr)
	if _, err := store.Get(ctx, r+"/late"); !errors.Is(err, coord.ErrNotFound) {
		t.Fatalf("late write reached the store: %v", err)
	}
	// The old leader rejoins as a member: no exit, and it ends up leading
	// again (priority 200) after the grace period.
	waitLeaderIs(t, []*node{n1, n2}, "n1", 20*time.Second)
	select {
	case err := <-n1.done:
		t.Fatalf("quorum.Run returned after session loss: %v", err)
	default:
	}
}

func testDuplicateName(t *testing.T, b backend) {
	r := root()
	a := startNode(t, b.Dial(t, b.Addr), testConfig("dup", r, 10))
	waitLeaderIs(t, []*node{a}, "dup", 15*time.Second)
	cfg := testConfig("dup", r, 10)
	cfg.NodeID = "another-node"
	q, err := quorum.New(cfg, b.Dial(t, b.Addr), quorum.Roles{}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	err = q.Run(ctx)
	if !errors.Is(err, quorum.ErrDuplicateName) {
		t.Fatalf("second node with the same name: got %v, want ErrDuplicateName", err)
	}
	if v := a.view(); v.Leader != "dup" || !v.Ready {
		t.Fatalf("first node disturbed by the duplicate: %+v", v)
	}
	// A restart of the same node (same node id) replaces its old record.
	same := testConfig("dup", r, 10)
	a.stop()
	b2 := startNode(t, b.Dial(t, b.Addr), same)
	waitLeaderIs(t, []*node{b2}, "dup", 15*time.Second)
}

// testAllUnhealthy replays the seed: every node's access network goes bad at
// once. Nobody gains by moving the leadership, so it must not move.
func testAllUnhealthy(t *testing.T, b backend) {
	r := root()
	var nodes []*node
	for i := range 3 {
		nodes = append(nodes, startNode(t, b.Dial(t, b.Addr), testConfig(fmt.Sprintf("n%d", i+1), r, 100)))
	}
	leader, epoch := waitLeader(t, nodes, 15*time.Second)
	for _, n := range nodes {
		n.q.SetHealth(false, "local access network invalid")
	}
	// Wait until every record shows current priority 0, then three grace
	// periods: the leader and epoch must not change.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := testenv.WaitFor(ctx, 20*time.Millisecond, func() bool {
		for _, m := range nodes[0].view().Members {
			if m.CurrentPriority != 0 {
				return false
			}
		}
		return len(nodes[0].view().Members) == 3
	}); err != nil {
		t.Fatal(err)
	}
	hold, hcancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer hcancel()
	if err := testenv.WaitFor(hold, 20*time.Millisecond, func() bool {
		v := nodes[0].view()
		return v.Leader != leader || v.Epoch != epoch
	}); err == nil {
		t.Fatalf("leadership moved while every node was unhealthy: %s epoch %d", nodes[0].view().Leader, nodes[0].view().Epoch)
	}
	// One node recovers: it outranks the others and takes over once.
	var healthy *node
	for _, n := range nodes {
		if n.name != leader {
			healthy = n
			break
		}
	}
	healthy.q.SetHealth(true, "")
	_, e2 := waitLeaderIs(t, nodes, healthy.name, 15*time.Second)
	if e2 != epoch+1 {
		t.Fatalf("epoch %d -> %d, want exactly one handover", epoch, e2)
	}
}

// testSpecified restricts leadership to one low-priority member: the leader
// resigns at once, the specified member leads, and lifting the restriction
// gives the lead back to the highest priority after the grace period.
func testSpecified(t *testing.T, b backend) {
	r := root()
	n1 := startNode(t, b.Dial(t, b.Addr), testConfig("n1", r, 200))
	waitLeaderIs(t, []*node{n1}, "n1", 15*time.Second)
	n2 := startNode(t, b.Dial(t, b.Addr), testConfig("n2", r, 10))
	nodes := []*node{n1, n2}
	_, e0 := waitLeaderIs(t, nodes, "n1", 15*time.Second)
	ctx := context.Background()
	if err := n1.q.SetSpecified(ctx, []string{"ghost"}, false); !errors.Is(err, quorum.ErrNotMember) {
		t.Fatalf("specified list without a live member: %v", err)
	}
	if err := n1.q.SetSpecified(ctx, []string{"n2", "n2"}, true); !errors.Is(err, quorum.ErrInvalid) {
		t.Fatalf("duplicate names: %v", err)
	}
	if v := n1.view(); v.Leader != "n1" || v.Epoch != e0 || len(v.Specified) != 0 {
		t.Fatalf("rejected input changed the election: %+v", v)
	}
	if err := n1.q.SetSpecified(ctx, []string{"n2"}, false); err != nil {
		t.Fatal(err)
	}
	_, e1 := waitLeaderIs(t, nodes, "n2", 10*time.Second)
	if e1 != e0+1 {
		t.Fatalf("epoch %d -> %d, want one handover", e0, e1)
	}
	if err := n1.q.SetSpecified(ctx, nil, false); err != nil {
		t.Fatal(err)
	}
	waitLeaderIs(t, nodes, "n1", 15*time.Second)
}
