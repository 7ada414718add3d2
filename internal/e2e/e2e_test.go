// Package e2e tests the taskd and taskctl binaries as an operator runs them:
// real processes, real coordination servers, signals.
package e2e

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/testenv"
)

var taskdBin, taskctlBin string

func TestMain(m *testing.M) {
	if mode := os.Getenv("TASKD_E2E_HELPER"); mode != "" {
		// Re-executed inside a test network namespace; see vip_test.go.
		os.Exit(helperMain(mode))
	}
	dir, err := os.MkdirTemp("", "taskd-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	taskdBin, taskctlBin, err = harness.Build(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func newCluster(t *testing.T, n int, opt harness.Options) *harness.Cluster {
	t.Helper()
	return newClusterBin(t, taskdBin, n, opt)
}

// newClusterBin is newCluster with another taskd binary.
func newClusterBin(t *testing.T, bin string, n int, opt harness.Options) *harness.Cluster {
	t.Helper()
	c, err := harness.NewCluster(t.TempDir(), bin, n, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		if t.Failed() {
			for _, nd := range c.Nodes {
				t.Logf("--- log of %s (last 3000 bytes):\n%s", nd.Name, tail(nd.Log(), 3000))
			}
		}
	})
	if err := c.StartAll(); err != nil {
		t.Fatal(err)
	}
	return c
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func others(c *harness.Cluster, name string) []*harness.Node {
	var out []*harness.Node
	for _, n := range c.Nodes {
		if n.Name != name {
			out = append(out, n)
		}
	}
	return out
}

// TestKillLeaderFailover: kill -9 of the leader on the embedded default; the
// survivors elect a new leader within session timeout + 1 s.
func TestKillLeaderFailover(t *testing.T) {
	const timeout = 6 * time.Second
	c := newCluster(t, 3, harness.Options{SessionTimeout: timeout})
	st, err := harness.WaitAgreed(ctxFor(t, 60*time.Second), c.Nodes, 0)
	if err != nil {
		t.Fatalf("no initial leader: %v", err)
	}
	// The taskd leader hands etcd raft leadership to a peer right after its
	// election. Every raft leader change makes etcd renew all leases for TTL
	// + election timeout, so the bound holds for a stable cluster: one whose
	// last raft change is a session timeout old. docs/operations.md says so.
	old := c.Node(st.Leader)
	if err := harness.WaitFor(ctxFor(t, 10*time.Second), 20*time.Millisecond, func() bool {
		leads, err := old.LeadsRaft(context.Background())
		return err == nil && !leads
	}); err != nil {
		t.Fatalf("taskd leader kept etcd raft leadership: %v", err)
	}
	stable := time.NewTimer(timeout + time.Second)
	<-stable.C
	killed := time.Now()
	old.Kill()
	ctx, cancel := context.WithDeadline(context.Background(), killed.Add(timeout+time.Second))
	defer cancel()
	nst, err := harness.WaitAgreed(ctx, others(c, old.Name), st.Epoch)
	if err != nil {
		t.Fatalf("no new leader within session timeout + 1s (%v) of kill -9: %v", timeout+time.Second, err)
	}
	t.Logf("kill -9 of %s: %s leads epoch %d after %v", old.Name, nst.Leader, nst.Epoch, time.Since(killed))
	// The killed node restarts and rejoins as a follower.
	if err := old.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := harness.WaitAgreed(ctxFor(t, 30*time.Second), c.Nodes, nst.Epoch-1); err != nil {
		t.Fatalf("restarted node did not rejoin: %v", err)
	}
}

// TestTermLeaderHandover: SIGTERM resigns and deregisters, so a successor
// leads within 1 s, and the process exits 0.
func TestTermLeaderHandover(t *testing.T) {
	c := newCluster(t, 3, harness.Options{})
	st, err := harness.WaitAgreed(ctxFor(t, 60*time.Second), c.Nodes, 0)
	if err != nil {
		t.Fatal(err)
	}
	old := c.Node(st.Leader)
	if err := harness.WaitFor(ctxFor(t, 10*time.Second), 20*time.Millisecond, func() bool {
		leads, err := old.LeadsRaft(context.Background())
		return err == nil && !leads
	}); err != nil {
		t.Fatalf("taskd leader kept etcd raft leadership: %v", err)
	}
	sent := time.Now()
	old.Signal(syscall.SIGTERM)
	ctx, cancel := context.WithDeadline(context.Background(), sent.Add(time.Second))
	defer cancel()
	nst, err := harness.WaitAgreed(ctx, others(c, old.Name), st.Epoch)
	if err != nil {
		t.Fatalf("no successor within 1s of SIGTERM: %v", err)
	}
	t.Logf("SIGTERM of %s: %s leads after %v", old.Name, nst.Leader, time.Since(sent))
	select {
	case <-old.Proc.Done():
	case <-ctxFor(t, 15*time.Second).Done():
		t.Fatal("taskd did not exit after SIGTERM")
	}
	if code := old.Proc.ExitCode(); code != 0 {
		t.Fatalf("exit code after SIGTERM = %d, want 0", code)
	}
}

// TestStopLeaderFences: SIGSTOP the leader for longer than the session
// timeout, then SIGCONT. The successor's epoch must begin only after the old
// leader's local deadline (so a running leader would have fenced first); the
// old leader must fence on waking, rejoin as a follower and not exit.
func TestStopLeaderFences(t *testing.T) {
	ens := testenv.StartEnsemble(t, 1)
	const timeout = 3 * time.Second
	c := newCluster(t, 3, harness.Options{Coordinator: ens.URL("/stop"), PKI: ens.PKI, SessionTimeout: timeout})
	st, err := harness.WaitAgreed(ctxFor(t, 60*time.Second), c.Nodes, 0)
	if err != nil {
		t.Fatal(err)
	}
	old := c.Node(st.Leader)
	stopped := time.Now()
	old.Signal(syscall.SIGSTOP)
	nst, err := harness.WaitAgreed(ctxFor(t, timeout+5*time.Second), others(c, old.Name), st.Epoch)
	if err != nil {
		old.Signal(syscall.SIGCONT)
		t.Fatalf("no successor while the leader was stopped: %v", err)
	}
	localDeadline := time.Duration(0.6 * float64(timeout))
	if nst.ElectedAt.Before(stopped.Add(localDeadline)) {
		t.Fatalf("epoch %d began %v after the stop, before the old leader's local deadline (%v)",
			nst.Epoch, nst.ElectedAt.Sub(stopped), localDeadline)
	}
	// Keep it stopped for longer than the session timeout in total.
	select {
	case <-time.After(time.Until(stopped.Add(timeout + time.Second))):
	case <-old.Proc.Done():
		t.Fatal("stopped process exited")
	}
	old.Signal(syscall.SIGCONT)
	ctx := ctxFor(t, 20*time.Second)
	err = harness.WaitFor(ctx, 20*time.Millisecond, func() bool {
		r, err := old.List(ctx)
		return err == nil && r.LastFence != nil && r.SelfReady && r.Leader == nst.Leader && r.Epoch == nst.Epoch
	})
	if err != nil {
		t.Fatalf("old leader did not fence and rejoin as follower: %v", err)
	}
	r, _ := old.List(ctx)
	if !strings.Contains(r.LastFence.Reason, "deadline") && !strings.Contains(r.LastFence.Reason, "expired") {
		t.Fatalf("fence reason %q does not name the lost session", r.LastFence.Reason)
	}
	if old.Proc.Exited() {
		t.Fatalf("old leader exited (code %d) after session loss", old.Proc.ExitCode())
	}
	if !strings.Contains(old.Log(), `"msg":"fencing finished`) {
		t.Fatal("old leader logged no fence")
	}
}

// TestZKServerLossNoExpiry: killing one server of a three-server ensemble
// must not expire any taskd session nor move the leadership.
func TestZKServerLossNoExpiry(t *testing.T) {
	ens := testenv.StartEnsemble(t, 3)
	c := newCluster(t, 3, harness.Options{Coordinator: ens.URL("/loss"), PKI: ens.PKI})
	st, err := harness.WaitAgreed(ctxFor(t, 60*time.Second), c.Nodes, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, z := range ens.Servers[:2] { // lose two servers, one after the other, restarting the first
		z.Kill()
		// For two session timeouts, no node may fence and the epoch must hold.
		hold, cancel := context.WithTimeout(context.Background(), 12*time.Second)
		violation := ""
		_ = harness.WaitFor(hold, 50*time.Millisecond, func() bool {
			for _, n := range c.Nodes {
				r, err := n.List(hold)
				if err != nil {
					continue
				}
				if r.LastFence != nil {
					violation = fmt.Sprintf("%s fenced: %s", n.Name, r.LastFence.Reason)
				} else if r.Epoch != st.Epoch && r.Epoch != 0 {
					violation = fmt.Sprintf("%s sees epoch %d, want %d", n.Name, r.Epoch, st.Epoch)
				}
			}
			return violation != ""
		})
		cancel()
		if violation != "" {
			t.Fatalf("after killing zookeeper %d: %s", z.ID, violation)
		}
		if err := z.Start(); err != nil {
			t.Fatal(err)
		}
		if err := harness.WaitFor(ctxFor(t, 30*time.Second), 100*time.Millisecond, func() bool { return z.Mode() != "" }); err != nil {
			t.Fatal(err)
		}
	}
}

// run runs a binary to completion with extra environment and returns its
// exit code and combined output.
func run(t *testing.T, limit time.Duration, env []string, bin string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatalf("run %s: %v\n%s", bin, err, out)
	}
	return 0, string(out)
}

func runTaskd(t *testing.T, limit time.Duration, args ...string) (int, string) {
	t.Helper()
	return run(t, limit, nil, taskdBin, args...)
}

func runTaskctl(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	return run(t, 20*time.Second, env, taskctlBin, args...)
}

func TestBadStartupInput(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"malformed coordinator", []string{"--coordinator", "zk:/127.0.0.1:2181"}, "coordinator"},
		{"unknown scheme", []string{"--coordinator", "consul://127.0.0.1:8500"}, "unknown scheme"},
		{"bad port", []string{"--coordinator", "etcd://127.0.0.1:99999"}, "port"},
		{"priority out of range", []string{"--priority", "300"}, "0-255"},
		{"negative priority", []string{"--priority", "-1"}, "0-255"},
		{"bad name", []string{"--name", "a/b"}, "--name"},
		{"removed token flag", []string{"--token-file", "/etc/taskd/token"}, "--token-file (TASKD_TOKEN_FILE) was removed"},
		{"removed tls flags", []string{"--tls-cert", "/c", "--tls-key", "/k"}, "--tls-key (TASKD_TLS_KEY) was removed"},
		{"deadline fraction too high", []string{"--deadline-fraction", "0.95"}, "deadline"},
		{"vip network address", []string{"--vip", "iscsi=10.0.0.0/24@eth0"}, "network address"},
		{"vip broadcast address", []string{"--vip", "iscsi=10.0.0.255/24@eth0"}, "broadcast address"},
		{"vip not ipv4", []string{"--vip", "iscsi=fd00::1@eth0"}, "not an IPv4 address"},
		{"vip bad interface", []string{"--vip", "iscsi=10.0.0.5@eth 0"}, "interface name"},
		{"vip label too long", []string{"--vip", "management=10.0.0.5@bond0.100"}, "15"},
		{"vip malformed", []string{"--vip", "10.0.0.5"}, "SERVICE=IP"},
		{"vip twice", []string{"--vip", "a=10.0.0.5@eth0", "--vip", "b=10.0.0.5@eth0"}, "twice"},
		{"plaintext etcd client url", []string{"--etcd-client-url", "http://127.0.0.1:10601"}, "https://"},
		{"plaintext etcd peer url", []string{"--etcd-peer-url", "http://10.0.0.1:10602"}, "https://"},
		{"plaintext external etcd off loopback", []string{"--coordinator", "etcd://10.0.0.1:2379"}, "loopback"},
		{"plaintext external etcd without user", []string{"--coordinator", "etcd://127.0.0.1:2379"}, "--etcd-user"},
		{"other members but no credentials", []string{"--etcd-initial-cluster", "bad=https://127.0.0.1:1,n2=https://127.0.0.1:2"}, "taskd join"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			code, out := runTaskd(t, 20*time.Second, append([]string{"--data-dir", dir, "--name", "bad"}, tc.args...)...)
			if code != 78 {
				t.Fatalf("exit %d, want 78 (configuration error); output:\n%s", code, out)
			}
			if !strings.Contains(out, tc.want) {
				t.Fatalf("message does not mention %q:\n%s", tc.want, out)
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("bad input changed the disk: data dir exists (%v)", err)
			}
		})
	}
	t.Run("listen port held by another process", func(t *testing.T) {
		held, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close()
		p, err := harness.NewPKI(filepath.Join(t.TempDir(), "pki"))
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(t.TempDir(), "data")
		if err := p.Provision(dir, "busy"); err != nil {
			t.Fatal(err)
		}
		before := dirEntries(t, dir)
		code, out := runTaskd(t, 20*time.Second, "--data-dir", dir, "--name", "busy", "--listen", held.Addr().String())
		if code != 71 || !strings.Contains(out, "--listen "+held.Addr().String()) {
			t.Fatalf("exit %d, want 71 (address in use) naming --listen; output:\n%s", code, out)
		}
		// Only the record of why it exited (last-exit.json, which the next
		// start reports): no lock, node id or journal.
		after := slices.DeleteFunc(dirEntries(t, dir), func(p string) bool { return p == filepath.Join(dir, "last-exit.json") })
		if !slices.Equal(before, after) {
			t.Fatalf("the failed start wrote into the data directory: before %v, after %v", before, after)
		}
	})
	// The same for the embedded etcd's ports (issue 13 bug 7: exit 70,
	// after LOCK, node-id and events.jsonl were written).
	for _, flag := range []string{"--etcd-client-url", "--etcd-peer-url"} {
		t.Run("embedded etcd port held by another process: "+flag, func(t *testing.T) {
			held, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer held.Close()
			p, err := harness.NewPKI(filepath.Join(t.TempDir(), "pki"))
			if err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(t.TempDir(), "data")
			if err := p.Provision(dir, "busy"); err != nil {
				t.Fatal(err)
			}
			ports := testenv.FreePorts(t, 2)
			urls := map[string]string{
				"--etcd-client-url": fmt.Sprintf("https://127.0.0.1:%d", ports[0]),
				"--etcd-peer-url":   fmt.Sprintf("https://127.0.0.1:%d", ports[1]),
			}
			urls[flag] = "https://" + held.Addr().String()
			before := dirEntries(t, dir)
			code, out := runTaskd(t, 30*time.Second, "--data-dir", dir, "--name", "busy", "--coordinator", "embedded",
				"--listen", fmt.Sprintf("127.0.0.1:%d", testenv.FreePorts(t, 1)[0]),
				"--etcd-client-url", urls["--etcd-client-url"], "--etcd-peer-url", urls["--etcd-peer-url"])
			if code != 71 || !strings.Contains(out, flag+" "+urls[flag]) {
				t.Errorf("exit %d, want 71 (address in use) naming %s; output:\n%s", code, flag, out)
			}
			after := slices.DeleteFunc(dirEntries(t, dir), func(p string) bool { return p == filepath.Join(dir, "last-exit.json") })
			if !slices.Equal(before, after) {
				t.Errorf("the failed start wrote into the data directory: before %v, after %v", before, after)
			}
		})
	}
	t.Run("unknown flag", func(t *testing.T) {
		code, out := runTaskd(t, 20*time.Second, "--no-such-flag")
		if code != 2 {
			t.Fatalf("exit %d, want 2; output:\n%s", code, out)
		}
	})
}

