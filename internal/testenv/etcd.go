package testenv

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/coord/etcd"
	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/pki"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Etcd is an embedded single-member etcd started for a test, secured as
// taskd runs it: TLS with client certificates on both ports, etcd auth on.
type Etcd struct {
	*etcd.Server
	PKI *harness.PKI
	// Creds are the member's node credentials (user "test").
	Creds *pki.Bundle

	rootOnce sync.Once
	root     *clientv3.Client // Snapshot's client, made once
	rootErr  error
}

// StartEtcd starts an embedded single-member etcd for the test on free
// loopback ports; cleanup stops it.
func StartEtcd(t testing.TB) *Etcd {
	t.Helper()
	p, err := harness.NewPKI(filepath.Join(t.TempDir(), "pki"))
	if err != nil {
		t.Fatal(err)
	}
	return StartEtcdWith(t, p, "test")
}

// StartEtcdWith starts the member name with credentials of p.
func StartEtcdWith(t testing.TB, p *harness.PKI, name string) *Etcd {
	t.Helper()
	dir := t.TempDir()
	if err := p.Provision(dir, name); err != nil {
		t.Fatal(err)
	}
	creds, err := pki.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	ports := FreePorts(t, 2)
	cfg := etcd.DefaultServerConfig()
	cfg.Name, cfg.DataDir, cfg.Creds = name, filepath.Join(dir, "etcd"), creds
	cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.ClientURL = fmt.Sprintf("https://127.0.0.1:%d", ports[0])
	cfg.PeerURL = fmt.Sprintf("https://127.0.0.1:%d", ports[1])
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, err := etcd.StartServer(ctx, cfg)
	if err != nil {
		t.Fatalf("start embedded etcd: %v", err)
	}
	t.Cleanup(srv.Close)
	e := &Etcd{Server: srv, PKI: p, Creds: creds}
	t.Cleanup(func() { // before srv.Close: cleanups run last first
		if e.root != nil {
			e.root.Close()
		}
	})
	return e
}

// Open opens a client as the member's node (its certificate); cleanup
// closes it.
func (e *Etcd) Open(t testing.TB) coord.Store {
	t.Helper()
	return OpenEtcd(t, e.ClientConfig())
}

// Snapshot is every key of the store with its revision and value, read as
// etcd's root user (the whole key space, not only /taskd): what a refused
// request must leave as it was.
func (e *Etcd) Snapshot(t testing.TB) []string {
	t.Helper()
	// One client for every snapshot of a test: a test that snapshots
	// around each of dozens of calls would otherwise pay a TLS handshake
	// and an etcd authentication each time, which on a loaded machine
	// took longer than the read.
	e.rootOnce.Do(func() {
		e.root, e.rootErr = clientv3.New(clientv3.Config{Endpoints: []string{e.ClientURL()}, TLS: e.Creds.ClientTLS(""), DialTimeout: 10 * time.Second,
			Username: etcd.RootUser, Password: e.Creds.Secrets.EtcdRootPassword, Logger: zap.NewNop()})
	})
	if e.rootErr != nil {
		t.Fatal(e.rootErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := e.root.Get(ctx, "", clientv3.WithFromKey())
	if err != nil {
		t.Fatalf("snapshot of the store: %v", err)
	}
	var out []string
	for _, kv := range resp.Kvs {
		out = append(out, fmt.Sprintf("%s@%d=%q", kv.Key, kv.ModRevision, kv.Value))
	}
	return out
}

// OpenEtcd opens a client with cfg; cleanup closes it.
func OpenEtcd(t testing.TB, cfg etcd.ClientConfig) coord.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := etcd.Open(ctx, cfg, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// StartEtcdProc starts Debian's etcd server as a second process, secured
// (see harness.EtcdProc); cleanup kills it.
func StartEtcdProc(t testing.TB, opt harness.EtcdProcOptions) *harness.EtcdProc {
	t.Helper()
	Need(t, "etcd-server", "etcd")
	e, err := harness.StartEtcdProc(t.TempDir(), opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.Kill()
		if t.Failed() {
			t.Logf("external etcd log:\n%s", e.Log())
		}
	})
	return e
}

// ExtEtcdConfig is how a taskd node reaches e: TLS with a client
// certificate of e's CA (unless e is plaintext), and e's taskd user.
func ExtEtcdConfig(t testing.TB, e *harness.EtcdProc) etcd.ClientConfig {
	t.Helper()
	cc := etcd.ClientConfig{Endpoints: []string{e.ClientURL}, Username: e.User, Password: e.Password}
	if strings.HasPrefix(e.ClientURL, "https://") {
		b, err := e.PKI.Bundle("taskd-client")
		if err != nil {
			t.Fatal(err)
		}
		cc.TLS = e.PKI.ClientTLS(b)
	}
	return cc
}
