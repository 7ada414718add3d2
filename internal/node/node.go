// Package node composes one taskd daemon: the data directory, the
// coordination store (embedded etcd, external etcd or ZooKeeper), the quorum
// and the API server. Start-up runs in that order; shutdown in reverse.
package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/taskd/taskd/internal/api"
	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/bootstrap"
	"github.com/taskd/taskd/internal/chaos/clockhook"
	"github.com/taskd/taskd/internal/clockstep"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/coord/etcd"
	"github.com/taskd/taskd/internal/dispatch"
	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/health"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/metrics"
	"github.com/taskd/taskd/internal/peerwatch"
	"github.com/taskd/taskd/internal/pki"
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/runner"
	"github.com/taskd/taskd/internal/schedule"
	"github.com/taskd/taskd/internal/starve"
	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/vipaddr"
	"github.com/taskd/taskd/internal/vips"
	"golang.org/x/sync/errgroup"
)

// ErrDataDir marks a data directory that cannot be used (exit code 73).
var ErrDataDir = errors.New("data directory unusable")

// ErrCoordinatorFailed marks a fatal failure of the embedded etcd server
// (exit code 70).
var ErrCoordinatorFailed = errors.New("embedded coordinator failed")

// ErrAddrInUse marks a listen address another process holds (the API port,
// or an embedded etcd port): a condition that may pass (a previous
// instance still exiting), so systemd restarts the node.
var ErrAddrInUse = errors.New("address in use")

// Node is a running taskd.
type Node struct {
	cfg     Config
	log     *slog.Logger
	baseLog *slog.Logger // without the node attribute, for components that add it
	target  coord.Target
	q       atomic.Pointer[quorum.Quorum]
	tasks   atomic.Pointer[task.Store]
	scheds  atomic.Pointer[schedule.Store]
	vipReg  atomic.Pointer[vips.Registry]
	tokens  atomic.Pointer[auth.Tokens]
	rings   atomic.Pointer[events.Rings]
	// vipLabels records the labels of VIPs held here (stale cleanup).
	vipLabels *vipaddr.LabelFile
	clock     clockhook.Clock
	metrics   *metrics.Set
	events    *events.Recorder
	auth      *auth.Verifier // API tokens
	// quorumStarted is closed once n.q is set.
	quorumStarted chan struct{}
	wait          atomic.Pointer[string] // why the quorum has not started yet
	// creds are the node's certificate, the cluster CA and store secrets.
	creds   *pki.Bundle
	etcdSrv atomic.Pointer[etcd.Server] // the embedded member, while it runs
	store   atomic.Pointer[coord.Store] // the open store, for join checks
}

