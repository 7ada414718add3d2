package etcd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/taskd/taskd/internal/pki"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
)

// ErrConfig marks a server configuration that cannot be started, such as a
// plaintext URL.
var ErrConfig = errors.New("embedded etcd: bad configuration")

// ServerConfig configures the etcd server embedded in taskd.
//
// Both listeners speak TLS only and require a client certificate signed by
// the cluster CA; the server presents the node certificate. With the root
// password in Creds.Secrets, the member sets up etcd auth when it starts
// (see ensureAuth), so that a certificate alone is not enough to touch
// anything outside what its user's role allows.
type ServerConfig struct {
	Name           string // member name, normally the taskd node name
	DataDir        string // the server's own directory
	ClientURL      string // e.g. https://127.0.0.1:10601
	PeerURL        string // e.g. https://127.0.0.1:10602
	InitialCluster string // name=peerURL,...; empty: a single-member cluster
	ClusterState   string // "new" or "existing"
	LogLevel       string // etcd's zap level: debug, info, warn, error
	Log            *slog.Logger
	// Creds are the node's credentials: CA, certificate and key files
	// (etcd's transport reads files), the client TLS for the member's own
	// clients, and the root password.
	Creds *pki.Bundle
}

// DefaultServerConfig returns a single-member configuration on loopback.
func DefaultServerConfig() ServerConfig {
	return ServerConfig{
		ClientURL:    "https://127.0.0.1:10601",
		PeerURL:      "https://127.0.0.1:10602",
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
	if c.Creds == nil {
		return fmt.Errorf("%w: no node credentials (DATA_DIR/pki)", ErrConfig)
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
				return fmt.Errorf("embedded etcd initial cluster entry %q: want name=https://host:port", m)
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

// parseURL accepts https:// only: client and peer traffic carry the whole
// store (and raft), so neither may travel in clear, on loopback neither.
func parseURL(s string) (url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return url.URL{}, fmt.Errorf("%w: %q: %w", ErrConfig, s, err)
	}
	if u.Scheme == "http" {
		return url.URL{}, fmt.Errorf("%w: %q: plaintext http:// is refused; use https://%s (TLS with client certificates of the cluster CA)", ErrConfig, s, u.Host)
	}
	if u.Scheme != "https" || u.Host == "" {
		return url.URL{}, fmt.Errorf("%w: %q: want https://host:port", ErrConfig, s)
	}
	return *u, nil
}

// Server is a running embedded etcd member.
type Server struct {
	e         *embed.Etcd
	cfg       ServerConfig
	closing   *atomic.Bool
	closeOnce sync.Once
	admitMu   sync.Mutex // see Admit
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
	// Mutual TLS on both listeners. etcd also checks that a peer's (and
	// a client's) certificate names the address it connects from, so
	// node certificates carry every address the node uses.
	tlsInfo := transport.TLSInfo{
		CertFile:       c.Creds.Paths.NodeCert(),
		KeyFile:        c.Creds.Paths.NodeKey(),
		TrustedCAFile:  c.Creds.Paths.CACert(),
		ClientCertAuth: true,
		MinVersion:     tlsMinVersion,
	}
	cfg.ClientTLSInfo, cfg.PeerTLSInfo = tlsInfo, tlsInfo
	log := c.Log
	if log == nil {
		log = slog.Default()
	}
	closing := new(atomic.Bool)
	zl, err := newZapLogger(log, c.LogLevel, closing)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd log level %q: %w", c.LogLevel, err)
	}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zl)
	cfg.AutoCompactionMode = "periodic"
	cfg.AutoCompactionRetention = "1h"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd %s in %s: %w", c.Name, c.DataDir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
		s := &Server{e: e, cfg: c, closing: closing}
		if err := s.promoteSelf(ctx, log); err != nil {
			s.Close()
			return nil, err
		}
		if c.Creds.Secrets.EtcdRootPassword == "" {
			return s, nil
		}
		if err := s.ensureAuth(ctx, log); err != nil {
			s.Close()
			if ctx.Err() != nil {
				return nil, fmt.Errorf("embedded etcd %s: auth set-up interrupted: %w", c.Name, err)
			}
			return nil, err
		}
		return s, nil
	case err := <-e.Err():
		closing.Store(true)
		e.Close()
		return nil, fmt.Errorf("embedded etcd %s failed while starting: %w", c.Name, err)
	case <-ctx.Done():
		closing.Store(true)
		e.Close()
		return nil, fmt.Errorf("embedded etcd %s not ready (is a quorum of the initial cluster running?): %w", c.Name, ctx.Err())
	}
}

