package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/internal/api"
	"github.com/taskd/taskd/internal/api/gen/taskdv1"
)

// Build compiles taskd and taskctl into dir and returns their paths.
func Build(dir string) (taskd, taskctl string, err error) {
	taskd, taskctl = filepath.Join(dir, "taskd"), filepath.Join(dir, "taskctl")
	for pkg, out := range map[string]string{"github.com/taskd/taskd/cmd/taskd": taskd, "github.com/taskd/taskd/cmd/taskctl": taskctl} {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		if b, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
		}
	}
	return taskd, taskctl, nil
}

// Options shape a taskd cluster.
type Options struct {
	// Coordinator is passed to every node; "" forms an embedded etcd
	// cluster across the nodes.
	Coordinator    string
	SessionTimeout time.Duration
	Priorities     []int    // per node; default 100
	Extra          []string // more flags for every node
}

// Cluster is a set of taskd processes on loopback.
type Cluster struct {
	Bin   string
	Dir   string
	Nodes []*Node
	// Creds are the cluster CA and every node's admin token.
	Creds *Credentials
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
		initial = append(initial, fmt.Sprintf("n%d=http://127.0.0.1:%d", i+1, ports[3*i+2]))
	}
	c := &Cluster{Bin: bin, Dir: dir}
	for i := range n {
		name := fmt.Sprintf("n%d", i+1)
		nd := &Node{Name: name, API: fmt.Sprintf("127.0.0.1:%d", ports[3*i]), DataDir: filepath.Join(dir, name),
			LogPath: filepath.Join(dir, name+".log"), bin: bin}
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
			nd.EtcdClientURL = fmt.Sprintf("http://127.0.0.1:%d", ports[3*i+1])
			nd.Args = append(nd.Args, "--coordinator", "embedded",
				"--etcd-client-url", fmt.Sprintf("http://127.0.0.1:%d", ports[3*i+1]),
				"--etcd-peer-url", fmt.Sprintf("http://127.0.0.1:%d", ports[3*i+2]),
				"--etcd-initial-cluster", strings.Join(initial, ","))
		} else {
			nd.Args = append(nd.Args, "--coordinator", opt.Coordinator)
		}
		nd.Args = append(nd.Args, opt.Extra...)
		c.Nodes = append(c.Nodes, nd)
	}
	if err := c.provision(); err != nil {
		return nil, err
	}
	return c, nil
}

// provision gives the nodes one CA and admin tokens, and makes their
// clients.
func (c *Cluster) provision() error {
	var nodes []NodeCreds
	for _, nd := range c.Nodes {
		nodes = append(nodes, NodeCreds{Name: nd.Name, DataDir: nd.DataDir, Hosts: []string{"127.0.0.1"}})
	}
	creds, err := ProvisionCredentials(nodes)
	if err != nil {
		return err
	}
	c.Creds = creds
	for _, nd := range c.Nodes {
		nd.Token = creds.Tokens[nd.Name].String()
		cl, err := api.NewClient(api.ClientConfig{Endpoint: nd.API, Token: nd.Token, CA: creds.Pool(), ExpectNode: nd.Name})
		if err != nil {
			return err
		}
		nd.client = cl
	}
	return nil
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
	r, err := n.client.Cluster.ListMembers(ctx, connect.NewRequest(&taskdv1.ListMembersRequest{}))
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
// the leader is one of them.
func Agreed(ctx context.Context, nodes []*Node) (LeaderState, bool) {
	var st LeaderState
	inSet := false
	for i, n := range nodes {
		r, err := n.List(ctx)
		if err != nil || r.Leader == "" {
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
		inSet = inSet || n.Name == r.Leader
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
// from etcd's own status endpoint.
func (n *Node) LeadsRaft(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.EtcdClientURL+"/v3/maintenance/status", strings.NewReader("{}"))
	if err != nil {
		return false, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	var st struct {
		Header struct {
			MemberID string `json:"member_id"`
		} `json:"header"`
		Leader string `json:"leader"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return false, fmt.Errorf("etcd status of %s: %w", n.Name, err)
	}
	return st.Leader != "" && st.Leader == st.Header.MemberID, nil
}

// Client is the node's API client.
func (n *Node) Client() *api.Client { return n.client }

// LiveRunners counts the runners the node reports live.
func (n *Node) LiveRunners(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	r, err := n.client.Runners.ListRunners(ctx, connect.NewRequest(&taskdv1.ListRunnersRequest{}))
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
