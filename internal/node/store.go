package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/bootstrap"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/coord/etcd"
	"github.com/taskd/taskd/internal/coord/zk"
	"github.com/taskd/taskd/internal/pki"
)

// loadCreds reads the node's credentials (DATA_DIR/pki) and checks that
// they name this node.
func loadCreds(cfg Config) (*pki.Bundle, error) {
	b, err := pki.Load(cfg.DataDir)
	if errors.Is(err, pki.ErrNotInitialized) {
		return nil, fmt.Errorf("%w: %w: run `taskd init` (new cluster) or `taskd join` (existing cluster) first", ErrConfig, err)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if b.Name != cfg.Name {
		return nil, fmt.Errorf("%w: the certificate in %s is for node %q, not --name %q", ErrConfig, b.Paths.Dir, b.Name, cfg.Name)
	}
	return b, nil
}

// startEmbedded starts this node's etcd member; the caller closes it.
func (n *Node) startEmbedded(ctx context.Context) (*etcd.Server, error) {
	sc := etcd.ServerConfig{
		Name: n.cfg.Name, DataDir: filepath.Join(n.cfg.DataDir, "etcd"), ClientURL: n.cfg.EtcdClientURL,
		PeerURL: n.cfg.EtcdPeerURL, InitialCluster: n.cfg.EtcdInitialCluster, ClusterState: n.cfg.EtcdClusterState,
		LogLevel: n.cfg.EtcdLogLevel, Log: n.log, Creds: n.creds,
	}
	n.setWaiting("waiting for the embedded etcd member to serve (a multi-node cluster needs a quorum of its members running)")
	srv, err := etcd.StartServer(ctx, sc)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("%w: embedded etcd: %w", ErrAddrInUse, err)
		}
		if errors.Is(err, etcd.ErrConfig) || errors.Is(err, etcd.ErrAuth) {
			return nil, fmt.Errorf("%w: %w", ErrConfig, err)
		}
		return nil, fmt.Errorf("%w: %w", ErrCoordinatorFailed, err)
	}
	return srv, nil
}

// openExternal opens an external etcd or ZooKeeper store with the node's
// credentials.
func (n *Node) openExternal(ctx context.Context) (coord.Store, error) {
	switch n.target.Kind {
	case coord.KindEtcd:
		cc, err := n.cfg.etcdClientConfig(n.target, n.creds)
		if err != nil {
			return nil, err
		}
		n.setWaiting("connecting to etcd")
		s, err := etcd.Open(ctx, cc, n.log)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrConfig, err)
		}
		return s, nil
	case coord.KindZK:
		zc := zk.Config{Servers: n.target.Endpoints, Chroot: n.target.Chroot, Digest: n.creds.Secrets.ZKDigest}
		if n.target.TLS {
			pool, err := caPool(n.cfg.ZKCA, n.creds)
			if err != nil {
				return nil, fmt.Errorf("%w: --zk-ca: %w", ErrConfig, err)
			}
			zc.TLS = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, Certificates: []tls.Certificate{n.creds.Cert}}
		}
		s, err := zk.Open(zc, n.log)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrConfig, err)
		}
		// Refuse a tree anybody could have written (an unauthenticated
		// taskd's, or somebody else's): retried while the ensemble is
		// unreachable, fatal once it answers.
		n.setWaiting("checking the ACLs of the ZooKeeper root znodes")
		retry := time.NewTimer(0)
		defer retry.Stop()
		for {
			select {
			case <-ctx.Done():
				s.Close()
				return nil, ctx.Err()
			case <-retry.C:
			}
			err := s.CheckOwned(ctx, n.cfg.Root)
			if err == nil {
				return s, nil
			}
			if !errors.Is(err, coord.ErrUnavailable) {
				s.Close()
				return nil, fmt.Errorf("%w: %w", ErrConfig, err)
			}
			n.log.Warn("cannot check the ZooKeeper root znodes yet", "err", err)
			retry.Reset(time.Second)
		}
	}
	return nil, fmt.Errorf("%w: unknown coordinator kind %q", ErrConfig, n.target.Kind)
}