// ClientURL is where the member serves clients.
func (s *Server) ClientURL() string { return s.cfg.ClientURL }

// PeerURL is where the member serves its peers.
func (s *Server) PeerURL() string { return s.cfg.PeerURL }

// ClientConfig reaches this member as its node: the node certificate,
// which etcd maps to the node's user.
func (s *Server) ClientConfig() ClientConfig {
	return ClientConfig{Endpoints: []string{s.cfg.ClientURL}, TLS: s.cfg.Creds.ClientTLS("")}
}

// Err reports a fatal server error.
func (s *Server) Err() <-chan error { return s.e.Err() }

// IsLeader reports whether this member leads the raft group.
func (s *Server) IsLeader() bool { return s.e.Server.Leader() == s.e.Server.MemberID() }

// Close stops the member; etcd hands raft leadership to a peer first. A
// second Close does nothing (etcd's own panics).
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		s.closing.Store(true)
		s.e.Close()
	})
}

// KeepRaftLeadershipAway hands raft leadership to another voting member
// whenever this member holds it, until ctx ends.
//
// Why: when an etcd raft leader dies, the new raft leader renews every lease
// for a full TTL. If the taskd leader's node also led raft, its death would
// delay taskd failover by the election time on top of the session timeout.
// With raft led elsewhere, a dead taskd leader's lease expires on time.
//
// fit, when not nil, names the members that may take the raft leadership
// (live and not starved of CPU): a starved member as raft leader stalls the
// whole store (issue 20). When none of them takes it, the longest-connected
// peer does, as before.
func (s *Server) KeepRaftLeadershipAway(ctx context.Context, log *slog.Logger, fit func(name string) bool) {
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	for {
		changed := s.e.Server.LeaderChangedNotify()
		// A transfer started as the role ends would race the session's
		// revoke: raft drops proposals while leadership moves.
		if ctx.Err() != nil {
			return
		}
		if s.IsLeader() {
			if err := s.transferRaftLeadershipTo(ctx, fit); err != nil {
				log.Debug("cannot move etcd raft leadership off the taskd leader yet", "err", err)
				retry.Reset(5 * time.Second)
			} else {
				log.Info("moved etcd raft leadership off the taskd leader", "to", s.e.Server.Leader().String())
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-retry.C:
		}
	}
}

// MoveRaftLeadershipOff moves raft leadership off this member, if it has
// it, to a member fit accepts (else the longest-connected peer). A member
// starved of CPU calls it: as raft leader it would stall the store.
func (s *Server) MoveRaftLeadershipOff(ctx context.Context, fit func(name string) bool) error {
	if !s.IsLeader() {
		return nil
	}
	return s.transferRaftLeadershipTo(ctx, fit)
}

// transferRaftLeadershipTo moves raft leadership to a voting member that
// fit accepts, else to the longest-connected peer.
func (s *Server) transferRaftLeadershipTo(ctx context.Context, fit func(string) bool) error {
	if fit != nil {
		self := s.e.Server.MemberID()
		for _, m := range s.e.Server.Cluster().Members() {
			if m.ID == self || m.IsLearner || m.Name == "" || !fit(m.Name) {
				continue
			}
			tctx, cancel := context.WithTimeout(ctx, s.e.Server.Cfg.ReqTimeout())
			err := s.e.Server.MoveLeader(tctx, uint64(self), uint64(m.ID))
			cancel()
			if err == nil && !s.IsLeader() {
				return nil
			}
		}
	}
	return s.transferRaftLeadership()
}

// transferRaftLeadership moves raft leadership to the peer that has been
// connected longest. A transfer to a dead peer would stall raft, dropping
// every proposal until the transfer times out (an election timeout), so
// only connected peers are candidates; etcd's shutdown transfer picks
// exactly that way, and despite its name it only moves the leadership.
func (s *Server) transferRaftLeadership() error {
	if err := s.e.Server.TryTransferLeadershipOnShutdown(); err != nil {
		return fmt.Errorf("move raft leadership: %w", err)
	}
	if s.IsLeader() {
		return errors.New("still raft leader (no other connected voting member)")
	}
	return nil
}
