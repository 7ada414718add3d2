package etcd_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/coord/coordtest"
	"github.com/taskd/taskd/internal/coord/etcd"
	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/pki"
	"github.com/taskd/taskd/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// snapshot lists every key under /taskd/ with its revision, as the root
// user sees them (nothing hidden by permissions).
func snapshot(t *testing.T, endpoint string, creds *pki.Bundle) []string {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, TLS: creds.ClientTLS(""), DialTimeout: 5 * time.Second,
		Username: etcd.RootUser, Password: creds.Secrets.EtcdRootPassword, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(ctxFor(t, 10*time.Second), "", clientv3.WithFromKey())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, kv := range resp.Kvs {
		out = append(out, fmt.Sprintf("%s@%d=%q", kv.Key, kv.ModRevision, kv.Value))
	}
	return out
}

// rawClient opens a client with its own TLS settings (nil: plaintext),
// bypassing etcd.ClientConfig's checks, as an attacker would.
func rawClient(t *testing.T, endpoint string, tc *tls.Config) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, TLS: tc, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// TestEmbeddedRefusesWithoutCredentials plays an attacker against the
// client and peer ports of an embedded member: plaintext, TLS without a
// client certificate, a certificate of another CA, a certificate of the
// cluster CA whose name is no etcd user, and the node's own user outside
// /taskd/. Every read and write is refused and the keys stay as they were.
func TestEmbeddedRefusesWithoutCredentials(t *testing.T) {
	srv := testenv.StartEtcd(t)
	node := srv.Open(t)
	ctx := ctxFor(t, time.Minute)
	if _, err := node.Create(ctx, "/taskd/secret", []byte("v1")); err != nil {
		t.Fatalf("the node's own user cannot write under /taskd/: %v", err)
	}
	before := snapshot(t, srv.ClientURL(), srv.Creds)

	other, err := harness.NewPKI(filepath.Join(t.TempDir(), "other"))
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := other.Bundle("n1")
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := srv.PKI.Bundle("stranger") // the cluster's CA, no etcd user
	if err != nil {
		t.Fatal(err)
	}
	noCert := &tls.Config{RootCAs: srv.Creds.CA.Pool(), ServerName: "127.0.0.1"}
	u := srv.ClientURL()
	attackers := []struct {
		name     string
		endpoint string
		tls      *tls.Config
	}{
		{"plaintext", "http" + u[len("https"):], nil},
		{"tls without client certificate", u, noCert},
		{"certificate of another CA", u, foreign.ClientTLS("")},
		{"cluster certificate without etcd user", u, stranger.ClientTLS("")},
	}
	for _, a := range attackers {
		t.Run(a.name, func(t *testing.T) {
			cli := rawClient(t, a.endpoint, a.tls)
			actx := ctxFor(t, 5*time.Second)
			if r, err := cli.Get(actx, "/taskd/", clientv3.WithPrefix()); err == nil {
				t.Errorf("read under /taskd/ succeeded: %d keys", len(r.Kvs))
			}
			if _, err := cli.Put(actx, "/taskd/vips/config/evil", "10.0.0.1"); err == nil {
				t.Error("write under /taskd/ succeeded")
			}
			if _, err := cli.Put(actx, "/elsewhere", "x"); err == nil {
				t.Error("write outside /taskd/ succeeded")
			}
			if _, err := cli.MemberList(actx); err == nil && a.tls != nil && a.tls.Certificates == nil {
				t.Error("member list answered without a client certificate")
			}
		})
	}
	t.Run("node user outside /taskd/", func(t *testing.T) {
		cli := rawClient(t, u, srv.Creds.ClientTLS(""))
		if _, err := cli.Put(ctxFor(t, 5*time.Second), "/elsewhere", "x"); err == nil {
			t.Error("the node's user wrote outside /taskd/")
		}
		if _, err := cli.UserAdd(ctxFor(t, 5*time.Second), "mallory", "pw"); err == nil {
			t.Error("the node's user added an etcd user")
		}
	})
	t.Run("wrong root password", func(t *testing.T) {
		cc := srv.ClientConfig()
		cc.Username, cc.Password = etcd.RootUser, "guess"
		if _, err := etcd.Open(ctxFor(t, 10*time.Second), cc, quiet); !errors.Is(err, etcd.ErrAuth) {
			t.Errorf("open with a wrong root password: %v, want ErrAuth", err)
		}
	})
	t.Run("peer port", func(t *testing.T) {
		peer := srv.PeerURL()
		for _, c := range []struct {
			name string
			url  string
			tls  *tls.Config
		}{
			{"plaintext /members", "http" + peer[len("https"):] + "/members", nil},
			{"tls without client certificate", peer + "/members", noCert},
			{"certificate of another CA", peer + "/members", foreign.ClientTLS("")},
		} {
			hc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{TLSClientConfig: c.tls}}
			resp, err := hc.Get(c.url)
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				t.Errorf("%s: answered %s: %.200s", c.name, resp.Status, b)
			}
		}
	})
	if after := snapshot(t, srv.ClientURL(), srv.Creds); !slices.Equal(before, after) {
		t.Fatalf("keys changed:\nbefore %v\nafter  %v", before, after)
	}
}