// Run starts the node and blocks until ctx ends and everything has stopped.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	target, _ := coord.ParseTarget(cfg.Coordinator)
	n := &Node{cfg: cfg, log: log.With("node", cfg.Name), baseLog: log, target: target, quorumStarted: make(chan struct{})}
	n.metrics = metrics.New(func() *quorum.View {
		if q := n.q.Load(); q != nil {
			v, _ := q.View()
			return &v
		}
		return nil
	})
	n.setWaiting("starting")
	n.vipLabels = vipaddr.NewLabelFile(filepath.Join(cfg.DataDir, "vip-labels.json"))

	// The API port first: a start that cannot listen (another process
	// holds the port) fails before it writes anything into the data
	// directory.
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("%w: --listen %s: %w", ErrAddrInUse, cfg.Listen, err)
		}
		return fmt.Errorf("%w: listen on %s: %w", ErrConfig, cfg.Listen, err)
	}
	defer ln.Close()
	if target.Kind == coord.KindEmbedded {
		if err := etcdPortsFree(cfg); err != nil {
			return err
		}
	}
	unlock, nodeID, err := prepareDataDir(cfg.DataDir)
	if err != nil {
		return err
	}
	defer unlock()
	if n.creds, err = loadCreds(cfg); err != nil {
		return err
	}
	rec, err := events.Open(filepath.Join(cfg.DataDir, "events.jsonl"), cfg.Name, cfg.Root)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrDataDir, err)
	}
	defer rec.Close()
	// Lines with an "event" attribute also go to the timeline.
	tapped := slog.New(events.Tap(log.Handler(), rec))
	n.baseLog, n.log, n.events = tapped, tapped.With("node", cfg.Name), rec
	if err := n.metrics.CountEventDrops(rec.Dropped); err != nil {
		n.log.Warn("dropped timeline events are not exported as a metric", "err", err)
	}
	prevCode, prevReason := previousExit(cfg.DataDir)

	local, err := auth.LoadLocal(cfg.DataDir, cfg.Name)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	n.auth = auth.NewVerifier(cfg.Root, cfg.Name, local, n.log)
	joiner := &bootstrap.Server{Creds: n.creds, Coordinator: target.String(), Embedded: target.Kind == coord.KindEmbedded,
		Cluster: joinCluster{n}, Verifier: bootstrap.TokenVerifier{Tokens: n.auth}, Now: n.clock.Now, Log: n.log}
	srv, err := api.NewServer(api.ServerConfig{Listen: cfg.Listen, TLS: n.creds.ServerTLS(false), Auth: n.auth,
		CAHash: n.creds.CA.Fingerprint(), Join: joiner, Metrics: n.metrics.Handler()}, n, n.log)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	n.log.Info("taskd starting", events.Start.Attr(), "previous_exit", prevCode, "previous_reason", prevReason, "version", cfg.Version, "listen", ln.Addr().String(), "coordinator", target.String(),
		"data_dir", cfg.DataDir, "node_id", nodeID, "session_timeout", cfg.SessionTimeout)
	for _, w := range cfg.rootWarnings() {
		n.log.Warn(w)
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Run(gctx, ln) })
	g.Go(func() error { return n.runCoordinated(gctx, nodeID) })
	g.Go(func() error { n.notifySystemd(gctx); return nil })
	g.Go(func() error { n.clock.Follow(gctx, cfg.ClockOffsetFile, n.log); return nil })
	g.Go(func() error {
		err := clockstep.Watch(gctx, func() {
			n.log.Warn("the system's wall clock was set", events.ClockSet.Attr())
			n.clock.Step()
		})
		if err != nil {
			// Without it a step is noticed at the next event or tick.
			n.log.Warn("cannot watch for settings of the wall clock", "err", err)
		}
		return nil
	})
	// The journal writer; events logged after it ends are written by
	// rec.Close.
	g.Go(func() error { return rec.RunJournal(gctx) })
	g.Go(func() error { return rec.ReportDrops(gctx, dropReportInterval, n.log) })
	err = g.Wait()
	if ctx.Err() != nil && (err == nil || errors.Is(err, context.Canceled)) {
		n.log.Info("taskd stopped")
		return nil
	}
	return err
}

