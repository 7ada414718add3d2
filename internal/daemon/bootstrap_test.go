package daemon

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/taskd/taskd/internal/bootstrap"
	"github.com/taskd/taskd/internal/node"
)

// TestClusterFileFillsUnsetFlags: cluster.json (written by taskd join)
// fills the store flags nobody set, and never overrides the command line,
// the environment or the config file.
func TestClusterFileFillsUnsetFlags(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(bootstrap.ClusterPath(dir), []byte(`{"coordinator":"zks://z:2281/c","etcd_initial_cluster":"n1=https://a:1,n2=https://b:2","etcd_cluster_state":"existing"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TASKD_ETCD_CLUSTER_STATE", "new")
	cmd := newRootCmd()
	if err := cmd.ParseFlags([]string{"--data-dir", dir, "--etcd-initial-cluster", "n2=https://b:2"}); err != nil {
		t.Fatal(err)
	}
	if err := applyEnvAndFile(cmd.Flags(), ""); err != nil {
		t.Fatal(err)
	}
	if err := applyClusterFile(cmd.Flags(), dir); err != nil {
		t.Fatal(err)
	}
	get := func(n string) string { return cmd.Flags().Lookup(n).Value.String() }
	if get("coordinator") != "zks://z:2281/c" || get("etcd-initial-cluster") != "n2=https://b:2" || get("etcd-cluster-state") != "new" {
		t.Fatalf("coordinator=%s initial=%s state=%s", get("coordinator"), get("etcd-initial-cluster"), get("etcd-cluster-state"))
	}
	if err := os.WriteFile(bootstrap.ClusterPath(dir), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := applyClusterFile(newRootCmd().Flags(), dir); err == nil {
		t.Fatal("a corrupt cluster.json was accepted")
	}
	if err := applyClusterFile(newRootCmd().Flags(), filepath.Join(dir, "none")); err != nil {
		t.Fatalf("no cluster.json: %v", err)
	}
}

// TestJoinsOthers: a node whose etcd settings name other members must not
// make a cluster of its own.
func TestJoinsOthers(t *testing.T) {
	c := node.DefaultConfig()
	c.Name = "n1"
	for _, tc := range []struct {
		edit func(*node.Config)
		want bool
	}{
		{func(*node.Config) {}, false},
		{func(c *node.Config) { c.EtcdInitialCluster = "n1=https://a:1" }, false},
		{func(c *node.Config) { c.EtcdInitialCluster = "n1=https://a:1,n2=https://b:1" }, true},
		{func(c *node.Config) { c.EtcdClusterState = "existing" }, true},
		{func(c *node.Config) { c.Coordinator, c.EtcdClusterState = "zks://z:1", "existing" }, false},
	} {
		cc := c
		tc.edit(&cc)
		if got := joinsOthers(cc); got != tc.want {
			t.Errorf("%+v: joinsOthers = %v, want %v", cc, got, tc.want)
		}
	}
}