// startCluster starts n members at once on free loopback ports (n1, n2,
// ...); cleanup stops them.
func startCluster(t *testing.T, n int) (*harness.PKI, []*etcd.Server, []string) {
	t.Helper()
	p, err := harness.NewPKI(filepath.Join(t.TempDir(), "pki"))
	if err != nil {
		t.Fatal(err)
	}
	ports := testenv.FreePorts(t, 2*n)
	var names, initial []string
	for i := range n {
		names = append(names, fmt.Sprintf("n%d", i+1))
		initial = append(initial, fmt.Sprintf("%s=https://127.0.0.1:%d", names[i], ports[2*i+1]))
	}
	servers := make([]*etcd.Server, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		dir := t.TempDir()
		if err := p.Provision(dir, n); err != nil {
			t.Fatal(err)
		}
		creds, err := pki.Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		cfg := etcd.DefaultServerConfig()
		cfg.Name, cfg.DataDir, cfg.Creds, cfg.Log = n, filepath.Join(dir, "etcd"), creds, quiet
		cfg.ClientURL = fmt.Sprintf("https://127.0.0.1:%d", ports[2*i])
		cfg.PeerURL = fmt.Sprintf("https://127.0.0.1:%d", ports[2*i+1])
		cfg.InitialCluster = strings.Join(initial, ",")
		wg.Add(1)
		go func() {
			defer wg.Done()
			servers[i], errs[i] = etcd.StartServer(ctxFor(t, 2*time.Minute), cfg)
		}()
	}
	wg.Wait()
	for i, s := range servers {
		if s != nil {
			t.Cleanup(s.Close)
		}
		if errs[i] != nil {
			t.Fatalf("%s: %v", names[i], errs[i])
		}
	}
	return p, servers, names
}

// TestClusterAuthSetUpConcurrently starts three members at once: each
// sets up auth (root user, role, its own user, auth enable) while the
// others do the same, and all must come up with auth on and every node's
// user working.
func TestClusterAuthSetUpConcurrently(t *testing.T) {
	p, servers, names := startCluster(t, 3)
	for i, s := range servers {
		st := testenv.OpenEtcd(t, s.ClientConfig())
		if _, err := st.Create(ctxFor(t, 10*time.Second), "/taskd/by-"+names[i], nil); err != nil {
			t.Errorf("%s's user cannot write: %v", names[i], err)
		}
	}
	stranger, err := p.Bundle("stranger")
	if err != nil {
		t.Fatal(err)
	}
	cli := rawClient(t, servers[0].ClientURL(), stranger.ClientTLS(""))
	if _, err := cli.Put(ctxFor(t, 5*time.Second), "/taskd/x", "y"); err == nil {
		t.Fatal("auth is not on: a certificate without etcd user wrote")
	}
}

