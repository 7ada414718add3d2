package node

import (
	"errors"
	"fmt"
	"time"

	"github.com/taskd/taskd/internal/pki"
)

// loadCredentials returns the node's certificate bundle from
// DATA_DIR/pki. A data directory without credentials gets those of a new
// one-node cluster, so that `taskd --data-dir D` (make run) stays one
// command. (Bootstrap by `taskd init` / `taskd join` replaces this body.)
func loadCredentials(cfg Config) (*pki.Bundle, error) {
	if !pki.Initialized(cfg.DataDir) {
		hosts := pki.HostsOf(cfg.Listen, cfg.Advertise, cfg.EtcdClientURL, cfg.EtcdPeerURL)
		if _, err := pki.Create(cfg.DataDir, cfg.Name, hosts, time.Now()); err != nil {
			return nil, fmt.Errorf("%w: create cluster credentials: %w", ErrDataDir, err)
		}
	}
	b, err := pki.Load(cfg.DataDir)
	if err != nil {
		if errors.Is(err, pki.ErrInsecureFile) {
			return nil, fmt.Errorf("%w: %w", ErrConfig, err)
		}
		return nil, fmt.Errorf("%w: %w", ErrDataDir, err)
	}
	if b.Name != cfg.Name {
		return nil, fmt.Errorf("%w: the certificate in %s names node %q, but --name is %q", ErrConfig, b.Paths.Dir, b.Name, cfg.Name)
	}
	return b, nil
}
