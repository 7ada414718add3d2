package etcd_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/coord/coordtest"
	"github.com/taskd/taskd/internal/coord/etcd"
	"github.com/taskd/taskd/internal/testenv"
)

// startServer starts an embedded single-member etcd for the test.
func startServer(t *testing.T) *etcd.Server {
	t.Helper()
	ports := testenv.FreePorts(t, 2)
	cfg := etcd.DefaultServerConfig()
	cfg.Name = "test"
	cfg.DataDir = t.TempDir()
	cfg.ClientURL = fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	cfg.PeerURL = fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := etcd.StartServer(ctx, cfg)
	if err != nil {
		t.Fatalf("start embedded etcd: %v", err)
	}
	t.Cleanup(srv.Close)
	return srv
}

func TestContract(t *testing.T) {
	srv := startServer(t)
	coordtest.Run(t, func(t *testing.T) coord.Store {
		s, err := etcd.Open([]string{srv.ClientURL()}, slog.Default())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestServerConfigValidate(t *testing.T) {
	good := etcd.DefaultServerConfig()
	good.Name, good.DataDir = "n1", "/tmp/x"
	cases := []struct {
		name string
		edit func(*etcd.ServerConfig)
	}{
		{"empty name", func(c *etcd.ServerConfig) { c.Name = "" }},
		{"bad client url", func(c *etcd.ServerConfig) { c.ClientURL = "127.0.0.1:1" }},
		{"bad state", func(c *etcd.ServerConfig) { c.ClusterState = "maybe" }},
		{"cluster without self", func(c *etcd.ServerConfig) { c.InitialCluster = "n2=http://127.0.0.1:1" }},
		{"cluster entry malformed", func(c *etcd.ServerConfig) { c.InitialCluster = "n1" }},
	}
	if err := good.Validate(); err != nil {
		t.Fatalf("default config invalid: %v", err)
	}
	for _, c := range cases {
		cfg := good
		c.edit(&cfg)
		if err := cfg.Validate(); err == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
}
