package harness

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/api"
	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/pki"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// TestAidsTag is the build tag of the test aids (the sleep task's ledger):
// binaries built for tests carry them, production binaries do not.
const TestAidsTag = "testaids"

// Build compiles taskd and taskctl into dir, with the test aids (-tags
// testaids), and returns their paths. Tests, benchmarks and the chaos suite
// use these binaries.
func Build(dir string) (taskd, taskctl string, err error) {
	taskd, taskctl = filepath.Join(dir, "taskd"), filepath.Join(dir, "taskctl")
	for pkg, out := range map[string]string{"github.com/taskd/taskd/cmd/taskd": taskd, "github.com/taskd/taskd/cmd/taskctl": taskctl} {
		if err := goBuild(out, pkg, TestAidsTag); err != nil {
			return "", "", err
		}
	}
	return taskd, taskctl, nil
}

// BuildProduction compiles taskd into dir as `make build` does, without the
// test aids, for tests that check what a production binary refuses.
func BuildProduction(dir string) (taskd string, err error) {
	taskd = filepath.Join(dir, "taskd")
	return taskd, goBuild(taskd, "github.com/taskd/taskd/cmd/taskd", "")
}

// BuildCopy compiles taskd-copy into dir as `make build` does: without cgo
// (CGO_ENABLED=0), a static binary, so that its start-up does not load libc
// through the dynamic linker. The copy benchmark times it.
func BuildCopy(dir string) (string, error) {
	out := filepath.Join(dir, "taskd-copy")
	return out, goBuild(out, "github.com/taskd/taskd/cmd/taskd-copy", "", "CGO_ENABLED=0")
}