// runCoordinated opens the store and runs the quorum until ctx ends: the
// store, the task center on it, and the quorum whose roles are the member
// and leader duties.
func (n *Node) runCoordinated(ctx context.Context, nodeID string) error {
	cs, err := n.openCoordination(ctx)
	if cs == nil {
		return err
	}
	defer cs.close()
	store := cs.store
	n.store.Store(&store)
	defer n.store.Store(nil)
	n.registerJoinToken(ctx, store)
	// Publish the timeline to the store while it is open.
	pctx, pcancel := context.WithCancel(ctx)
	var pub sync.WaitGroup
	pub.Add(2)
	go func() { defer pub.Done(); n.events.Run(pctx, store) }()
	// Follow the API token records, and register this node's admin token.
	go func() { defer pub.Done(); n.auth.Run(pctx, store) }()
	defer func() { pcancel(); pub.Wait() }()

	root, err := keys.NewRoot(n.cfg.Root)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	tc, err := n.startTaskCenter(store, root)
	if err != nil {
		return err
	}
	n.vipReg.Store(vips.NewRegistry(store, root, n.View, localAddrs))
	n.tokens.Store(auth.NewTokens(store, root))
	n.rings.Store(events.NewRings(store, root))
	policy, _ := n.cfg.vipPolicy() // validated in Run
	holder := vips.NewHolder(store, root, n.cfg.Name, policy, n.holdVIP, n.log)
	seed, _ := n.cfg.vipSpecs() // validated in Run
	n.cleanupVIPs(seed)
	assigner := vips.NewAssigner(store, root, n.cfg.Name, n.cfg.YieldGrace, seed, n.log)
	var q *quorum.Quorum
	// The embedded store's peer watch: every member reports the peers its
	// raft transport lost; the leader ends their sessions (a dead raft
	// leader's lease would outlive it by an election and a timeout).
	var reporter *peerwatch.Reporter
	var reaper *peerwatch.Reaper
	if cs.links != nil {
		if reporter, err = peerwatch.NewReporter(cs.links, store, root, n.cfg.Name, n.cfg.SessionTimeout, n.log); err != nil {
			return fmt.Errorf("%w: %w", ErrConfig, err)
		}
		if rv, ok := store.(coord.SessionRevoker); ok {
			reaper = peerwatch.NewReaper(store, rv, root, n.cfg.Name, n.log)
		}
	}
	roles := quorum.Roles{
		Member: n.memberRole(tc, holder, reporter),
		Leader: leaderRole(tc.leaderParts(assigner, func() (quorum.View, <-chan struct{}) { return q.View() }, cs.raftAway, reaper)),
	}
	q, err = quorum.New(n.cfg.quorumConfig(nodeID), store, roles, n.baseLog, quorum.WithFenceHook(n.metrics.Fenced))
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	n.q.Store(q)
	close(n.quorumStarted)
	// Starvation: the store's heartbeat loops report their lateness to the
	// monitor (set before the quorum opens a session), which tells the
	// quorum when the node is starved of CPU.
	// A starved node that leads the embedded etcd's raft hands that over
	// too (at each change and refresh while starved).
	raftOff := make(chan struct{}, 1)
	onStarve := func(starved bool, reason string) {
		q.SetStarved(starved, reason)
		if starved {
			select {
			case raftOff <- struct{}{}:
			default: // one pending hand-over check covers this one
			}
		}
	}
	mon, err := starve.New(starve.DefaultConfig(n.cfg.SessionTimeout, n.cfg.DeadlineFraction), n.metrics, n.log, onStarve)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if r, ok := cs.store.(coord.HeartbeatReporter); ok {
		r.ObserveHeartbeats(mon.ObserveHeartbeat)
	}
	return n.runQuorum(ctx, q, cs.srvErrs, mon, raftOff)
}

// coordination is the open store, and with the embedded etcd its server.
type coordination struct {
	store coord.Store
	// srvErrs reports the embedded server's failure (nil for external
	// stores: a nil channel never receives).
	srvErrs <-chan error
	// raftAway keeps the embedded etcd's raft leadership off the taskd
	// leader (nil for external stores).
	raftAway func(context.Context)
	// links reads the embedded etcd member's peer links (nil for
	// external stores).
	links peerwatch.Links
	close func()
}

// openCoordination starts the embedded etcd or dials the external store.
// It returns nil and nil when ctx ended first.
func (n *Node) openCoordination(ctx context.Context) (*coordination, error) {
	if n.target.Kind != coord.KindEmbedded {
		store, err := n.openExternal(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil
			}
			return nil, err
		}
		return &coordination{store: store, close: func() { store.Close() }}, nil
	}
	srv, err := n.startEmbedded(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil
		}
		return nil, err
	}
	n.etcdSrv.Store(srv)
	store, err := etcd.Open(ctx, srv.ClientConfig(), n.log)
	if err != nil {
		n.etcdSrv.Store(nil)
		srv.Close()
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return &coordination{
		store:    store,
		srvErrs:  srv.Err(),
		raftAway: func(ctx context.Context) { srv.KeepRaftLeadershipAway(ctx, n.log, n.fitForRaftLeadership) },
		links:    srv,
		close: func() {
			store.Close()
			n.etcdSrv.Store(nil)
			srv.Close()
		},
	}, nil
}

// taskCenter is the task machinery on the store: the task and schedule
// stores, this node's runner, and the leader's dispatcher and scheduler.
type taskCenter struct {
	tasks  *task.Store
	runner *runner.Runner
	disp   *dispatch.Dispatcher
	ticker *schedule.Leader
	log    *slog.Logger
}

// startTaskCenter builds the task center and publishes its stores to the
// API.
func (n *Node) startTaskCenter(store coord.Store, root keys.Root) (*taskCenter, error) {
	types, err := n.cfg.taskTypes(n.log, n.metrics)
	if err != nil {
		return nil, fmt.Errorf("task types: %w", err)
	}
	tasks, err := task.NewStore(store, root.String(), types, n.cfg.TimeZone, n.clock.Now)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	rc, _ := n.cfg.runnerConfig() // validated in Run
	rc.Metrics = n.metrics
	run, err := runner.New(rc, tasks, n.log)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	dc := dispatch.DefaultConfig()
	dc.Retention, dc.Metrics = n.cfg.TaskRetention, n.metrics
	disp, err := dispatch.New(dc, tasks, n.log)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	n.tasks.Store(tasks)
	scheds := schedule.NewStore(store, root, tasks)
	n.scheds.Store(scheds)
	ticker := schedule.NewLeader(scheds, n.log).WithClockSteps(n.clock.Stepped())
	return &taskCenter{tasks: tasks, runner: run, disp: disp, ticker: ticker, log: n.log}, nil
}

