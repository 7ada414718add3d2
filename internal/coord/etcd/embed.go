package etcd

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"

	"go.etcd.io/etcd/server/v3/embed"
)

// ServerConfig configures the etcd server embedded in taskd.
type ServerConfig struct {
	Name           string // member name, normally the taskd node name
	DataDir        string // the server's own directory
	ClientURL      string // e.g. http://127.0.0.1:10601
	PeerURL        string // e.g. http://127.0.0.1:10602
	InitialCluster string // name=peerURL,...; empty: a single-member cluster
	ClusterState   string // "new" or "existing"
	LogLevel       string // etcd's zap level: debug, info, warn, error
}

// DefaultServerConfig returns a single-member configuration on loopback.
func DefaultServerConfig() ServerConfig {
	return ServerConfig{
		ClientURL:    "http://127.0.0.1:10601",
		PeerURL:      "http://127.0.0.1:10602",
		ClusterState: embed.ClusterStateFlagNew,
		LogLevel:     "error",
	}
}

// Validate checks the configuration without touching the disk.
func (c ServerConfig) Validate() error {
	if c.Name == "" {
		return errors.New("embedded etcd: member name is empty")
	}
	if c.DataDir == "" {
		return errors.New("embedded etcd: data directory is empty")
	}
	for _, u := range []struct{ flag, v string }{{"client URL", c.ClientURL}, {"peer URL", c.PeerURL}} {
		if _, err := parseURL(u.v); err != nil {
			return fmt.Errorf("embedded etcd %s: %w", u.flag, err)
		}
	}
	if c.ClusterState != embed.ClusterStateFlagNew && c.ClusterState != embed.ClusterStateFlagExisting {
		return fmt.Errorf("embedded etcd cluster state %q: want %q or %q", c.ClusterState, embed.ClusterStateFlagNew, embed.ClusterStateFlagExisting)
	}
	if c.InitialCluster != "" {
		found := false
		for _, m := range strings.Split(c.InitialCluster, ",") {
			name, u, ok := strings.Cut(m, "=")
			if !ok || name == "" {
				return fmt.Errorf("embedded etcd initial cluster entry %q: want name=http://host:port", m)
			}
			if _, err := parseURL(u); err != nil {
				return fmt.Errorf("embedded etcd initial cluster entry %q: %w", m, err)
			}
			found = found || name == c.Name
		}
		if !found {
			return fmt.Errorf("embedded etcd initial cluster %q does not name this member %q", c.InitialCluster, c.Name)
		}
	}
	return nil
}

func parseURL(s string) (url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return url.URL{}, fmt.Errorf("%q: %w", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return url.URL{}, fmt.Errorf("%q: want http://host:port", s)
	}
	return *u, nil
}

// Server is a running embedded etcd member.
type Server struct {
	e   *embed.Etcd
	cfg ServerConfig
}

// StartServer starts the member and waits until it serves (a multi-member
// cluster serves once a quorum of members has started) or ctx ends.
func StartServer(ctx context.Context, c ServerConfig) (*Server, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	cu, _ := parseURL(c.ClientURL)
	pu, _ := parseURL(c.PeerURL)
	cfg := embed.NewConfig()
	cfg.Name = c.Name
	cfg.Dir = filepath.Clean(c.DataDir)
	cfg.ListenClientUrls = []url.URL{cu}
	cfg.AdvertiseClientUrls = []url.URL{cu}
	cfg.ListenPeerUrls = []url.URL{pu}
	cfg.AdvertisePeerUrls = []url.URL{pu}
	cfg.InitialCluster = c.InitialCluster
	if cfg.InitialCluster == "" {
		cfg.InitialCluster = c.Name + "=" + c.PeerURL
	}
	cfg.ClusterState = c.ClusterState
	cfg.InitialClusterToken = "taskd"
	cfg.LogLevel = c.LogLevel
	cfg.LogOutputs = []string{"stderr"}
	cfg.AutoCompactionMode = "periodic"
	cfg.AutoCompactionRetention = "1h"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd %s in %s: %w", c.Name, c.DataDir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return &Server{e: e, cfg: c}, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd %s failed while starting: %w", c.Name, err)
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("embedded etcd %s not ready (is a quorum of the initial cluster running?): %w", c.Name, ctx.Err())
	}
}

// ClientURL is where the member serves clients.
func (s *Server) ClientURL() string { return s.cfg.ClientURL }

// Err reports a fatal server error.
func (s *Server) Err() <-chan error { return s.e.Err() }

// IsLeader reports whether this member leads the raft group.
func (s *Server) IsLeader() bool { return s.e.Server.Leader() == s.e.Server.MemberID() }

// Close stops the member; etcd hands raft leadership to a peer first.
func (s *Server) Close() { s.e.Close() }
