package etcd_test

import (
	"strings"
	"testing"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/coord/coordtest"
	"github.com/taskd/taskd/internal/coord/etcd"
	"github.com/taskd/taskd/internal/pki"
	"github.com/taskd/taskd/internal/testenv"
)

func TestContract(t *testing.T) {
	srv := testenv.StartEtcd(t)
	coordtest.Run(t, func(t *testing.T) coord.Store { return srv.Open(t) })
}

func TestServerConfigValidate(t *testing.T) {
	good := etcd.DefaultServerConfig()
	good.Name, good.DataDir, good.Creds = "n1", "/tmp/x", &pki.Bundle{}
	cases := []struct {
		name string
		edit func(*etcd.ServerConfig)
	}{
		{"empty name", func(c *etcd.ServerConfig) { c.Name = "" }},
		{"bad client url", func(c *etcd.ServerConfig) { c.ClientURL = "127.0.0.1:1" }},
		{"bad state", func(c *etcd.ServerConfig) { c.ClusterState = "maybe" }},
		{"cluster without self", func(c *etcd.ServerConfig) { c.InitialCluster = "n2=http://127.0.0.1:1" }},
		{"cluster entry malformed", func(c *etcd.ServerConfig) { c.InitialCluster = "n1" }},
		{"plaintext client url", func(c *etcd.ServerConfig) { c.ClientURL = "http://127.0.0.1:2379" }},
		{"plaintext peer url", func(c *etcd.ServerConfig) { c.PeerURL = "http://10.0.0.1:2380" }},
		{"plaintext initial cluster", func(c *etcd.ServerConfig) { c.InitialCluster = "n1=http://127.0.0.1:10602" }},
		{"no credentials", func(c *etcd.ServerConfig) { c.Creds = nil }},
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

// TestLocalGet: serializable reads answer as GetMany does, and is offered
// only to a client of the process's own member (Server.ClientConfig): not
// to one with several endpoints, nor to that config pointed at another
// URL, nor to an external etcd's one endpoint (perhaps a balancer).
func TestLocalGet(t *testing.T) {
	srv := testenv.StartEtcd(t)
	s := srv.Open(t).(*etcd.Store)
	ctx := t.Context()
	put, err := s.Create(ctx, "/taskd/local/a", []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	if put, err = s.Update(ctx, "/taskd/local/a", []byte("v2"), put.Version); err != nil {
		t.Fatal(err)
	}
	got, err := s.LocalGetMany(ctx, []string{"/taskd/local/none", "/taskd/local/a"})
	if err != nil || len(got) != 2 || got[0].Key != "" || string(got[1].Value) != "v2" || got[1].Version != put.Version {
		t.Fatalf("local reads after the update: %+v, %v; want absent, then v2 at version %d", got, err, put.Version)
	}
	if !s.OneMember() {
		t.Fatal("a client of the embedded member says it talks to several members")
	}
	cfg := srv.ClientConfig()
	cfg.Endpoints = append(cfg.Endpoints, cfg.Endpoints[0])
	if two := testenv.OpenEtcd(t, cfg).(*etcd.Store); two.OneMember() {
		t.Fatal("a client with two endpoints says it talks to one member")
	}
	cfg = srv.ClientConfig()
	cfg.Endpoints = []string{strings.Replace(cfg.Endpoints[0], "127.0.0.1", "localhost", 1)}
	if other := testenv.OpenEtcd(t, cfg).(*etcd.Store); other.OneMember() {
		t.Fatalf("a client of %s, not the member's own URL %s, says it talks to the own member", cfg.Endpoints[0], srv.ClientURL())
	}
	ext := etcd.ClientConfig{Endpoints: cfg.Endpoints, TLS: cfg.TLS}
	if s := testenv.OpenEtcd(t, ext).(*etcd.Store); s.OneMember() {
		t.Fatal("a client of an external etcd's endpoint says it talks to one member")
	}
}
