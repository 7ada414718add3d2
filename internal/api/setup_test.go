package api_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/api"
	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/pki"
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/schedule"
	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/tasktype"
	"github.com/taskd/taskd/internal/testenv"
	"github.com/taskd/taskd/internal/vips"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

const root = "/taskd"

// node is what the API needs from a taskd node, built from real parts (an
// embedded etcd, the task store, the VIP registry, the event recorder);
// only the quorum is left out.
type node struct {
	store  coord.Store
	tasks  *task.Store
	tokens *auth.Tokens
	rings  *events.Rings
	vips   *vips.Registry
	rec    *events.Recorder
	ready  atomic.Bool
}

// lostSession is when the fake node's session was lost, while it is not ready.
var lostSession = time.Date(2026, 11, 26, 16, 20, 0, 0, time.UTC)

func (n *node) View() quorum.View {
	if !n.ready.Load() {
		return quorum.View{Self: "n1", Session: "connecting", SessionSince: lostSession, JoinError: "etcd grant lease : coord: store unavailable"}
	}
	return quorum.View{Self: "n1", Session: "running", Ready: true}
}
func (n *node) Ready() bool                                          { return n.ready.Load() }
func (n *node) SetPriority(context.Context, string, int, bool) error { return nil }
func (n *node) SetSpecified(context.Context, []string, bool) error   { return nil }
func (n *node) Coordinator() string                                  { return "embedded" }
func (n *node) EtcdMembers() []string                                { return nil }
func (n *node) Forget(context.Context, string) (quorum.Forgotten, error) {
	return quorum.Forgotten{}, quorum.ErrNotKnown
}
func (n *node) TaskStore() *task.Store     { return n.tasks }
func (n *node) Tokens() *auth.Tokens       { return n.tokens }
func (n *node) EventRings() *events.Rings  { return n.rings }
func (n *node) Events() *events.Recorder   { return n.rec }
func (n *node) VIPs() *vips.Registry       { return n.vips }
func (n *node) Schedules() *schedule.Store { return nil }

// server is one API server on a loopback TLS listener.
type server struct {
	url      string
	addr     string
	etcd     *testenv.Etcd
	pool     *x509.CertPool
	store    coord.Store
	node     *node
	verifier *auth.Verifier
	local    auth.Local
	tokens   map[auth.Role]string
}

func keysRoot(t *testing.T, dir string) keys.Root {
	t.Helper()
	r, err := keys.NewRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func startServer(t *testing.T, tweak func(*api.ServerConfig)) *server {
	t.Helper()
	return startServerAt(t, root, tweak)
}

// startServerAt is startServer with the node's stores under storeRoot.
func startServerAt(t *testing.T, storeRoot string, tweak func(*api.ServerConfig)) *server {
	t.Helper()
	srv := testenv.StartEtcd(t)
	store := srv.Open(t)
	dir := t.TempDir()
	bundle, err := pki.Create(dir, "n1", []string{"127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	rec, err := events.Open(filepath.Join(dir, "events.jsonl"), "n1", storeRoot)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rec.Close() })
	jctx, jstop := context.WithCancel(context.Background())
	jdone := make(chan struct{})
	go func() { defer close(jdone); rec.RunJournal(jctx) }()
	t.Cleanup(func() { jstop(); <-jdone }) // runs before rec.Close
	log := slog.New(events.Tap(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}), rec))
	tasks, err := task.NewStore(store, storeRoot, tasktype.Builtin(tasktype.Copy{}, nil, nil), "UTC", time.Now)
	if err != nil {
		t.Fatal(err)
	}
	n := &node{store: store, tasks: tasks, rec: rec, tokens: auth.NewTokens(store, keysRoot(t, storeRoot)), rings: events.NewRings(store, keysRoot(t, storeRoot)),
		vips: vips.NewRegistry(store, keysRoot(t, storeRoot), func() quorum.View { return quorum.View{Self: "n1"} }, func() (map[netip.Addr]string, error) { return nil, nil })}
	n.ready.Store(true) // a joined node; tests that need another take it away
	local, err := auth.LoadLocal(dir, "n1")
	if err != nil {
		t.Fatal(err)
	}
	v := auth.NewVerifier(storeRoot, "n1", local, log)
	v.Joined() // as a node whose member record the quorum accepted
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); v.Run(ctx, store) }()
	cfg := api.ServerConfig{Listen: "127.0.0.1:0", TLS: bundle.ServerTLS(false), Auth: v, CAHash: bundle.CA.Fingerprint(),
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("taskd_up 1\n")) })}
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := api.NewServer(cfg, n, log)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); _ = s.Run(ctx, ln) }()
	t.Cleanup(func() { cancel(); wg.Wait() })

	out := &server{url: "https://" + ln.Addr().String(), addr: ln.Addr().String(), etcd: srv, pool: bundle.CA.Pool(), store: store,
		node: n, verifier: v, local: local, tokens: map[auth.Role]string{}}
	for _, r := range auth.Roles {
		tok, _, err := auth.Create(context.Background(), store, storeRoot, auth.CreateRequest{Role: r, CreatedBy: "test"}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		out.tokens[r] = tok.String()
	}
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if err := testenv.WaitFor(wctx, 5*time.Millisecond, func() bool {
		for _, tok := range out.tokens {
			if _, err := v.Verify(tok); err != nil {
				return false
			}
		}
		return true
	}); err != nil {
		t.Fatal("the verifier never loaded the test tokens")
	}
	return out
}

// client is an API client of s with token.
func (s *server) client(t *testing.T, token string, grpc bool) *api.Client {
	t.Helper()
	c, err := api.NewClient(api.ClientConfig{Endpoint: s.url, Token: token, CA: s.pool, ExpectNode: "n1", GRPC: grpc})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// httpClient speaks to s over verified TLS; http1 forces HTTP/1.1.
func (s *server) httpClient(http1 bool) *http.Client {
	tr := &http.Transport{TLSClientConfig: pki.VerifyingClientTLS(s.pool, "n1"), ForceAttemptHTTP2: !http1}
	if http1 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

// snapshot is every key and value in the store, to show that a refused
// request changed nothing.
func (s *server) snapshot(t *testing.T) string {
	t.Helper()
	return strings.Join(s.etcd.Snapshot(t), "\n")
}
