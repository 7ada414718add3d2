package node

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCopyConfinementFlags(t *testing.T) {
	good := DefaultConfig()
	good.Name = "n1"
	good.NBDSocketDirs = []string{"/run/nbd"}
	good.NBDAllowHosts = []string{"10.0.0.0/24", "nbd1.example", "fd00::5"}
	good.CopyMemoryLimit = "512M"
	if err := good.Validate(); err != nil {
		t.Fatalf("good copy flags refused: %v", err)
	}
	if limit, _ := good.copyMemoryLimit(); good.copyType().Memory.Limit() != limit || limit != 512<<20 {
		t.Fatalf("memory pool of %d bytes, want 512 MiB", good.copyType().Memory.Limit())
	}
	for name, mutate := range map[string]func(*Config){
		"--nbd-socket-dir":     func(c *Config) { c.NBDSocketDirs = []string{"run/nbd"} },
		"--nbd-allow-host":     func(c *Config) { c.NBDAllowHosts = []string{"10.0.0.0/33"} },
		"--copy-memory-limit":  func(c *Config) { c.CopyMemoryLimit = "10Q" },
		"--copy-memory-limit ": func(c *Config) { c.CopyMemoryLimit = "1K" },
	} {
		c := good
		mutate(&c)
		err := c.Validate()
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), strings.TrimSpace(name)) {
			t.Errorf("%s: err = %v, want a configuration error naming the flag", name, err)
		}
	}
}

// TestValidateStoreSettings: insecure store settings are configuration
// errors naming the setting; the secure ones pass.
func TestValidateStoreSettings(t *testing.T) {
	base := DefaultConfig()
	base.Name, base.DataDir = "n1", "/tmp/x"
	if err := base.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	bad := []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"plaintext client url", func(c *Config) { c.EtcdClientURL = "http://127.0.0.1:10601" }, "--etcd-client-url"},
		{"plaintext peer url", func(c *Config) { c.EtcdPeerURL = "http://10.0.0.1:10602" }, "--etcd-peer-url"},
		{"plaintext initial cluster", func(c *Config) { c.EtcdInitialCluster = "n1=https://10.0.0.1:2380,n2=http://10.0.0.2:2380" }, "n2=http://"},
		{"etcd:// off loopback", func(c *Config) {
			c.Coordinator, c.EtcdUser, c.EtcdPasswordFile = "etcd://10.0.0.1:2379", "u", "/f"
		}, "only allowed to loopback"},
		{"etcd:// without user", func(c *Config) { c.Coordinator = "etcd://127.0.0.1:2379" }, "needs --etcd-user"},
		{"user without password", func(c *Config) { c.Coordinator, c.EtcdUser = "etcds://e:2379", "u" }, "go together"},
		{"cert without key", func(c *Config) { c.Coordinator, c.EtcdCert = "etcds://e:2379", "/c" }, "go together"},
	}
	for _, b := range bad {
		c := base
		b.edit(&c)
		err := c.Validate()
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%s: %v, want ErrConfig mentioning %q", b.name, err, b.want)
		}
	}
	good := []func(*Config){
		func(c *Config) { c.Coordinator = "etcds://e1:2379,e2:2379" },
		func(c *Config) { c.Coordinator, c.EtcdUser, c.EtcdPasswordFile = "etcd://127.0.0.1:2379", "u", "/f" },
		func(c *Config) { c.Coordinator = "zks://z:2281/c" },
		func(c *Config) { c.Coordinator = "zk://z:2181" },
	}
	for i, g := range good {
		c := base
		g(&c)
		if err := c.Validate(); err != nil {
			t.Errorf("good %d: %v", i, err)
		}
	}
}

// TestStoreRootIsPassedOn: the store root is one setting of the node,
// validated, and the quorum gets that one (not its own default).
func TestStoreRootIsPassedOn(t *testing.T) {
	c := DefaultConfig()
	c.Name, c.DataDir = "n1", "/tmp/x"
	c.Root = "/other"
	if err := c.Validate(); err != nil {
		t.Fatalf("root /other refused: %v", err)
	}
	if got := c.quorumConfig("id").Root; got != "/other" {
		t.Fatalf("quorum root %q, want /other", got)
	}
	for _, bad := range []string{"", "taskd", "/a/../b", "/"} {
		c.Root = bad
		if err := c.Validate(); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "store root") {
			t.Errorf("root %q: err = %v, want a configuration error about the store root", bad, err)
		}
	}
}

// TestRootWarnings (issue 13): a --volume-root that does not exist is
// named at start (a warning, not an error: a mount may come later).
func TestRootWarnings(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "nosuch")
	c := Config{VolumeRoots: []string{dir, missing}, NBDSocketDirs: []string{file}}
	w := c.rootWarnings()
	if len(w) != 2 || !strings.Contains(w[0], "--volume-root "+missing) || !strings.Contains(w[0], "no such file") ||
		!strings.Contains(w[1], "--nbd-socket-dir "+file+" is not a directory") {
		t.Errorf("warnings %q", w)
	}
	if w := (Config{VolumeRoots: []string{dir}}).rootWarnings(); len(w) != 0 {
		t.Errorf("existing root: warnings %q", w)
	}
}
