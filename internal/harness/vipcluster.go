package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// VIPCluster is three taskd nodes (n1-n3), each in its own lab namespace,
// forming one embedded etcd cluster over the lab subnet and holding one VIP
// on eth0, plus a "client" namespace and a "gw" namespace: the nodes'
// access-network health target (see GatewayDown). Every process that
// touches the lab subnet runs inside the lab's namespaces.
type VIPCluster struct {
	Lab     *NetLab
	VIP     string
	Timeout time.Duration
	Nodes   map[string]*Proc
	// Coordinator, when set, is taskd's --coordinator (an external store
	// on the lab subnet) instead of the embedded etcd cluster.
	Coordinator string
	// Extra are more taskd flags for every node; NodeExtra more for one.
	Extra     []string
	NodeExtra map[string][]string
	// Seedless nodes start without the --vip seed (a node whose
	// allowlist refuses the VIP cannot seed it).
	Seedless map[string]bool
	// Wrap is a command line that runs taskd (given as its arguments)
	// inside each node's namespace, e.g. a confinement wrapper.
	Wrap []string
	// ClockFiles gives every node a --clock-offset-file (ClockFile).
	ClockFiles bool
	// PKI provisioned every node's DATA_DIR/pki (one CA); servers started
	// in the lab for the cluster (ZooKeeper) use it too.
	PKI     *PKI
	dir     string
	taskd   string
	taskctl string
}

// VIPNodes are the node names of a VIPCluster.
var VIPNodes = []string{"n1", "n2", "n3"}

