package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	gozk "github.com/go-zookeeper/zk"
	"github.com/taskd/taskd/internal/coord/etcd"
	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/pki"
	"github.com/taskd/taskd/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

type dialFunc func(ctx context.Context, addr string) (net.Conn, error)

// etcdKeys lists the store's keys (names; not the event ring, which the
// running nodes keep writing) and etcd's members and users, as root.
func etcdKeys(t *testing.T, endpoint string, creds *pki.Bundle, dial dialFunc) []string {
	t.Helper()
	keys, err := readEtcdKeys(endpoint, creds, dial)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// settledEtcdKeys is etcdKeys while the node may still be setting its
// store up: a read that fails (while the node enables etcd's auth, root's
// reads are refused for a moment) is not settled yet, and is retried.
func settledEtcdKeys(t *testing.T, endpoint string, creds *pki.Bundle, dial dialFunc) []string {
	t.Helper()
	keys, err := readEtcdKeys(endpoint, creds, dial)
	if err != nil {
		t.Logf("etcd not readable yet: %v", err)
		return nil
	}
	return keys
}

// readEtcdKeys lists every key (not the event ring), the members and the
// users, as root.
func readEtcdKeys(endpoint string, creds *pki.Bundle, dial dialFunc) ([]string, error) {
	cfg := clientv3.Config{Endpoints: []string{endpoint}, TLS: creds.ClientTLS(""), Username: etcd.RootUser,
		Password: creds.Secrets.EtcdRootPassword, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
	if dial != nil {
		cfg.DialOptions = []grpc.DialOption{grpc.WithContextDialer(dial)}
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	var out []string
	for _, kv := range resp.Kvs {
		if !strings.HasPrefix(string(kv.Key), "/taskd/events/") {
			out = append(out, string(kv.Key))
		}
	}
	ml, err := cli.MemberList(ctx)
	if err != nil {
		return nil, fmt.Errorf("list members: %w", err)
	}
	for _, m := range ml.Members {
		out = append(out, fmt.Sprintf("member %x %v", m.ID, m.PeerURLs))
	}
	users, err := cli.UserList(ctx)
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	return append(out, "users "+strings.Join(users.Users, ",")), nil
}

// zkKeys lists the znodes under root (not the event ring) and their ACLs,
// with the cluster's credentials.
func zkKeys(t *testing.T, servers []string, tc *tls.Config, digest, root string, dial func(network, addr string) (net.Conn, error)) []string {
	t.Helper()
	dialer := func(network, addr string, timeout time.Duration) (net.Conn, error) {
		raw, err := dial(network, addr)
		if err != nil {
			return nil, err
		}
		cfg := tc.Clone()
		cfg.ServerName, _, _ = net.SplitHostPort(addr)
		c := tls.Client(raw, cfg)
		return c, c.Handshake()
	}
	c, events, err := gozk.Connect(servers, 5*time.Second, gozk.WithDialer(dialer), gozk.WithLogInfo(false), gozk.WithLogger(nopLogger{}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	deadline := time.After(20 * time.Second)
	for has := false; !has; {
		select {
		case ev := <-events:
			has = ev.State == gozk.StateHasSession
		case <-deadline:
			t.Fatal("no ZooKeeper session with the cluster's credentials")
		}
	}
	if err := c.AddAuth("digest", []byte(digest)); err != nil {
		t.Fatal(err)
	}
	var out []string
	var walk func(p string)
	walk = func(p string) {
		if strings.HasPrefix(p, root+"/taskd/events") {
			return
		}
		// A node may not exist yet (the root, before the first taskd
		// created it) or be gone by the time it is read (a session's
		// node): the snapshot leaves it out, and the callers compare
		// snapshots of a settled cluster.
		acl, _, err := c.GetACL(p)
		if errors.Is(err, gozk.ErrNoNode) {
			return
		}
		if err != nil {
			t.Fatalf("acl of %s: %v", p, err)
		}
		kids, _, err := c.Children(p)
		if errors.Is(err, gozk.ErrNoNode) {
			return
		}
		if err != nil {
			t.Fatalf("children of %s: %v", p, err)
		}
		out = append(out, fmt.Sprintf("%s %+v", p, acl))
		slices.Sort(kids)
		for _, k := range kids {
			walk(path.Join(p, k))
		}
	}
	walk(root)
	return out
}

func hostOf(t *testing.T, u string) string {
	t.Helper()
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	return pu.Host
}

func argValue(args []string, flag string) string {
	for i := range args[:len(args)-1] {
		if args[i] == flag {
			return args[i+1]
		}
	}
	return ""
}

// checkAttempts fails the test for any attack that worked, and for any
// target that was not reachable (the refusal would prove nothing).
func checkAttempts(t *testing.T, out []byte, want int) {
	t.Helper()
	as, err := parseAttempts(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(as) != want {
		t.Fatalf("%d attempts reported, want %d:\n%s", len(as), want, out)
	}
	for _, a := range as {
		switch {
		case !a.Reachable:
			t.Errorf("%s: target not reachable, so its refusal proves nothing", a.Name)
		case a.OK:
			t.Errorf("ATTACK WORKED: %s: %s", a.Name, a.Detail)
		default:
			t.Logf("refused: %s: %.160s", a.Name, a.Detail)
		}
	}
}

// attackerBinary copies the test binary where uid 65534 can run it.
func attackerBinary(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "taskd-attacker")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin := filepath.Join(dir, "attacker")
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return bin
}

// TestStoreAttackUnprivilegedLocal: a local user (uid 65534) on a node
// goes after the embedded etcd's client and peer ports, the ZooKeeper
// ensemble and the credential files of two running nodes (one per
// backend). Everything is refused, and the stores' keys, members, users and
// ACLs are unchanged.
// settled reports whether the snapshots show the etcd node e and the
// ZooKeeper node z registered, and both leaders' first collection done
// (the finished-task index's ready key written).
func settled(etcdKeys, zkKeys []string, e, z string) bool {
	zkHas := func(key string) bool {
		return slices.ContainsFunc(zkKeys, func(s string) bool { return strings.HasPrefix(s, key+" ") })
	}
	return slices.Contains(etcdKeys, "/taskd/members/"+e) && slices.Contains(etcdKeys, "/taskd/tasks/index-ready") &&
		zkHas("/att/taskd/members/"+z) && zkHas("/att/taskd/tasks/index-ready")
}

func TestStoreAttackUnprivilegedLocal(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Missing(t, "running a child as uid 65534 needs root")
	}
	ec := newCluster(t, 1, harness.Options{})
	ens := testenv.StartEnsemble(t, 1)
	zc := newCluster(t, 1, harness.Options{Coordinator: ens.URL("/att"), PKI: ens.PKI})
	for _, c := range []*harness.Cluster{ec, zc} {
		if _, err := harness.WaitAgreed(ctxFor(t, 60*time.Second), c.Nodes, 0); err != nil {
			t.Fatal(err)
		}
	}
	en, zn := ec.Nodes[0], zc.Nodes[0]
	plan := attackPlan{
		EtcdClient: []string{hostOf(t, en.EtcdClientURL)},
		EtcdPeer:   []string{hostOf(t, argValue(en.Args, "--etcd-peer-url"))},
		ZK:         ens.Addrs(), ZKChroot: "/att",
	}
	for _, n := range []*harness.Node{en, zn} {
		p := pki.In(n.DataDir)
		plan.Files = append(plan.Files, p.CAKey(), p.NodeKey(), p.Secrets(), p.NodeCert())
	}
	zkCreds, err := ens.PKI.Bundle("checker")
	if err != nil {
		t.Fatal(err)
	}
	dialPlain := func(network, addr string) (net.Conn, error) { return net.DialTimeout(network, addr, 5*time.Second) }
	// The snapshot is taken once each leader has done its first
	// collection (the finished-task index's ready key exists): after that
	// an idle cluster writes nothing on its own.
	var etcdBefore, zkBefore []string
	if err := harness.WaitFor(ctxFor(t, 60*time.Second), 200*time.Millisecond, func() bool {
		etcdBefore = settledEtcdKeys(t, en.EtcdClientURL, en.Creds, nil)
		zkBefore = zkKeys(t, ens.Addrs(), ens.PKI.ClientTLS(zkCreds), ens.PKI.Secrets.ZKDigest, "/att", dialPlain)
		return settled(etcdBefore, zkBefore, "n1", "n1")
	}); err != nil {
		t.Fatalf("nothing to protect yet, or no first collection: etcd %v zk %v", etcdBefore, zkBefore)
	}

	b, err := json.Marshal(plan)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(attackerBinary(t), "-test.run", "^$")
	cmd.Env = []string{"TASKD_E2E_HELPER=storeattack", "ATTACK_PLAN=" + string(b), "HOME=/nonexistent"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}, Pdeathsig: syscall.SIGKILL}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("attacker: %v\n%s", err, stderr.String())
	}
	checkAttempts(t, out, 3*3+len(plan.Files))

	if after := etcdKeys(t, en.EtcdClientURL, en.Creds, nil); !slices.Equal(etcdBefore, after) {
		t.Errorf("etcd changed:\nbefore %v\nafter  %v", etcdBefore, after)
	}
	if after := zkKeys(t, ens.Addrs(), ens.PKI.ClientTLS(zkCreds), ens.PKI.Secrets.ZKDigest, "/att", dialPlain); !slices.Equal(zkBefore, after) {
		t.Errorf("ZooKeeper changed:\nbefore %v\nafter  %v", zkBefore, after)
	}
}

// TestStoreAttackFromAnotherNamespace: an outsider on the storage network
// (another network namespace) goes after a node's embedded etcd, whose
// client and peer ports listen on the network, and a ZooKeeper server on
// the network. Everything is refused and nothing changes.
func TestStoreAttackFromAnotherNamespace(t *testing.T) {
	lab := testenv.NewNetLab(t, "srv", "attacker")
	dir := t.TempDir()
	p, err := harness.NewPKI(filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	ns, addr := lab.NS("srv"), lab.Addr("srv")
	ens, err := harness.StartEnsembleIn(filepath.Join(dir, "zk"), []harness.NSHost{{NS: ns, Addr: addr}}, p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ens.Close)
	var procs []*harness.Proc
	t.Cleanup(func() {
		for _, pr := range procs {
			pr.Signal(syscall.SIGKILL)
			pr.Wait()
		}
	})
	start := func(name string, args ...string) {
		data := filepath.Join(dir, name)
		if err := p.Provision(data, name, addr); err != nil {
			t.Fatal(err)
		}
		argv := append([]string{"netns", "exec", ns, taskdBin, "--name", name, "--data-dir", data, "--log-format", "json"}, args...)
		pr, err := harness.StartProc(filepath.Join(dir, name+".log"), "ip", argv...)
		if err != nil {
			t.Fatal(err)
		}
		procs = append(procs, pr)
		t.Cleanup(func() {
			if t.Failed() {
				b, _ := os.ReadFile(filepath.Join(dir, name+".log"))
				t.Logf("--- log of %s:\n%s", name, tail(string(b), 3000))
			}
		})
	}
	start("e1", "--listen", "127.0.0.1:10600", "--etcd-client-url", "https://"+addr+":2379", "--etcd-peer-url", "https://"+addr+":2380")
	start("z1", "--listen", "127.0.0.1:10601", "--coordinator", "zks://"+addr+":2281/att")

	inNS := func(ctx context.Context, a string) (net.Conn, error) { return harness.DialInNS(ns, a, 5*time.Second) }
	dialNS := func(_, a string) (net.Conn, error) { return harness.DialInNS(ns, a, 5*time.Second) }
	creds, err := pki.Load(filepath.Join(dir, "e1"))
	if err != nil {
		t.Fatal(err)
	}
	zkCreds, err := p.Bundle("checker")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "https://" + addr + ":2379"
	var etcdBefore, zkBefore []string
	ctx := ctxFor(t, 2*time.Minute)
	if err := harness.WaitFor(ctx, 500*time.Millisecond, func() bool {
		if _, err := harness.EtcdLeads(ctx, creds, endpoint, inNS); err != nil {
			return false
		}
		etcdBefore = settledEtcdKeys(t, endpoint, creds, inNS)
		zkBefore = zkKeys(t, ens.Addrs(), p.ClientTLS(zkCreds), p.Secrets.ZKDigest, "/att", dialNS)
		return settled(etcdBefore, zkBefore, "e1", "z1")
	}); err != nil {
		t.Fatalf("the nodes never registered: etcd %v zk %v", etcdBefore, zkBefore)
	}

	plan := attackPlan{EtcdClient: []string{addr + ":2379"}, EtcdPeer: []string{addr + ":2380"}, ZK: ens.Addrs(), ZKChroot: "/att"}
	b, err := json.Marshal(plan)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", lab.NS("attacker"), "env", "TASKD_E2E_HELPER=storeattack", "ATTACK_PLAN="+string(b),
		os.Args[0], "-test.run", "^$")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("attacker: %v\n%s", err, stderr.String())
	}
	checkAttempts(t, out, 3*3)

	if after := etcdKeys(t, endpoint, creds, inNS); !slices.Equal(etcdBefore, after) {
		t.Errorf("etcd changed:\nbefore %v\nafter  %v", etcdBefore, after)
	}
	if after := zkKeys(t, ens.Addrs(), p.ClientTLS(zkCreds), p.Secrets.ZKDigest, "/att", dialNS); !slices.Equal(zkBefore, after) {
		t.Errorf("ZooKeeper changed:\nbefore %v\nafter  %v", zkBefore, after)
	}
}
