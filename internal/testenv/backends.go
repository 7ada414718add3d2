package testenv

import (
	"net/url"
	"testing"

	"github.com/taskd/taskd/internal/coord"
)

// Backend is a real coordination-store server started for a test.
type Backend struct {
	Name string // "etcd" or "zk"
	Addr string // the server's client address, host:port
	// Dial opens a client through addr: the server's, or a proxy's in
	// front of it. Cleanup closes it.
	Dial func(t testing.TB, addr string) coord.Store
}

// Open opens a client straight to the server.
func (b Backend) Open(t testing.TB) coord.Store { return b.Dial(t, b.Addr) }

// Backends starts an embedded etcd and a one-server ZooKeeper for the test,
// both secured as taskd runs them; clients authenticate as a taskd node.
func Backends(t testing.TB) []Backend {
	srv := StartEtcd(t)
	ens := StartEnsemble(t, 1)
	u, err := url.Parse(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	return []Backend{
		{"etcd", u.Host, func(t testing.TB, addr string) coord.Store {
			cfg := srv.ClientConfig()
			cfg.Endpoints = []string{"https://" + addr}
			return OpenEtcd(t, cfg)
		}},
		{"zk", ens.Addrs()[0], func(t testing.TB, addr string) coord.Store {
			return OpenZKWith(t, ZKConfig(t, ens, []string{addr}, ""))
		}},
	}
}
