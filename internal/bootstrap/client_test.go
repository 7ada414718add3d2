package bootstrap

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/pki"
)

// TestJoinPinsTheCA: a server whose chain does not hold the CA the token
// pins (here: a real taskd node certificate of another cluster) gets no
// request at all, so the credential never leaves the joining node; the
// data directory stays empty.
func TestJoinPinsTheCA(t *testing.T) {
	ours, err := pki.Create(t.TempDir(), "n1", nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := pki.Create(t.TempDir(), "n1", nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var requests atomic.Int32
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		t.Errorf("the impostor got a request, Authorization %q", r.Header.Get("Authorization"))
	}), TLSConfig: theirs.ServerTLS(false), ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(tls.NewListener(ln, srv.TLSConfig))
	t.Cleanup(func() { srv.Close() })

	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = Join(ctx, JoinParams{DataDir: dir, Server: ln.Addr().String(),
		Token:   pki.JoinToken{CAHash: ours.CA.Fingerprint(), Credential: "taskd.00000000." + pki.RandomSecret(32)},
		Request: Request{Name: "n2", APIAddress: "127.0.0.1:1"}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if !errors.Is(err, ErrRefused) || !errors.Is(err, pki.ErrIdentity) {
		t.Fatalf("join through an impostor: %v, want ErrRefused (identity)", err)
	}
	if n := requests.Load(); n != 0 {
		t.Fatalf("the impostor got %d requests", n)
	}
	if pki.Initialized(dir) {
		t.Fatal("credentials were installed")
	}
	if _, ok, _ := ReadClusterFile(dir); ok {
		t.Fatal("cluster.json was written")
	}
}
