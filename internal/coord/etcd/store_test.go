package etcd_test

import (
	"errors"
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

// TestLocalGet: a serializable read answers as Get does, and is offered
// only to a client of the process's own member (ClientConfig.Own): not to
// one with several endpoints, nor to one endpoint not marked as its own
// (an external etcd, perhaps behind a balancer).
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
	got, err := s.LocalGet(ctx, "/taskd/local/a")
	if err != nil || string(got.Value) != "v2" || got.Version != put.Version {
		t.Fatalf("local get after the update: %+v, %v; want v2 at version %d", got, err, put.Version)
	}
	if _, err := s.LocalGet(ctx, "/taskd/local/none"); !errors.Is(err, coord.ErrNotFound) {
		t.Fatalf("local get of an absent key: %v; want ErrNotFound", err)
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
	cfg.Own = false
	if ext := testenv.OpenEtcd(t, cfg).(*etcd.Store); ext.OneMember() {
		t.Fatal("a client of an external etcd's endpoint says it talks to one member")
	}
}