// TestUnreachableCoordinator: taskd keeps retrying with backoff, reports
// not-ready, and does not exit; SIGTERM still stops it cleanly.
func TestUnreachableCoordinator(t *testing.T) {
	ports := testenv.FreePorts(t, 2)
	c := newCluster(t, 1, harness.Options{
		Coordinator:    fmt.Sprintf("zk://127.0.0.1:%d", ports[0]),
		SessionTimeout: 2 * time.Second,
	})
	n := c.Nodes[0]
	ctx := ctxFor(t, 30*time.Second)
	if err := harness.WaitFor(ctx, 50*time.Millisecond, func() bool {
		r, err := n.List(ctx)
		return err == nil && r.SelfSession == "connecting" && !r.SelfReady && r.SelfError != ""
	}); err != nil {
		t.Fatalf("node does not report the unreachable coordinator: %v", err)
	}
	resp, err := n.Client().HTTP.Get(n.Client().Base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("/readyz = %d, want 503", resp.StatusCode)
	}
	// The node has never reached its store, so no token record is known;
	// the node's own admin token still works (checked from memory), so
	// taskctl on the node can tell what is wrong.
	if code, out := runTaskctl(t, n.CtlEnv(), "service", "list", "-o", "json"); code != 0 || !strings.Contains(out, `"self_session": "connecting"`) {
		t.Fatalf("taskctl with the local admin token while the store is unreachable: exit %d\n%s", code, out)
	}
	// Three session timeouts without an exit.
	select {
	case <-n.Proc.Done():
		t.Fatalf("taskd exited (code %d) with the coordinator unreachable", n.Proc.ExitCode())
	case <-time.After(6 * time.Second):
	}
	n.Signal(syscall.SIGTERM)
	select {
	case <-n.Proc.Done():
	case <-ctx.Done():
		t.Fatal("no exit after SIGTERM")
	}
	if code := n.Proc.ExitCode(); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0", code)
	}
}