func goBuild(out, pkg, tags string, env ...string) error {
	args := []string{"build", "-o", out}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	cmd := exec.Command("go", append(args, pkg)...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}

// Options shape a taskd cluster.
type Options struct {
	// Coordinator is passed to every node; "" forms an embedded etcd
	// cluster across the nodes.
	Coordinator    string
	SessionTimeout time.Duration
	Priorities     []int    // per node; default 100
	Extra          []string // more flags for every node
	// PKI provisions every node's DATA_DIR/pki before it starts; nil: a
	// new one under the cluster's directory. A ZooKeeper ensemble's nodes
	// must share its PKI (Ensemble.PKI).
	PKI *PKI
	// Bootstrap leaves the nodes without credentials and without
	// --etcd-initial-cluster: the test forms the cluster with taskd init
	// and taskd join (prepend them to Node.Args).
	Bootstrap bool
}

// Cluster is a set of taskd processes on loopback.
type Cluster struct {
	Bin   string
	Dir   string
	Nodes []*Node
	PKI   *PKI
}

// Node is one taskd process.
type Node struct {
	Name    string
	API     string
	Args    []string
	DataDir string
	LogPath string
	Proc    *Proc
	// EtcdClientURL is the embedded etcd member's client URL ("" otherwise).
	EtcdClientURL string
	// Creds are the node's credentials, as in its DATA_DIR/pki.
	Creds *pki.Bundle
	// Token is the node's admin token (DATA_DIR/admin.token).
	Token  string
	bin    string
	client *api.Client
}

// CtlEnv is the environment with which taskctl talks to the node with its
// admin credentials.
func (n *Node) CtlEnv() []string {
	return []string{"TASKD_ENDPOINT=https://" + n.API, "TASKD_DATA_DIR=" + n.DataDir}
}

// NewCluster prepares n nodes under dir; StartAll starts them.
func NewCluster(dir, bin string, n int, opt Options) (*Cluster, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	ports, err := FreePorts(3 * n)
	if err != nil {
		return nil, err
	}
	var initial []string
	for i := range n {
		initial = append(initial, fmt.Sprintf("n%d=https://127.0.0.1:%d", i+1, ports[3*i+2]))
	}
	p := opt.PKI
	if p == nil {
		if p, err = NewPKI(filepath.Join(dir, "pki")); err != nil {
			return nil, err
		}
	}
	c := &Cluster{Bin: bin, Dir: dir, PKI: p}
	for i := range n {
		name := fmt.Sprintf("n%d", i+1)
		nd := &Node{Name: name, API: fmt.Sprintf("127.0.0.1:%d", ports[3*i]), DataDir: filepath.Join(dir, name),
			LogPath: filepath.Join(dir, name+".log"), bin: bin}
		if !opt.Bootstrap {
			if err := p.Provision(nd.DataDir, name); err != nil {
				return nil, err
			}
			if _, err := p.AdminToken(nd.DataDir, name); err != nil {
				return nil, err
			}
			if err := nd.LoadCreds(); err != nil {
				return nil, err
			}
		}
		prio := 100
		if i < len(opt.Priorities) {
			prio = opt.Priorities[i]
		}
		nd.Args = []string{"--name", name, "--data-dir", nd.DataDir, "--listen", nd.API, "--priority", fmt.Sprint(prio),
			"--log-format", "json"}
		if opt.SessionTimeout > 0 {
			nd.Args = append(nd.Args, "--session-timeout", opt.SessionTimeout.String())
		}
		if opt.Coordinator == "" {
			nd.EtcdClientURL = fmt.Sprintf("https://127.0.0.1:%d", ports[3*i+1])
			nd.Args = append(nd.Args, "--coordinator", "embedded",
				"--etcd-client-url", nd.EtcdClientURL,
				"--etcd-peer-url", fmt.Sprintf("https://127.0.0.1:%d", ports[3*i+2]))
			if !opt.Bootstrap {
				nd.Args = append(nd.Args, "--etcd-initial-cluster", strings.Join(initial, ","))
			}
		} else {
			nd.Args = append(nd.Args, "--coordinator", opt.Coordinator)
		}
		nd.Args = append(nd.Args, opt.Extra...)
		c.Nodes = append(c.Nodes, nd)
	}
	return c, nil
}

// StartAll starts every node.
func (c *Cluster) StartAll() error {
	for _, n := range c.Nodes {
		if err := n.Start(); err != nil {
			return err
		}
	}
	return nil
}

// Close kills every node still running.
func (c *Cluster) Close() {
	for _, n := range c.Nodes {
		n.Kill()
	}
}

// Node returns the node called name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Running returns the nodes whose process runs.
func (c *Cluster) Running() []*Node {
	var out []*Node
	for _, n := range c.Nodes {
		if n.Proc != nil && !n.Proc.Exited() {
			out = append(out, n)
		}
	}
	return out
}

// Start runs the node's process.
func (n *Node) Start() error {
	p, err := StartProc(n.LogPath, n.bin, n.Args...)
	if err != nil {
		return err
	}
	n.Proc = p
	return nil
}

// LoadCreds reads the node's credentials from its data directory (after a
// taskd init or join made them): its certificate bundle and admin token,
// and makes its API client with them.
func (n *Node) LoadCreds() error {
	b, err := pki.Load(n.DataDir)
	if err != nil {
		return err
	}
	tok, err := auth.ReadTokenFile(auth.LocalFile(n.DataDir))
	if err != nil {
		return err
	}
	cl, err := api.NewClient(api.ClientConfig{Endpoint: n.API, Token: tok.String(), CA: b.CA.Pool(), ExpectNode: n.Name})
	if err != nil {
		return err
	}
	n.Creds, n.Token, n.client = b, tok.String(), cl
	return nil
}

// Kill sends SIGKILL and waits.
func (n *Node) Kill() {
	if n.Proc != nil {
		n.Proc.Signal(syscall.SIGKILL)
		n.Proc.Wait()
	}
}

// Signal sends sig to the node's process.
func (n *Node) Signal(sig syscall.Signal) { n.Proc.Signal(sig) }

// List asks the node for its view of the cluster.
func (n *Node) List(ctx context.Context) (*taskdv1.ListMembersResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	cl, err := n.api()
	if err != nil {
		return nil, err
	}
	r, err := cl.Cluster.ListMembers(ctx, connect.NewRequest(&taskdv1.ListMembersRequest{}))
	if err != nil {
		return nil, err
	}
	return r.Msg, nil
}

// Log returns the node's log so far.
func (n *Node) Log() string {
	b, _ := os.ReadFile(n.LogPath)
	return string(b)
}

// LeaderState is what the running nodes agree on.
type LeaderState struct {
	Leader    string
	Epoch     int64
	ElectedAt time.Time
}

// Agreed returns the leader every node in nodes reports, if they agree and
// the leader is one of them. The nodes are asked at once, so that a check
// of a large cluster takes one round trip rather than one per node.
func Agreed(ctx context.Context, nodes []*Node) (LeaderState, bool) {
	views := make([]*taskdv1.ListMembersResponse, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r, err := n.List(ctx); err == nil {
				views[i] = r
			}
		}()
	}
	wg.Wait()
	var st LeaderState
	inSet := false
	for i, r := range views {
		if r == nil || r.Leader == "" {
			return LeaderState{}, false
		}
		if i == 0 {
			st = LeaderState{Leader: r.Leader, Epoch: r.Epoch}
			if r.ElectedAt != nil {
				st.ElectedAt = r.ElectedAt.AsTime()
			}
		} else if r.Leader != st.Leader || r.Epoch != st.Epoch {
			return LeaderState{}, false
		}
		inSet = inSet || nodes[i].Name == r.Leader
	}
	return st, inSet
}

