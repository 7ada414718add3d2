package api

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/internal/api/gen/taskdv1/taskdv1connect"
	"golang.org/x/net/http2"
)

// ClientConfig says how to reach a taskd node.
type ClientConfig struct {
	Endpoint string // http://host:port, https://host:port or host:port
	Token    string
	TLSCA    string // PEM file with the CA that signed the server certificate
	GRPC     bool   // speak gRPC (HTTP/2) instead of the Connect protocol
}

// Client holds the service clients.
type Client struct {
	Cluster   taskdv1connect.ClusterServiceClient
	Tasks     taskdv1connect.TaskServiceClient
	Runners   taskdv1connect.RunnerServiceClient
	Events    taskdv1connect.EventServiceClient
	VIPs      taskdv1connect.VIPServiceClient
	Schedules taskdv1connect.ScheduleServiceClient
}

// NormalizeEndpoint adds http:// to a bare host:port.
func NormalizeEndpoint(ep string) string {
	if !strings.Contains(ep, "://") {
		return "http://" + ep
	}
	return ep
}

// NewClient builds clients for cfg.
func NewClient(cfg ClientConfig) (*Client, error) {
	base := NormalizeEndpoint(cfg.Endpoint)
	var hc *http.Client
	switch {
	case strings.HasPrefix(base, "https://"):
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.TLSCA != "" {
			pem, err := os.ReadFile(cfg.TLSCA)
			if err != nil {
				return nil, fmt.Errorf("read CA file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("CA file %s holds no PEM certificate", cfg.TLSCA)
			}
			tc.RootCAs = pool
		}
		hc = &http.Client{Transport: &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true}}
	case strings.HasPrefix(base, "http://"):
		if cfg.GRPC {
			hc = &http.Client{Transport: &http2.Transport{
				AllowHTTP: true,
				DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, network, addr)
				},
			}}
		} else {
			hc = &http.Client{Transport: &http.Transport{}}
		}
	default:
		return nil, fmt.Errorf("endpoint %q: use http://host:port, https://host:port or host:port", cfg.Endpoint)
	}
	hc.Timeout = 0 // per-call deadlines come from contexts
	opts := []connect.ClientOption{connect.WithInterceptors(bearer(cfg.Token))}
	if cfg.GRPC {
		opts = append(opts, connect.WithGRPC())
	}
	return &Client{
		Cluster:   taskdv1connect.NewClusterServiceClient(hc, base, opts...),
		Tasks:     taskdv1connect.NewTaskServiceClient(hc, base, opts...),
		Runners:   taskdv1connect.NewRunnerServiceClient(hc, base, opts...),
		Events:    taskdv1connect.NewEventServiceClient(hc, base, opts...),
		VIPs:      taskdv1connect.NewVIPServiceClient(hc, base, opts...),
		Schedules: taskdv1connect.NewScheduleServiceClient(hc, base, opts...),
	}, nil
}

// bearer adds the token to every request.
func bearer(token string) connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			if token != "" && req.Spec().IsClient {
				req.Header().Set("Authorization", "Bearer "+token)
			}
			return next(ctx, req)
		}
	}
}

// ReadToken reads a token file, trimming white space. An empty file is an
// error: it would silently disable authentication.
func ReadToken(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	return tok, nil
}

// DefaultTimeout bounds one CLI call.
const DefaultTimeout = 10 * time.Second