// TestDuplicateNameRefused: a second node with a live node's name refuses to
// start, clearly, and the cluster is undisturbed.
func TestDuplicateNameRefused(t *testing.T) {
	ens := testenv.StartEnsemble(t, 1)
	url := ens.URL("/dup")
	c := newCluster(t, 1, harness.Options{Coordinator: url, PKI: ens.PKI})
	st, err := harness.WaitAgreed(ctxFor(t, 30*time.Second), c.Nodes, 0)
	if err != nil {
		t.Fatal(err)
	}
	ports := testenv.FreePorts(t, 1)
	// Credentials of the same cluster, even with the same name: only the
	// live member record stands in the way.
	dup := t.TempDir()
	if err := ens.PKI.Provision(dup, "n1"); err != nil {
		t.Fatal(err)
	}
	code, out := runTaskd(t, 30*time.Second, "--name", "n1", "--data-dir", dup, "--coordinator", url,
		"--listen", fmt.Sprintf("127.0.0.1:%d", ports[0]))
	if code != 78 || !strings.Contains(out, "already in use") {
		t.Fatalf("duplicate name: exit %d, want 78 with a clear message; output:\n%s", code, out)
	}
	after, ok := harness.Agreed(context.Background(), c.Nodes)
	if !ok || after != st {
		t.Fatalf("cluster disturbed: before %+v after %+v", st, after)
	}
}

