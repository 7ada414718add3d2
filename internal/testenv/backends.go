package testenv

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/coord/etcd"
	"github.com/taskd/taskd/internal/coord/zk"
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

// Backends starts an embedded etcd and a one-server ZooKeeper for the test.
func Backends(t testing.TB) []Backend {
	srv := StartEtcd(t)
	ens := StartEnsemble(t, 1)
	return []Backend{
		{"etcd", strings.TrimPrefix(srv.ClientURL(), "http://"), func(t testing.TB, addr string) coord.Store {
			s, err := etcd.Open([]string{"http://" + addr}, slog.Default())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}},
		{"zk", ens.Addrs()[0], func(t testing.TB, addr string) coord.Store {
			s, err := zk.Open([]string{addr}, "", slog.Default())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}},
	}
}
