package ctl

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/api/taskdv1/taskdv1connect"
	"github.com/taskd/taskd/internal/api"
	"github.com/taskd/taskd/internal/harness"
)

// unavailableCluster answers ListMembers with "unavailable" and a message
// that mentions TLS: a server's words, not a handshake that failed.
type unavailableCluster struct {
	taskdv1connect.UnimplementedClusterServiceHandler
}

func (unavailableCluster) ListMembers(context.Context, *connect.Request[taskdv1.ListMembersRequest]) (*connect.Response[taskdv1.ListMembersResponse], error) {
	return nil, connect.NewError(connect.CodeUnavailable, errors.New("no store session yet (reloading the tls certificates, x509 pool)"))
}

// TestExplainTLSByType: doctor calls a handshake failure a TLS failure by
// the error's type: a port that does not speak TLS, a server that refuses
// our (absent) client certificate; and it does not call one an answer
// whose text merely says "tls" or "x509", nor a refused connection.
func TestExplainTLSByType(t *testing.T) {
	p, err := harness.NewPKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	node, err := p.Bundle("n1")
	if err != nil {
		t.Fatal(err)
	}
	ask := func(endpoint string) string {
		t.Helper()
		c, err := api.NewClient(api.ClientConfig{Endpoint: endpoint, CA: node.CA.Pool()})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = c.Cluster.ListMembers(ctx, connect.NewRequest(&taskdv1.ListMembersRequest{}))
		if err == nil {
			t.Fatalf("%s: ListMembers succeeded", endpoint)
		}
		return explain(err)
	}
	_, h := taskdv1connect.NewClusterServiceHandler(unavailableCluster{})
	mux := http.NewServeMux()
	mux.Handle(taskdv1connect.ClusterServiceName+"/", h)
	mux.Handle("/", h)

	// A port that answers with something else than TLS (an SSH banner).
	junk, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer junk.Close()
	go func() {
		for {
			c, err := junk.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"))
			c.Close()
		}
	}()
	mutual := httptest.NewUnstartedServer(mux)
	mutual.TLS = node.ServerTLS(true)
	mutual.StartTLS()
	defer mutual.Close()
	open := httptest.NewUnstartedServer(mux)
	open.TLS = node.ServerTLS(false)
	open.StartTLS()
	defer open.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()

	cases := []struct {
		name, endpoint, want string
	}{
		{"port that does not speak TLS", junk.Addr().String(), "TLS failed"},
		{"server requires a client certificate", mutual.URL, "TLS failed"},
		{"server says tls and x509 in an unavailable answer", open.URL, "not reachable"},
		{"connection refused", closed, "not reachable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := ask(tc.endpoint); !strings.HasPrefix(got, tc.want) {
				t.Fatalf("explain: %q, want it to start with %q", got, tc.want)
			}
		})
	}
}