// memberRole is what every member runs on its session: the runner, the
// VIP holder and, with the embedded store, the peer silence reporter.
func (n *Node) memberRole(tc *taskCenter, holder *vips.Holder, reporter *peerwatch.Reporter) func(ctx context.Context, s coord.Session) error {
	return func(ctx context.Context, s coord.Session) error {
		// The name is ours now: the admin token may go into the store.
		n.auth.Joined()
		// Member duties end with the session, and the fence waits for
		// them: VIPs are removed before the local deadline.
		g, gctx := errgroup.WithContext(ctx)
		g.Go(func() error { return tc.runner.Run(gctx, s) })
		g.Go(func() error { return holder.Run(gctx, s) })
		if reporter != nil {
			g.Go(func() error { return reporter.Run(gctx, s) })
		}
		return g.Wait()
	}
}

// leaderParts are the leader's duties: they run until leadership ends, and
// the fence waits for them. view is the quorum's (it exists once the role
// runs).
func (tc *taskCenter) leaderParts(assigner *vips.Assigner, view func() (quorum.View, <-chan struct{}), raftAway func(context.Context), reaper *peerwatch.Reaper) []leaderPart {
	parts := []leaderPart{
		{"dispatcher", func(ctx context.Context, l *quorum.Leadership) error { return tc.disp.Run(ctx, l, view) }},
		{"scheduler", tc.ticker.Run},
		{"vip assigner", func(ctx context.Context, l *quorum.Leadership) error { return assigner.Run(ctx, l, view) }},
		{"idempotency sweeper", func(ctx context.Context, _ *quorum.Leadership) error {
			return tc.tasks.RunIdempotencySweeper(ctx, task.SweepEvery, tc.log)
		}},
	}
	if raftAway != nil {
		parts = append(parts, leaderPart{"raft leadership mover", func(ctx context.Context, _ *quorum.Leadership) error { raftAway(ctx); return nil }})
	}
	if reaper != nil {
		parts = append(parts, leaderPart{"silent member reaper", func(ctx context.Context, l *quorum.Leadership) error { return reaper.Run(ctx, l, view) }})
	}
	return parts
}

// runQuorum runs q, the starvation monitor mon (and the raft hand-over it
// asks for on raftOff) and the health probes until ctx ends, q fails, or
// the embedded store server does.
func (n *Node) runQuorum(ctx context.Context, q *quorum.Quorum, srvErrs <-chan error, mon *starve.Monitor, raftOff <-chan struct{}) error {
	qctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hc, _ := n.cfg.healthConfig() // validated in Run
	var probes sync.WaitGroup
	probes.Add(3)
	go func() { defer probes.Done(); _ = mon.Run(qctx) }()
	go func() {
		defer probes.Done()
		for {
			select {
			case <-qctx.Done():
				return
			case <-raftOff:
			}
			if srv := n.etcdSrv.Load(); srv != nil {
				if err := srv.MoveRaftLeadershipOff(qctx, n.fitForRaftLeadership); err != nil {
					n.log.Warn("starved, but cannot move etcd raft leadership off this member", "err", err)
				}
			}
		}
	}()
	go func() {
		defer probes.Done()
		health.Run(qctx, hc, n.log, func(ok bool, reason string) {
			q.SetHealth(ok, reason)
		})
	}()
	defer func() { cancel(); probes.Wait() }() // the probes end with qctx
	qerr := make(chan error, 1)
	go func() { qerr <- q.Run(qctx) }()
	select {
	case err := <-qerr:
		if errors.Is(err, quorum.ErrDuplicateName) {
			return fmt.Errorf("%w: %w", ErrConfig, err)
		}
		return err
	case err := <-srvErrs:
		cancel()
		<-qerr
		return fmt.Errorf("%w: %w", ErrCoordinatorFailed, err)
	}
}

