package testenv

import (
	"errors"
	"log/slog"
	"testing"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/coord/zk"
	"github.com/taskd/taskd/internal/harness"
)

// StartEnsemble starts n ZooKeeper servers for the test (TLS only, client
// certificates of the ensemble's PKI required); cleanup kills them.
func StartEnsemble(t testing.TB, n int) *harness.Ensemble {
	t.Helper()
	e, err := harness.StartEnsemble(t.TempDir(), n, nil)
	if errors.Is(err, harness.ErrNoZooKeeper) {
		Missing(t, "%v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

// ZKConfig is how a taskd node of the ensemble's PKI reaches servers
// under chroot: TLS with a client certificate, and the digest credential.
func ZKConfig(t testing.TB, e *harness.Ensemble, servers []string, chroot string) zk.Config {
	t.Helper()
	b, err := e.PKI.Bundle("zk-client")
	if err != nil {
		t.Fatal(err)
	}
	return zk.Config{Servers: servers, Chroot: chroot, Digest: e.PKI.Secrets.ZKDigest, TLS: e.PKI.ClientTLS(b)}
}

// OpenZK opens a client of the ensemble under chroot; cleanup closes it.
func OpenZK(t testing.TB, e *harness.Ensemble, chroot string) coord.Store {
	t.Helper()
	return OpenZKWith(t, ZKConfig(t, e, e.Addrs(), chroot))
}

// OpenZKWith opens a client with cfg; cleanup closes it.
func OpenZKWith(t testing.TB, cfg zk.Config) coord.Store {
	t.Helper()
	s, err := zk.Open(cfg, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