// WaitAgreed waits until nodes agree on a leader among them, optionally with
// an epoch above minEpoch.
func WaitAgreed(ctx context.Context, nodes []*Node, minEpoch int64) (LeaderState, error) {
	var st LeaderState
	err := WaitFor(ctx, 10*time.Millisecond, func() bool {
		s, ok := Agreed(ctx, nodes)
		if ok && s.Epoch > minEpoch {
			st = s
			return true
		}
		return false
	})
	return st, err
}

// LeadsRaft reports whether the node's embedded etcd member leads raft,
// from etcd's own status, asked with the node's certificate.
func (n *Node) LeadsRaft(ctx context.Context) (bool, error) {
	return EtcdLeads(ctx, n.Creds, n.EtcdClientURL, nil)
}

// EtcdLeads asks the etcd member at endpoint (https://host:port) whether it
// leads raft, authenticating with creds. dial, when set, opens the TCP
// connections (e.g. inside a network namespace).
func EtcdLeads(ctx context.Context, creds *pki.Bundle, endpoint string, dial func(ctx context.Context, addr string) (net.Conn, error)) (bool, error) {
	cfg := clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 2 * time.Second,
		TLS:         creds.ClientTLS(""),
		Logger:      zap.NewNop(),
	}
	if dial != nil {
		cfg.DialOptions = []grpc.DialOption{grpc.WithContextDialer(dial)}
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return false, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := cli.Status(ctx, endpoint)
	if err != nil {
		return false, fmt.Errorf("etcd status at %s: %w", endpoint, err)
	}
	return st.Leader != 0 && st.Leader == st.Header.MemberId, nil
}

// Client is the node's API client (nil before the node has credentials).
func (n *Node) Client() *api.Client {
	cl, _ := n.api()
	return cl
}

// api returns the node's API client, made from its data directory once a
// taskd init or join has written the credentials there.
func (n *Node) api() (*api.Client, error) {
	if n.client == nil {
		if err := n.LoadCreds(); err != nil {
			return nil, fmt.Errorf("node %s has no credentials yet: %w", n.Name, err)
		}
	}
	return n.client, nil
}

// Metrics reads the node's /metrics with its admin token.
func (n *Node) Metrics(ctx context.Context) (string, error) {
	cl, err := n.api()
	if err != nil {
		return "", err
	}
	u, err := url.JoinPath(cl.Base, "metrics")
	if err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+n.Token)
	resp, err := cl.HTTP.Do(req)
	if err != nil {
		return "", fmt.Errorf("%s: GET /metrics: %w", n.Name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %s", resp.Status)
	}
	if err != nil {
		return "", fmt.Errorf("%s: GET /metrics: %w", n.Name, err)
	}
	return string(b), nil
}

// LiveRunners counts the runners the node reports live.
func (n *Node) LiveRunners(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	cl, err := n.api()
	if err != nil {
		return 0, err
	}
	r, err := cl.Runners.ListRunners(ctx, connect.NewRequest(&taskdv1.ListRunnersRequest{}))
	if err != nil {
		return 0, err
	}
	live := 0
	for _, rn := range r.Msg.Runners {
		if rn.Live {
			live++
		}
	}
	return live, nil
}