// etcdClientConfig is the client side of an external etcd: https with the
// CA and client certificate (by default the cluster's), or plaintext to
// loopback with a password.
func (c Config) etcdClientConfig(t coord.Target, creds *pki.Bundle) (etcd.ClientConfig, error) {
	cc := etcd.ClientConfig{Username: c.EtcdUser}
	scheme := "http://"
	if t.TLS {
		scheme = "https://"
		pool, err := caPool(c.EtcdCA, creds)
		if err != nil {
			return cc, fmt.Errorf("%w: --etcd-ca: %w", ErrConfig, err)
		}
		cert := creds.Cert
		if c.EtcdCert != "" {
			if cert, err = loadKeyPair(c.EtcdCert, c.EtcdKey); err != nil {
				return cc, fmt.Errorf("%w: --etcd-cert/--etcd-key: %w", ErrConfig, err)
			}
		}
		cc.TLS = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, Certificates: []tls.Certificate{cert}}
	}
	for _, e := range t.Endpoints {
		cc.Endpoints = append(cc.Endpoints, scheme+e)
	}
	if c.EtcdPasswordFile != "" {
		b, err := pki.ReadPrivate(c.EtcdPasswordFile)
		if err != nil {
			return cc, fmt.Errorf("%w: --etcd-password-file: %w", ErrConfig, err)
		}
		if cc.Password = strings.TrimSpace(string(b)); cc.Password == "" {
			return cc, fmt.Errorf("%w: --etcd-password-file %s is empty", ErrConfig, c.EtcdPasswordFile)
		}
	}
	if err := cc.Validate(); err != nil {
		return cc, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return cc, nil
}

// caPool reads a CA file, or takes the cluster CA when file is "".
func caPool(file string, creds *pki.Bundle) (*x509.CertPool, error) {
	if file == "" {
		return creds.CA.Pool(), nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}

func loadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyPEM, err := pki.ReadPrivate(keyFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(certPEM, keyPEM)
}

// joinCluster is what the join server needs from the node.
type joinCluster struct{ n *Node }

// Admit implements bootstrap.Cluster.
func (j joinCluster) Admit(ctx context.Context, name, peerURL string) (string, error) {
	srv := j.n.etcdSrv.Load()
	if srv == nil {
		return "", fmt.Errorf("%w: the embedded etcd member is not running yet", bootstrap.ErrUnavailable)
	}
	ic, err := srv.Admit(ctx, name, peerURL)
	switch {
	case err == nil:
		return ic, nil
	case errors.Is(err, etcd.ErrAdmit):
		return "", fmt.Errorf("%w: %w", bootstrap.ErrRefused, err)
	}
	return "", fmt.Errorf("%w: %w", bootstrap.ErrUnavailable, err)
}

// LiveMember implements bootstrap.Cluster.
func (j joinCluster) LiveMember(name string) bool {
	for _, m := range j.n.View().Members {
		if m.Name == name {
			return true
		}
	}
	return false
}

// registerJoinToken stores the record of the join token `taskd init` wrote
// into this data directory, once: DATA_DIR/join.token.registered marks it
// done, so a token revoked later is not brought back by a restart.
func (n *Node) registerJoinToken(ctx context.Context, store coord.Store) {
	path := bootstrap.JoinTokenPath(n.cfg.DataDir)
	done := path + ".registered"
	if _, err := os.Stat(done); err == nil {
		return
	}
	jt, err := bootstrap.ReadJoinToken(path, "")
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	var tok auth.Token
	if err == nil {
		tok, err = auth.ParseToken(jt.Credential)
	}
	if err == nil {
		// Bounded: an unreachable store must not hold up the quorum.
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err = auth.Register(rctx, store, n.cfg.Root, tok, auth.CreateRequest{Role: auth.Join,
			CreatedBy: "node " + n.cfg.Name, Description: "first join token, written by taskd init"}, n.clock.Now())
		cancel()
	}
	if err == nil {
		err = os.WriteFile(done, nil, 0o600)
	}
	if err != nil {
		n.log.Warn("cannot register the join token of taskd init; joins with it will be refused", "err", err)
	}
}
