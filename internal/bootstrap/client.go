package bootstrap

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/api/taskdv1/taskdv1connect"
	"github.com/taskd/taskd/internal/backoff"
	"github.com/taskd/taskd/internal/pki"
)

// JoinParams is what `taskd join` knows about itself and the cluster.
type JoinParams struct {
	DataDir string
	Server  string // a member's API address, host:port
	Token   pki.JoinToken
	Request Request // without CSR: Join makes the key and request
	Log     *slog.Logger
}

// Join admits this node to a cluster through p.Server and installs what it
// is given into p.DataDir. It does nothing if the directory already holds
// credentials. It retries while the member is unreachable or cannot admit
// yet, until ctx ends; a refusal (credential, name, the server's identity)
// ends it at once.
func Join(ctx context.Context, p JoinParams) error {
	if pki.Initialized(p.DataDir) {
		return nil
	}
	key, err := pki.NewKey()
	if err != nil {
		return err
	}
	req := p.Request
	if req.CSR, err = pki.NewCSR(key, req.Name); err != nil {
		return err
	}
	var found *x509.Certificate
	hc := &http.Client{Transport: &http.Transport{
		TLSClientConfig:     pki.PinnedClientTLS(p.Token.CAHash, &found),
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: 10 * time.Second,
	}}
	defer hc.CloseIdleConnections()
	cli := taskdv1connect.NewClusterServiceClient(hc, "https://"+p.Server)
	retry := backoff.New(250*time.Millisecond, 5*time.Second)
	for {
		resp, err := call(ctx, cli, p.Token.Credential, req)
		if err == nil {
			return install(p, key, resp)
		}
		if !IsRetryable(err) {
			return err
		}
		p.Log.Info("cannot join yet, retrying", "server", p.Server, "err", err, "retry_in", retry.Next())
		if werr := retry.Wait(ctx); werr != nil {
			return fmt.Errorf("%w: gave up: %w (last error: %w)", ErrUnavailable, werr, err)
		}
	}
}

func call(ctx context.Context, cli taskdv1connect.ClusterServiceClient, credential string, req Request) (*taskdv1.JoinResponse, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	r := connect.NewRequest(&taskdv1.JoinRequest{
		Name: req.Name, Csr: req.CSR, ApiAddress: req.APIAddress,
		EtcdPeerUrl: req.EtcdPeerURL, EtcdClientUrl: req.EtcdClientURL, Hosts: req.Hosts,
	})
	r.Header().Set("Authorization", "Bearer "+credential)
	resp, err := cli.Join(cctx, r)
	if err == nil {
		return resp.Msg, nil
	}
	if errors.Is(err, pki.ErrIdentity) {
		// The handshake failed on our side: the server is not of the
		// token's cluster. Nothing was sent.
		return nil, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	switch connect.CodeOf(err) {
	case connect.CodeUnauthenticated, connect.CodePermissionDenied:
		return nil, fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	case connect.CodeInvalidArgument:
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	case connect.CodeAlreadyExists, connect.CodeFailedPrecondition:
		return nil, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	// Unreachable, busy, or a server that broke the call: try again.
	return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// install checks the answer against the pin and our key, then writes
// cluster.json and the credentials (the node certificate last: its
// presence marks the directory as initialized).
func install(p JoinParams, key crypto.Signer, r *taskdv1.JoinResponse) error {
	ca, err := pki.ParseCA(r.CaCert, r.CaKey)
	if err != nil {
		return fmt.Errorf("%w: the server's CA: %w", ErrRefused, err)
	}
	if ca.Fingerprint() != p.Token.CAHash || ca.Key == nil {
		return fmt.Errorf("%w: the server sent a CA other than the join token's", ErrRefused)
	}
	blk, _ := pem.Decode(r.NodeCert)
	if blk == nil {
		return fmt.Errorf("%w: the server sent no certificate", ErrRefused)
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return fmt.Errorf("%w: the server's certificate: %w", ErrRefused, err)
	}
	if name, err := pki.VerifyPeer([]*x509.Certificate{cert}, ca.Pool(), p.Request.Name); err != nil || name != p.Request.Name {
		return fmt.Errorf("%w: the certificate the server signed is not for %s of this CA: %v", ErrRefused, p.Request.Name, err)
	}
	if !publicKeyMatches(key.Public(), cert.PublicKey) {
		return fmt.Errorf("%w: the certificate the server signed is for another key", ErrRefused)
	}
	secrets := pki.Secrets{EtcdRootPassword: r.EtcdRootPassword, ZKDigest: r.ZkDigest}
	if secrets.EtcdRootPassword == "" || secrets.ZKDigest == "" {
		return fmt.Errorf("%w: the server sent no store secrets", ErrRefused)
	}
	cf := ClusterFile{Coordinator: r.Coordinator, JoinedVia: p.Server, JoinedAt: time.Now().UTC()}
	if r.EtcdInitialCluster != "" {
		cf.EtcdInitialCluster, cf.EtcdClusterState = r.EtcdInitialCluster, "existing"
	}
	if err := writeClusterFile(p.DataDir, cf); err != nil {
		return err
	}
	keyPEM, err := pki.MarshalKey(key)
	if err != nil {
		return err
	}
	return pki.Install(p.DataDir, r.CaCert, r.CaKey, r.NodeCert, keyPEM, secrets)
}

func publicKeyMatches(a, b any) bool {
	ae, err1 := x509.MarshalPKIXPublicKey(a)
	be, err2 := x509.MarshalPKIXPublicKey(b)
	return err1 == nil && err2 == nil && bytes.Equal(ae, be)
}