// TestAdmitLearner: Admit adds a learner (the cluster keeps its quorum),
// answers a retry of the same unstarted member again without adding a
// second one, and the new member promotes itself once started; a name or
// peer URL of a started member is refused.
func TestAdmitLearner(t *testing.T) {
	first := testenv.StartEtcdWith(t, mustPKI(t), "n1")
	ports := testenv.FreePorts(t, 2)
	peer := fmt.Sprintf("https://127.0.0.1:%d", ports[1])
	ctx := ctxFor(t, 2*time.Minute)
	ic, err := first.Admit(ctx, "n2", peer)
	if err != nil {
		t.Fatal(err)
	}
	again, err := first.Admit(ctx, "n2", peer)
	if err != nil || again != ic {
		t.Fatalf("retried admission: %q, %v; want %q", again, err, ic)
	}
	// The first member alone still serves (a learner does not count).
	if _, err := first.Open(t).Create(ctx, "/taskd/during-join", nil); err != nil {
		t.Fatalf("the cluster lost its quorum while the new member was not started: %v", err)
	}
	dir := t.TempDir()
	if err := first.PKI.Provision(dir, "n2"); err != nil {
		t.Fatal(err)
	}
	creds, err := pki.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := etcd.DefaultServerConfig()
	cfg.Name, cfg.DataDir, cfg.Creds, cfg.Log = "n2", filepath.Join(dir, "etcd"), creds, quiet
	cfg.ClientURL, cfg.PeerURL = fmt.Sprintf("https://127.0.0.1:%d", ports[0]), peer
	cfg.InitialCluster, cfg.ClusterState = ic, "existing"
	second, err := etcd.StartServer(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(second.Close)
	if _, err := testenv.OpenEtcd(t, second.ClientConfig()).Get(ctx, "/taskd/during-join"); err != nil {
		t.Fatalf("the new member does not serve as a voting member: %v", err)
	}
	for _, c := range []struct{ name, peer string }{{"n2", peer}, {"n2", "https://127.0.0.1:1"}, {"n3", peer}} {
		if _, err := first.Admit(ctx, c.name, c.peer); !errors.Is(err, etcd.ErrAdmit) {
			t.Errorf("admit %s at %s (started member): %v, want ErrAdmit", c.name, c.peer, err)
		}
	}
}

func mustPKI(t *testing.T) *harness.PKI {
	p, err := harness.NewPKI(filepath.Join(t.TempDir(), "pki"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestExternalEtcd runs the contract suite against Debian's etcd server
// (a second process) over TLS with client certificates and password auth,
// and checks that it refuses clients without those credentials.
func TestExternalEtcd(t *testing.T) {
	ext := testenv.StartEtcdProc(t, harness.EtcdProcOptions{})
	good := testenv.ExtEtcdConfig(t, ext)
	coordtest.Run(t, func(t *testing.T) coord.Store { return testenv.OpenEtcd(t, good) })

	s := testenv.OpenEtcd(t, good)
	ctx := ctxFor(t, time.Minute)
	if _, err := s.Create(ctx, "/taskd/ext-secret", []byte("v")); err != nil {
		t.Fatal(err)
	}
	before, err := s.List(ctx, "/taskd")
	if err != nil {
		t.Fatal(err)
	}
	t.Run("no client certificate", func(t *testing.T) {
		tc := good.TLS.Clone()
		tc.Certificates = nil
		cli := rawClient(t, ext.ClientURL, tc)
		if _, err := cli.Get(ctxFor(t, 5*time.Second), "/taskd/ext-secret"); err == nil {
			t.Error("read without a client certificate")
		}
	})
	t.Run("certificate but no password", func(t *testing.T) {
		cli := rawClient(t, ext.ClientURL, good.TLS)
		if _, err := cli.Get(ctxFor(t, 5*time.Second), "/taskd/ext-secret"); err == nil {
			t.Error("read with a certificate whose name is no etcd user")
		}
		if _, err := cli.Put(ctxFor(t, 5*time.Second), "/taskd/ext-secret", "evil"); err == nil {
			t.Error("write with a certificate whose name is no etcd user")
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		bad := good
		bad.Password = "guess"
		if _, err := etcd.Open(ctxFor(t, 10*time.Second), bad, quiet); !errors.Is(err, etcd.ErrAuth) {
			t.Errorf("open with a wrong password: %v, want ErrAuth", err)
		}
	})
	t.Run("plaintext to a TLS port", func(t *testing.T) {
		cli := rawClient(t, "http"+ext.ClientURL[len("https"):], nil)
		if _, err := cli.Get(ctxFor(t, 5*time.Second), "/taskd/ext-secret"); err == nil {
			t.Error("read over plaintext")
		}
	})
	after, err := s.List(ctx, "/taskd")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(before, after, func(a, b coord.KV) bool { return a.Key == b.Key && a.Version == b.Version }) {
		t.Fatalf("keys changed: %v -> %v", before, after)
	}
}

// TestExternalEtcdPlaintextLoopback: plaintext etcd:// is accepted on
// loopback with a user and password, and works; without them, or off
// loopback, the configuration is refused before anything is dialled.
func TestExternalEtcdPlaintextLoopback(t *testing.T) {
	ext := testenv.StartEtcdProc(t, harness.EtcdProcOptions{Plaintext: true})
	good := testenv.ExtEtcdConfig(t, ext)
	s := testenv.OpenEtcd(t, good)
	ctx := ctxFor(t, time.Minute)
	if _, err := s.Create(ctx, "/taskd/plain", []byte("v")); err != nil {
		t.Fatal(err)
	}
	anon := rawClient(t, ext.ClientURL, nil)
	if _, err := anon.Get(ctxFor(t, 5*time.Second), "/taskd/plain"); err == nil {
		t.Error("anonymous plaintext read succeeded")
	}
	for name, cc := range map[string]etcd.ClientConfig{
		"no user":          {Endpoints: []string{ext.ClientURL}},
		"not loopback":     {Endpoints: []string{"http://192.0.2.1:2379"}, Username: "u", Password: "p"},
		"user without pw":  {Endpoints: []string{ext.ClientURL}, Username: "u"},
		"https without tc": {Endpoints: []string{"https://127.0.0.1:2379"}, Username: "u", Password: "p"},
	} {
		if err := cc.Validate(); !errors.Is(err, etcd.ErrInsecure) {
			t.Errorf("%s: Validate() = %v, want ErrInsecure", name, err)
		}
	}
}

// TestExternalEtcdHeartbeatsDoNotLogIn: with password auth, sessions'
// heartbeats renew their leases without logging in again, from one
// heartbeat to the next and from one session to the next (a node starts a
// new session after every fence). The etcd client logs in (Authenticate:
// a bcrypt check on the server) for every stream it opens; a stream per
// heartbeat cost the server a login per node every heartbeat, and 30
// nodes on one server never settled. Counted by the server's own metrics.
func TestExternalEtcdHeartbeatsDoNotLogIn(t *testing.T) {
	ext := testenv.StartEtcdProc(t, harness.EtcdProcOptions{})
	s := testenv.OpenEtcd(t, testenv.ExtEtcdConfig(t, ext))
	var beats atomic.Int32
	s.(coord.HeartbeatReporter).ObserveHeartbeats(func(late, roundTrip time.Duration) { beats.Add(1) })
	ctx := ctxFor(t, time.Minute)
	before, _, _, err := ext.Logins(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, upTo := range []int32{8, 16} {
		sess, err := s.NewSession(ctx, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if err := testenv.WaitFor(ctx, 20*time.Millisecond, func() bool { return beats.Load() >= upTo }); err != nil {
			t.Fatalf("session %d: %d heartbeats: %v", i+1, beats.Load(), err)
		}
		if st, _ := sess.State(); st != coord.StateRunning {
			t.Fatalf("session %d %v after %d heartbeats, want running", i+1, st, beats.Load())
		}
		if since := time.Since(sess.LastContact()); since > time.Second {
			t.Fatalf("session %d: last confirmed contact %v ago: the heartbeats are not confirmed", i+1, since)
		}
		if err := sess.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	after, failed, _, err := ext.Logins(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("logins: %d before the sessions, %d after %d heartbeats of two sessions (%d failed in all)", before, after, beats.Load(), failed)
	if after-before > 1 {
		t.Fatalf("%d logins during %d heartbeats of two sessions, want at most 1 (the keep-alive stream's)", after-before, beats.Load())
	}
}
