package api

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1/taskdv1connect"
	"github.com/taskd/taskd/internal/pki"
)

// ClientConfig says how to reach a taskd node.
type ClientConfig struct {
	Endpoint string // https://host:port or host:port
	Token    string // taskd.ID.SECRET; sent only after the server is verified
	// CA is the cluster CA the server's certificate must chain to.
	CA *x509.CertPool
	// ExpectNode, when set, is the node the server's certificate must
	// name: set it when dialing a member whose address came from the
	// store, so that a forged member record never receives the token.
	ExpectNode string
	GRPC       bool // speak gRPC (HTTP/2) instead of the Connect protocol
}

// Client holds the service clients.
type Client struct {
	Cluster   taskdv1connect.ClusterServiceClient
	Tasks     taskdv1connect.TaskServiceClient
	Runners   taskdv1connect.RunnerServiceClient
	Events    taskdv1connect.EventServiceClient
	VIPs      taskdv1connect.VIPServiceClient
	Tokens    taskdv1connect.TokenServiceClient
	Schedules taskdv1connect.ScheduleServiceClient
	// HTTP is the verified transport, for the plain endpoints
	// (/metrics, /readyz).
	HTTP *http.Client
	// Base is the endpoint URL (https://host:port).
	Base string
}

// ErrPlaintext: an http:// endpoint; taskd serves only TLS.
var ErrPlaintext = errors.New("taskd serves only https: use https://host:port or host:port")

// NormalizeEndpoint adds https:// to a bare host:port and refuses any other
// scheme.
func NormalizeEndpoint(ep string) (string, error) {
	if !strings.Contains(ep, "://") {
		ep = "https://" + ep
	}
	if strings.HasPrefix(ep, "http://") {
		return "", fmt.Errorf("endpoint %q: %w", ep, ErrPlaintext)
	}
	if !strings.HasPrefix(ep, "https://") || len(ep) == len("https://") {
		return "", fmt.Errorf("endpoint %q: use https://host:port or host:port", ep)
	}
	return strings.TrimSuffix(ep, "/"), nil
}

// LoadCA reads a PEM file of CA certificates (public; no permission check).
func LoadCA(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", path)
	}
	return pool, nil
}

// NewClient builds clients for cfg.
func NewClient(cfg ClientConfig) (*Client, error) {
	base, err := NormalizeEndpoint(cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	if cfg.CA == nil {
		return nil, errors.New("no cluster CA to verify the server with (--tls-ca, or DATA_DIR/pki/ca.crt)")
	}
	hc := &http.Client{Transport: &http.Transport{
		TLSClientConfig:     pki.VerifyingClientTLS(cfg.CA, cfg.ExpectNode),
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: 10 * time.Second,
		IdleConnTimeout:     90 * time.Second,
		MaxIdleConnsPerHost: 16,
	}}
	opts := []connect.ClientOption{connect.WithInterceptors(bearerInterceptor{token: cfg.Token})}
	if cfg.GRPC {
		opts = append(opts, connect.WithGRPC())
	}
	return &Client{
		Cluster:   taskdv1connect.NewClusterServiceClient(hc, base, opts...),
		Tasks:     taskdv1connect.NewTaskServiceClient(hc, base, opts...),
		Runners:   taskdv1connect.NewRunnerServiceClient(hc, base, opts...),
		Events:    taskdv1connect.NewEventServiceClient(hc, base, opts...),
		VIPs:      taskdv1connect.NewVIPServiceClient(hc, base, opts...),
		Tokens:    taskdv1connect.NewTokenServiceClient(hc, base, opts...),
		Schedules: taskdv1connect.NewScheduleServiceClient(hc, base, opts...),
		HTTP:      hc,
		Base:      base,
	}, nil
}

// bearerInterceptor adds the token to every call, unary and streaming.
type bearerInterceptor struct{ token string }

func (b bearerInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if b.token != "" && req.Spec().IsClient {
			req.Header().Set("Authorization", "Bearer "+b.token)
		}
		return next(ctx, req)
	}
}

func (b bearerInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		if b.token != "" {
			conn.RequestHeader().Set("Authorization", "Bearer "+b.token)
		}
		return conn
	}
}

func (b bearerInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// DefaultTimeout bounds one CLI call.
const DefaultTimeout = 10 * time.Second