// StartVIPCluster builds the lab and starts the nodes. Close removes all.
func StartVIPCluster(dir, taskd, taskctl string, timeout time.Duration) (*VIPCluster, error) {
	c, err := NewVIPCluster(dir, taskd, taskctl, timeout)
	if err != nil {
		return nil, err
	}
	if err := c.StartAll(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// NewVIPCluster builds the lab without starting taskd, so that the caller
// can set Coordinator and Extra, or start servers in the lab first.
func NewVIPCluster(dir, taskd, taskctl string, timeout time.Duration) (*VIPCluster, error) {
	lab, err := NewNetLab(append(VIPNodes, "client", "gw")...)
	if err != nil {
		return nil, err
	}
	c := &VIPCluster{Lab: lab, VIP: "10.77.0.100", Timeout: timeout, Nodes: map[string]*Proc{},
		dir: dir, taskd: taskd, taskctl: taskctl}
	if c.PKI, err = NewPKI(filepath.Join(dir, "pki")); err != nil {
		c.Close()
		return nil, err
	}
	for _, n := range VIPNodes {
		if err := c.PKI.Provision(c.DataDir(n), n, lab.Addr(n)); err != nil {
			c.Close()
			return nil, err
		}
		if _, err := c.PKI.AdminToken(c.DataDir(n), n); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// StartAll starts every node.
func (c *VIPCluster) StartAll() error {
	for _, n := range VIPNodes {
		if err := c.Start(n); err != nil {
			return err
		}
	}
	return nil
}

// Start (re)starts node name; its log is DIR/name.log.
func (c *VIPCluster) Start(name string) error {
	var peers []string
	for _, n := range VIPNodes {
		peers = append(peers, fmt.Sprintf("%s=https://%s:2380", n, c.Lab.Addr(n)))
	}
	args := append([]string{"netns", "exec", c.Lab.NS(name)}, c.Wrap...)
	args = append(args, c.taskd,
		"--name", name, "--data-dir", c.DataDir(name),
		"--listen", "0.0.0.0:10600", "--advertise", c.Lab.Addr(name)+":10600",
		"--session-timeout", c.Timeout.String(),
		"--log-format", "json",
		// Fast health probes: unhealthy 2 x 200 ms after the gateway
		// stops answering.
		"--health-target", c.Lab.Addr("gw"), "--health-interval", "200ms", "--health-timeout", "100ms",
		"--health-rise", "2", "--health-fall", "2")
	if !c.Seedless[name] {
		args = append(args, "--vip", "iscsi="+c.VIP+"/32@eth0")
	}
	if c.Coordinator != "" {
		args = append(args, "--coordinator", c.Coordinator)
	} else {
		args = append(args, "--etcd-client-url", "https://127.0.0.1:2379", "--etcd-peer-url", "https://"+c.Lab.Addr(name)+":2380",
			"--etcd-initial-cluster", strings.Join(peers, ","))
	}
	if c.ClockFiles {
		args = append(args, "--clock-offset-file", c.ClockFile(name))
	}
	args = append(append(args, c.Extra...), c.NodeExtra[name]...)
	p, err := StartProc(c.LogPath(name), "ip", args...)
	if err != nil {
		return err
	}
	c.Nodes[name] = p
	return nil
}

// DataDir is node name's data directory.
func (c *VIPCluster) DataDir(name string) string { return filepath.Join(c.dir, name) }

// ClockFile is node name's --clock-offset-file.
func (c *VIPCluster) ClockFile(name string) string { return filepath.Join(c.dir, name+".clock") }

// LogPath is where node name logs.
func (c *VIPCluster) LogPath(name string) string { return filepath.Join(c.dir, name+".log") }

// Kill sends SIGKILL to node name and waits for it to exit.
func (c *VIPCluster) Kill(name string) {
	c.Nodes[name].Signal(syscall.SIGKILL)
	c.Nodes[name].Wait()
}

// Leader asks node from (inside its namespace) who leads and since when;
// "" until all three members are seen.
func (c *VIPCluster) Leader(from string) (string, time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", c.Lab.NS(from), c.taskctl,
		"--data-dir", c.DataDir(from), "service", "list", "-o", "json").Output()
	if err != nil {
		return "", time.Time{}
	}
	var r struct {
		Leader    string    `json:"leader"`
		ElectedAt time.Time `json:"elected_at"`
		Members   []struct {
			Name  string `json:"name"`
			State string `json:"state"`
		} `json:"members"`
	}
	if json.Unmarshal(out, &r) != nil {
		return "", time.Time{}
	}
	live := 0
	for _, m := range r.Members {
		if m.State != "down" { // a killed member stays listed, as down
			live++
		}
	}
	if live != len(VIPNodes) {
		return "", time.Time{}
	}
	return r.Leader, r.ElectedAt
}

// Ctl runs taskctl in node from's namespace against that node, with a
// 30-second limit, and returns its combined output.
func (c *VIPCluster) Ctl(from string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	argv := append([]string{"netns", "exec", c.Lab.NS(from), c.taskctl, "--data-dir", c.DataDir(from)}, args...)
	out, err := exec.CommandContext(ctx, "ip", argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("taskctl %s on %s: %w: %s", strings.Join(args, " "), from, err, out)
	}
	return string(out), nil
}

// GatewayDown makes the health target stop (down) or start again (up)
// answering, for every node at once: its link goes down or up.
func (c *VIPCluster) GatewayDown(down bool) error {
	state := "up"
	if down {
		state = "down"
	}
	_, err := c.Lab.IP("-n", c.Lab.NS("gw"), "link", "set", "eth0", state)
	return err
}

// Exited reports the nodes whose process has exited, killed or not.
func (c *VIPCluster) Exited() []string {
	var out []string
	for _, n := range VIPNodes {
		if p := c.Nodes[n]; p != nil && p.Exited() {
			out = append(out, n)
		}
	}
	return out
}

// NodeOf names the node whose eth0 has mac.
func (c *VIPCluster) NodeOf(mac string) string {
	for _, n := range VIPNodes {
		if m, _ := c.Lab.MAC(n); m == mac {
			return n
		}
	}
	return "unknown " + mac
}

// StartSampler runs argv (a program that calls vipaddr.SampleARP with $VIP,
// $SRC and $LIMIT) in the client namespace; samples go to the returned file.
func (c *VIPCluster) StartSampler(limit time.Duration, env []string, argv ...string) (string, *Proc, error) {
	log := filepath.Join(c.dir, "samples.jsonl")
	args := append([]string{"netns", "exec", c.Lab.NS("client"), "env",
		"VIP=" + c.VIP, "SRC=" + c.Lab.Addr("client"), "LIMIT=" + limit.String()}, env...)
	p, err := StartProc(log, "ip", append(args, argv...)...)
	return log, p, err
}

// SamplerEnv reads what StartSampler passes to the sampler: $VIP, $SRC and
// $LIMIT.
func SamplerEnv() (ip, src netip.Addr, limit time.Duration, err error) {
	ip, err1 := netip.ParseAddr(os.Getenv("VIP"))
	src, err2 := netip.ParseAddr(os.Getenv("SRC"))
	limit, err3 := time.ParseDuration(os.Getenv("LIMIT"))
	return ip, src, limit, errors.Join(err1, err2, err3)
}

// Close kills the nodes and removes the lab.
func (c *VIPCluster) Close() {
	for _, p := range c.Nodes {
		p.Signal(syscall.SIGKILL)
		p.Wait()
	}
	c.Lab.Close()
}
