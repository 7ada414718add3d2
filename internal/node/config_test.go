package node

import (
	"errors"
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
