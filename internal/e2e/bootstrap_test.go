package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord/etcd"
	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/pki"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// clusterState is what a join must not change when it is refused: the etcd
// members, the etcd users, and the store's keys (without the event ring,
// which the running nodes keep writing).
func clusterState(t *testing.T, n *harness.Node) string {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{n.EtcdClientURL}, TLS: n.Creds.ClientTLS(""),
		Username: etcd.RootUser, Password: n.Creds.Secrets.EtcdRootPassword, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ml, err := cli.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range ml.Members {
		out = append(out, fmt.Sprintf("member %x %s %v learner=%v", m.ID, m.Name, m.PeerURLs, m.IsLearner))
	}
	users, err := cli.UserList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out = append(out, "users "+strings.Join(users.Users, ","))
	kvs, err := cli.Get(ctx, "/taskd/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range kvs.Kvs {
		if !strings.HasPrefix(string(kv.Key), "/taskd/events/") {
			out = append(out, "key "+string(kv.Key))
		}
	}
	slices.Sort(out)
	return strings.Join(out, "\n")
}

func writeToken(t *testing.T, dir, name string, tok pki.JoinToken) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := pki.WritePrivate(p, []byte(tok.String()+"\n")); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestBootstrapInitJoin forms a three-node cluster the way an operator
// does: `taskd init` on n1, `taskd join` on n2 and n3 (both at once,
// through n1). Before that, two joins that must fail do: one with a token
// pinned to another cluster's CA, one with a wrong credential; each exits
// 77 and changes nothing (etcd members, etcd users, store keys). A
// restarted joined node does not join again.
func TestBootstrapInitJoin(t *testing.T) {
	dir := t.TempDir()
	c, err := harness.NewCluster(filepath.Join(dir, "cluster"), taskdBin, 3, harness.Options{Bootstrap: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		if t.Failed() {
			for _, nd := range c.Nodes {
				t.Logf("--- log of %s (last 4000 bytes):\n%s", nd.Name, tail(nd.Log(), 4000))
			}
		}
	})
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	n1.Args = append([]string{"init"}, n1.Args...)
	if err := n1.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := harness.WaitAgreed(ctxFor(t, 60*time.Second), []*harness.Node{n1}, 0); err != nil {
		t.Fatalf("n1 never led its new cluster: %v", err)
	}
	if err := n1.LoadCreds(); err != nil {
		t.Fatal(err)
	}
	tokText, err := os.ReadFile(filepath.Join(n1.DataDir, "join.token"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := pki.ParseJoinToken(string(tokText))
	if err != nil {
		t.Fatal(err)
	}
	if tok.CAHash != n1.Creds.CA.Fingerprint() {
		t.Fatal("join token does not pin the cluster CA")
	}
	good := writeToken(t, dir, "good.token", tok)
	// The snapshot is taken once the leader's first collection has
	// written the finished-task index's ready key: after that an idle
	// cluster writes nothing on its own.
	var before string
	if err := harness.WaitFor(ctxFor(t, 60*time.Second), 200*time.Millisecond, func() bool {
		before = clusterState(t, n1)
		return slices.Contains(strings.Split(before, "\n"), "key /taskd/tasks/index-ready")
	}); err != nil {
		t.Fatalf("the leader never did its first collection:\n%s", before)
	}

	other, err := harness.NewPKI(filepath.Join(dir, "other"))
	if err != nil {
		t.Fatal(err)
	}
	wrongCA := writeToken(t, dir, "wrong-ca.token", pki.JoinToken{CAHash: other.CA.Fingerprint(), Credential: tok.Credential})
	wrongCred := writeToken(t, dir, "wrong-cred.token", pki.JoinToken{CAHash: tok.CAHash, Credential: "taskd.0badc0de." + pki.RandomSecret(32)})
	for _, bad := range []struct{ name, file, want string }{
		{"token pinned to another CA", wrongCA, "does not match the join token"},
		{"wrong credential", wrongCred, "credential refused"},
	} {
		t.Run(bad.name, func(t *testing.T) {
			data := filepath.Join(t.TempDir(), "data")
			args := append([]string{"join", "--server", n1.API, "--join-token-file", bad.file, "--join-timeout", "20s"}, n2.Args...)
			args = append(args, "--data-dir", data) // the last one counts: a scratch directory
			code, out := runTaskd(t, 60*time.Second, args...)
			if code != 77 || !strings.Contains(out, bad.want) {
				t.Fatalf("exit %d, want 77 mentioning %q; output:\n%s", code, bad.want, out)
			}
			if pki.Initialized(data) {
				t.Fatal("credentials installed")
			}
			if after := clusterState(t, n1); after != before {
				t.Fatalf("cluster changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
	if strings.Contains(n1.Log(), "admitted a node") {
		t.Fatal("n1 admitted somebody during the refused joins")
	}

	for _, n := range []*harness.Node{n2, n3} {
		n.Args = append([]string{"join", "--server", n1.API, "--join-token-file", good}, n.Args...)
		if err := n.Start(); err != nil {
			t.Fatal(err)
		}
	}
	st, err := harness.WaitAgreed(ctxFor(t, 3*time.Minute), c.Nodes, 0)
	if err != nil {
		t.Fatalf("the joined cluster never agreed on a leader: %v", err)
	}
	t.Logf("leader %s epoch %d", st.Leader, st.Epoch)
	state := clusterState(t, n1)
	for _, n := range c.Nodes {
		if !strings.Contains(state, " "+n.Name+" [https://") || strings.Contains(state, "learner=true") {
			t.Fatalf("%s is not a started voting member:\n%s", n.Name, state)
		}
	}
	// A restart with the same command does not join again.
	n2.Kill()
	if err := n2.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := harness.WaitAgreed(ctxFor(t, 2*time.Minute), c.Nodes, 0); err != nil {
		t.Fatalf("no agreement after n2's restart: %v", err)
	}
	if got := strings.Count(n2.Log(), `"joining the cluster"`); got != 1 {
		t.Fatalf("n2 joined %d times", got)
	}
	if after := clusterState(t, n1); strings.Count(after, "member ") != 3 {
		t.Fatalf("members after the restart:\n%s", after)
	}
}
