package testenv

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord/etcd"
)

// StartEtcd starts an embedded single-member etcd for the test on free
// loopback ports; cleanup stops it.
func StartEtcd(t testing.TB) *etcd.Server {
	t.Helper()
	ports := FreePorts(t, 2)
	cfg := etcd.DefaultServerConfig()
	cfg.Name, cfg.DataDir = "test", t.TempDir()
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
