package bootstrap

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"regexp"
	"time"

	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/pki"
)

// Request is what a joining node asks for.
type Request struct {
	Name          string
	CSR           []byte // PEM certificate request
	APIAddress    string // host:port
	EtcdPeerURL   string // embedded store only
	EtcdClientURL string // embedded store only
	Hosts         []string
}

// Response is what it gets.
type Response struct {
	CACert, CAKey, NodeCert []byte
	Secrets                 pki.Secrets
	Coordinator             string
	EtcdInitialCluster      string
}

// Cluster is what the admitting member offers the join server.
type Cluster interface {
	// Admit adds name's embedded etcd member at peerURL and its etcd
	// user, and returns the new member's initial-cluster string (see
	// etcd.Server.Admit). Only called on the embedded store.
	Admit(ctx context.Context, name, peerURL string) (string, error)
	// LiveMember reports whether a member called name is alive now.
	LiveMember(name string) bool
}

// Server answers join requests on a member.
type Server struct {
	Creds       *pki.Bundle
	Coordinator string // the cluster's --coordinator, as given to joiners
	Embedded    bool
	Cluster     Cluster
	Verifier    JoinVerifier
	Now         func() time.Time
	Log         *slog.Logger
}

// maxHosts bounds the names a joining node may put into its certificate.
const maxHosts = 16

// hostRE accepts DNS names; IP addresses are checked separately.
var hostRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$`)

// Join admits the node of req, authenticated by credential, whose request
// came from remoteAddr. It changes nothing unless the credential and the
// whole request are valid.
func (s *Server) Join(ctx context.Context, remoteAddr, credential string, req Request) (Response, error) {
	if err := s.Verifier.VerifyJoin(ctx, credential); err != nil {
		return Response{}, err
	}
	if s.Creds.CA.Key == nil {
		return Response{}, fmt.Errorf("%w: this member holds no CA key; join through another member", ErrUnavailable)
	}
	pub, hosts, err := s.check(remoteAddr, req)
	if err != nil {
		return Response{}, err
	}
	if s.Cluster.LiveMember(req.Name) {
		return Response{}, fmt.Errorf("%w: a live member is already called %q", ErrRefused, req.Name)
	}
	resp := Response{CACert: s.Creds.CA.PEM(), Secrets: s.Creds.Secrets, Coordinator: s.Coordinator}
	if resp.CAKey, err = s.Creds.CA.KeyPEM(); err != nil {
		return Response{}, err
	}
	// The certificate is signed before the member is added: a failure
	// here leaves the cluster untouched.
	if resp.NodeCert, err = s.Creds.CA.Issue(pub, req.Name, hosts, s.Now()); err != nil {
		return Response{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if s.Embedded {
		if resp.EtcdInitialCluster, err = s.Cluster.Admit(ctx, req.Name, req.EtcdPeerURL); err != nil {
			return Response{}, err
		}
	}
	s.Log.Info("admitted a node to the cluster", events.Join.Attr(), "joined", req.Name, "from", remoteAddr,
		"api_address", req.APIAddress, "etcd_peer_url", req.EtcdPeerURL)
	return resp, nil
}

// check validates the request and returns the key to certify and the
// certificate's hosts: the request's addresses plus the address the
// request came from.
func (s *Server) check(remoteAddr string, req Request) (any, []string, error) {
	if err := keys.ValidName(req.Name); err != nil {
		return nil, nil, fmt.Errorf("%w: node name: %w", ErrInvalid, err)
	}
	if _, _, err := net.SplitHostPort(req.APIAddress); err != nil {
		return nil, nil, fmt.Errorf("%w: API address %q: %w", ErrInvalid, req.APIAddress, err)
	}
	addrs := []string{req.APIAddress}
	if s.Embedded {
		for _, u := range []struct{ what, v string }{{"etcd peer URL", req.EtcdPeerURL}, {"etcd client URL", req.EtcdClientURL}} {
			pu, err := url.Parse(u.v)
			if err != nil || pu.Scheme != "https" || pu.Port() == "" || pu.Path != "" {
				return nil, nil, fmt.Errorf("%w: %s %q: want https://host:port", ErrInvalid, u.what, u.v)
			}
			addrs = append(addrs, u.v)
		}
	}
	if len(req.Hosts) > maxHosts {
		return nil, nil, fmt.Errorf("%w: %d extra hosts, at most %d", ErrInvalid, len(req.Hosts), maxHosts)
	}
	hosts := pki.HostsOf(addrs...)
	hosts = append(hosts, req.Hosts...)
	if h, _, err := net.SplitHostPort(remoteAddr); err == nil {
		hosts = append(hosts, h)
	}
	for _, h := range hosts {
		if net.ParseIP(h) == nil && (len(h) > 253 || !hostRE.MatchString(h)) {
			return nil, nil, fmt.Errorf("%w: %q is neither an IP address nor a host name", ErrInvalid, h)
		}
	}
	pub, err := pki.ParseCSR(req.CSR)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	// Only keys x509 can certify.
	if _, err := x509.MarshalPKIXPublicKey(pub); err != nil {
		return nil, nil, fmt.Errorf("%w: certificate request key: %w", ErrInvalid, err)
	}
	return pub, hosts, nil
}

// IsRetryable reports whether a join error may succeed later.
func IsRetryable(err error) bool { return errors.Is(err, ErrUnavailable) }