// TestTokenAndCLIErrors: a guessed, malformed or unreadable token is
// refused (exit 5) and changes nothing; CLI input errors exit 2 and change
// nothing; unknown nodes exit 4.
func TestTokenAndCLIErrors(t *testing.T) {
	dir := t.TempDir()
	guessed, malformed := filepath.Join(dir, "guessed"), filepath.Join(dir, "malformed")
	if err := os.WriteFile(guessed, []byte(auth.NewToken().String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(malformed, []byte("s3cret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, 1, harness.Options{})
	n := c.Nodes[0]
	env := n.CtlEnv()
	ctx := ctxFor(t, 60*time.Second)
	if err := harness.WaitFor(ctx, 100*time.Millisecond, func() bool {
		code, out := runTaskctl(t, env, "service", "list", "-o", "json")
		return code == 0 && strings.Contains(out, `"self_ready": true`)
	}); err != nil {
		t.Fatalf("service list with the node's admin token never succeeded: %v", err)
	}
	if code, out := runTaskctl(t, append(env, "TASKD_TOKEN_FILE="+guessed), "service", "set-priority", "n1", "7"); code != 5 || !strings.Contains(out, "unauthenticated") {
		t.Fatalf("guessed token: exit %d, want 5 (unauthenticated); output: %s", code, out)
	}
	if code, out := runTaskctl(t, append(env, "TASKD_TOKEN_FILE="+malformed), "service", "set-priority", "n1", "7"); code != 5 || !strings.Contains(out, "taskd.ID.SECRET") {
		t.Fatalf("malformed token file: exit %d, want 5; output: %s", code, out)
	}
	if code, out := runTaskctl(t, append(env, "TASKD_TOKEN_FILE="+filepath.Join(dir, "absent")), "service", "list"); code != 5 {
		t.Fatalf("missing token file: exit %d, want 5; output: %s", code, out)
	}
	if code, out := runTaskctl(t, append(env, "TASKD_ENDPOINT=http://"+n.API), "service", "list"); code != 2 || !strings.Contains(out, "only https") {
		t.Fatalf("http:// endpoint: exit %d, want 2; output: %s", code, out)
	}
	for _, args := range [][]string{
		{"service", "set-priority", "n1", "256"},
		{"service", "set-priority", "n1", "-3"},
		{"service", "set-priority", "n1", "high"},
		{"service", "set-priority", "n1"},
		{"service", "list", "-o", "yaml"},
		{"token", "create"},
		{"token", "create", "--role", "root"},
		{"token", "create", "--role", "viewer", "--ttl", "-1h"},
		{"token", "revoke", "../../election/epoch"},
	} {
		if code, out := runTaskctl(t, env, args...); code != 2 {
			t.Fatalf("taskctl %v: exit %d, want 2; output: %s", args, code, out)
		}
	}
	if code, out := runTaskctl(t, env, "service", "set-priority", "ghost", "10"); code != 4 {
		t.Fatalf("set-priority of an unknown node: exit %d, want 4; output: %s", code, out)
	}
	code, out := runTaskctl(t, env, "service", "list", "-o", "json")
	if code != 0 || !strings.Contains(out, `"priority": 100`) {
		t.Fatalf("priority changed by rejected input, or list failed (exit %d):\n%s", code, out)
	}
	if code, out := runTaskctl(t, append(env, "TASKD_ENDPOINT=127.0.0.1:1"), "service", "list"); code != 3 {
		t.Fatalf("unreachable endpoint: exit %d, want 3; output: %s", code, out)
	}
}

// dirEntries lists the names under dir, recursively, sorted.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		out = append(out, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}
