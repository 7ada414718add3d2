package etcd_test

import (
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