func (n *Node) setWaiting(why string) { n.wait.Store(&why) }

// fitForRaftLeadership: a live member that is not starved of CPU (a
// starved raft leader would stall the store for everyone).
func (n *Node) fitForRaftLeadership(name string) bool {
	for _, m := range n.View().Members {
		if m.Name == name {
			return !m.Starved
		}
	}
	return false
}

// prepareDataDir creates the directory, takes its lock (one taskd per
// directory) and reads or creates the node id.
func prepareDataDir(dir string) (unlock func(), nodeID string, err error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, "", fmt.Errorf("%w: %w", ErrDataDir, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %w", ErrDataDir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, "", fmt.Errorf("%w: %s is locked by another running taskd: %w", ErrDataDir, dir, err)
	}
	unlock = func() { f.Close() }
	idPath := filepath.Join(dir, "node-id")
	b, err := os.ReadFile(idPath)
	switch {
	case err == nil:
		nodeID = strings.TrimSpace(string(b))
	case errors.Is(err, os.ErrNotExist):
		var raw [16]byte
		_, _ = rand.Read(raw[:])
		nodeID = hex.EncodeToString(raw[:])
		tmp := idPath + ".tmp"
		if err := os.WriteFile(tmp, []byte(nodeID+"\n"), 0o640); err != nil {
			unlock()
			return nil, "", fmt.Errorf("%w: %w", ErrDataDir, err)
		}
		if err := os.Rename(tmp, idPath); err != nil {
			unlock()
			return nil, "", fmt.Errorf("%w: %w", ErrDataDir, err)
		}
	default:
		unlock()
		return nil, "", fmt.Errorf("%w: %w", ErrDataDir, err)
	}
	if nodeID == "" {
		unlock()
		return nil, "", fmt.Errorf("%w: %s is empty; remove it to get a new node id", ErrDataDir, idPath)
	}
	return unlock, nodeID, nil
}

// EtcdMembers implements api.Cluster: the embedded etcd's member names, nil
// for external stores.
func (n *Node) EtcdMembers() []string {
	if srv := n.etcdSrv.Load(); srv != nil {
		return srv.MemberNames()
	}
	return nil
}

// Forget implements api.Cluster: it removes a decommissioned node that is
// down, and on the embedded store its etcd member.
func (n *Node) Forget(ctx context.Context, name string) (quorum.Forgotten, error) {
	q := n.q.Load()
	if q == nil {
		return quorum.Forgotten{}, fmt.Errorf("node is not connected to the coordinator yet: %w", coord.ErrUnavailable)
	}
	var removeEtcd func(context.Context, string) (bool, error)
	if srv := n.etcdSrv.Load(); srv != nil {
		removeEtcd = func(ctx context.Context, name string) (bool, error) {
			err := srv.RemoveMember(ctx, name)
			if errors.Is(err, etcd.ErrNoSuchMember) {
				return false, nil
			}
			return err == nil, err
		}
	}
	return q.Forget(ctx, name, removeEtcd)
}

// etcdPortsFree checks, before anything is written into the data
// directory, that the embedded etcd can listen on its client and peer
// URLs: a port another process holds is ErrAddrInUse (exit 71, which
// systemd retries), as for --listen. The ports are only probed, not held:
// a process that takes one between the probe and etcd's own listen makes
// etcd fail with EADDRINUSE, which startEmbedded maps the same way. Other
// listen errors are left to etcd.
func etcdPortsFree(cfg Config) error {
	for _, u := range []struct{ flag, v string }{{"--etcd-client-url", cfg.EtcdClientURL}, {"--etcd-peer-url", cfg.EtcdPeerURL}} {
		parsed, err := url.Parse(u.v)
		if err != nil || parsed.Host == "" {
			return fmt.Errorf("%w: %s %q: want https://host:port", ErrConfig, u.flag, u.v)
		}
		l, err := net.Listen("tcp", parsed.Host)
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("%w: %s %s: %w", ErrAddrInUse, u.flag, u.v, err)
		}
		if err != nil {
			// Not decided here (an address not up yet at boot,
			// a name that does not resolve): etcd reports it as
			// before (exit 70, restarted).
			continue
		}
		if err := l.Close(); err != nil {
			return fmt.Errorf("%s %s: %w", u.flag, u.v, err)
		}
	}
	return nil
}
