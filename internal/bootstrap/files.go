package bootstrap

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/taskd/taskd/internal/pki"
)

// JoinTokenPath is where `taskd init` writes the first join token.
func JoinTokenPath(dataDir string) string { return filepath.Join(dataDir, "join.token") }

// ClusterPath is where a joined node keeps the store settings it was given.
func ClusterPath(dataDir string) string { return filepath.Join(dataDir, "cluster.json") }

// ClusterFile is DATA_DIR/cluster.json: the settings a node was given when
// it joined. They apply to its first start; flags, the environment and the
// config file take precedence (the daemon decides).
type ClusterFile struct {
	Coordinator        string    `json:"coordinator"`
	EtcdInitialCluster string    `json:"etcd_initial_cluster,omitempty"`
	EtcdClusterState   string    `json:"etcd_cluster_state,omitempty"`
	JoinedVia          string    `json:"joined_via"`
	JoinedAt           time.Time `json:"joined_at"`
}

// ReadClusterFile reads DATA_DIR/cluster.json; ok is false without one.
func ReadClusterFile(dataDir string) (ClusterFile, bool, error) {
	var cf ClusterFile
	b, err := os.ReadFile(ClusterPath(dataDir))
	if errors.Is(err, os.ErrNotExist) {
		return cf, false, nil
	}
	if err != nil {
		return cf, false, fmt.Errorf("read %s: %w", ClusterPath(dataDir), err)
	}
	if err := json.Unmarshal(b, &cf); err != nil {
		return cf, false, fmt.Errorf("%s: %w", ClusterPath(dataDir), err)
	}
	return cf, true, nil
}

func writeClusterFile(dataDir string, cf ClusterFile) error {
	b, err := json.MarshalIndent(cf, "", "  ")
	if err != nil {
		return err
	}
	return pki.WritePrivate(ClusterPath(dataDir), append(b, '\n'))
}

// ReadJoinToken reads a join token from a file (checked like every
// credential file: not readable by others) or, when file is "", from the
// value of $TASKD_JOIN_TOKEN passed as env.
func ReadJoinToken(file, env string) (pki.JoinToken, error) {
	text := env
	if file != "" {
		b, err := pki.ReadPrivate(file)
		if err != nil {
			return pki.JoinToken{}, err
		}
		text = string(b)
	}
	if strings.TrimSpace(text) == "" {
		return pki.JoinToken{}, errors.New("no join token: pass --token-file FILE or set TASKD_JOIN_TOKEN")
	}
	return pki.ParseJoinToken(text)
}
