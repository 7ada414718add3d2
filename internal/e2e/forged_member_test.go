package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/pki"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// fakeMember is a TLS listener the test controls, standing at an address
// a forged member record points to. It counts handshakes, requests and
// bearer tokens received.
type fakeMember struct {
	addr                   string
	hellos, requests, auth atomic.Int32
}

func startFakeMember(t *testing.T, cert tls.Certificate) *fakeMember {
	t.Helper()
	f := &fakeMember{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			f.requests.Add(1)
			if r.Header.Get("Authorization") != "" {
				f.auth.Add(1)
			}
			http.Error(w, "fake", http.StatusTeapot)
		}),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			f.hellos.Add(1)
			return nil, nil
		}},
		ReadHeaderTimeout: 5 * time.Second,
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { srv.Close(); wg.Wait() })
	return f
}

// nodeCert issues a node certificate for name from ca.
func nodeCert(t *testing.T, ca *pki.CA, name string) tls.Certificate {
	t.Helper()
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := ca.Issue(key.Public(), name, []string{"127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := pki.MarshalKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(append(certPEM, ca.PEM()...), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

// storePut writes a key straight into the node's embedded etcd, as an
// attacker with store access (or a buggy member) would.
func storePut(t *testing.T, n *harness.Node, key, value string) {
	t.Helper()
	// As the node itself: its certificate is its etcd user.
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{n.EtcdClientURL}, TLS: n.Creds.ClientTLS(""), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if value == "" {
		_, err = cli.Delete(ctx, key)
	} else {
		_, err = cli.Put(ctx, key, value)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// TestForgedMemberGetsNoToken (finding 7): member records in the store
// point at listeners the test controls, one with a certificate of another
// CA naming the member, one with a certificate of this cluster's CA for
// another node. taskctl doctor and taskctl events dial them (the
// handshakes prove it) but never send a request, let alone the token.
func TestForgedMemberGetsNoToken(t *testing.T) {
	c, n := readyNode(t)
	otherCA, err := pki.NewCA("attacker", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	fakes := map[string]*fakeMember{
		"fake1": startFakeMember(t, nodeCert(t, otherCA, "fake1")), // right name, wrong CA
		"fake2": startFakeMember(t, nodeCert(t, c.PKI.CA, "n9")),   // right CA, wrong name
	}
	for name, f := range fakes {
		rec, _ := json.Marshal(map[string]any{"name": name, "address": f.addr, "session": "running", "health": "ok",
			"started_at": time.Now(), "joined_at": time.Now()})
		storePut(t, n, "/taskd/members/"+name, string(rec))
		t.Cleanup(func() { storePut(t, n, "/taskd/members/"+name, "") })
	}
	if err := harness.WaitFor(ctxFor(t, 10*time.Second), 50*time.Millisecond, func() bool {
		r, err := n.List(context.Background())
		return err == nil && len(r.Members) == 3
	}); err != nil {
		t.Fatal("the forged members never showed in the member list")
	}
	code, out := runTaskctl(t, n.CtlEnv(), "doctor")
	if code != 8 || strings.Count(out, "did not prove it is this member") != 2 || !strings.Contains(out, "token was not sent") {
		t.Errorf("doctor with forged members: exit %d, want 8 naming both\n%s", code, out)
	}
	code, out = runTaskctl(t, n.CtlEnv(), "events")
	if code != 0 || strings.Count(out, "did not prove it is this member") != 2 {
		t.Errorf("events with forged members: exit %d, want warnings for both\n%s", code, out)
	}
	for name, f := range fakes {
		if f.hellos.Load() < 2 {
			t.Errorf("%s: %d TLS handshakes; doctor and events should each have dialed it", name, f.hellos.Load())
		}
		if f.requests.Load() != 0 || f.auth.Load() != 0 {
			t.Errorf("%s received %d requests, %d with a token", name, f.requests.Load(), f.auth.Load())
		}
	}
}
