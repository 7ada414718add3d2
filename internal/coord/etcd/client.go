package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/taskd/taskd/internal/backoff"
)

// ErrInsecure: a client configuration that would reach etcd without
// encryption off the host, or without credentials.
var ErrInsecure = errors.New("etcd: insecure client configuration")

// ClientConfig says how to reach an etcd cluster and who to be there.
//
// Daily traffic to the embedded etcd authenticates with the node's
// certificate (etcd maps its common name to a user). User and Password are
// for an external etcd run with password auth, and for the embedded root
// user, which only membership changes and the auth set-up use.
type ClientConfig struct {
	Endpoints []string // https://host:port (http:// only on loopback)
	// TLS is the client side of the connection: the CA to verify the
	// servers against and the certificate to present. nil: plaintext.
	TLS      *tls.Config
	Username string
	Password string
}

// Validate refuses plaintext off loopback and plaintext without a
// password, so that neither the data nor a password crosses a network in
// clear and nobody reaches etcd without credentials.
func (c ClientConfig) Validate() error {
	if len(c.Endpoints) == 0 {
		return errors.New("etcd: no endpoints")
	}
	if (c.Username == "") != (c.Password == "") {
		return fmt.Errorf("%w: a user needs a password and a password a user", ErrInsecure)
	}
	for _, ep := range c.Endpoints {
		u, err := url.Parse(ep)
		if err != nil || u.Host == "" {
			return fmt.Errorf("etcd endpoint %q: want https://host:port", ep)
		}
		switch u.Scheme {
		case "https":
			if c.TLS == nil {
				return fmt.Errorf("%w: endpoint %s is https but no TLS settings were given", ErrInsecure, ep)
			}
		case "http":
			if !isLoopbackHost(u.Hostname()) {
				return fmt.Errorf("%w: endpoint %s: plaintext is only allowed to a loopback address; use https (etcds://)", ErrInsecure, ep)
			}
			if c.Username == "" {
				return fmt.Errorf("%w: endpoint %s: plaintext needs a user and password (--etcd-user, --etcd-password-file)", ErrInsecure, ep)
			}
		default:
			return fmt.Errorf("etcd endpoint %q: want https://host:port", ep)
		}
	}
	if c.TLS == nil && c.Username == "" {
		return fmt.Errorf("%w: no client certificate and no user: etcd would be reached without credentials", ErrInsecure)
	}
	return nil
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// ErrAuth: etcd refused the user name or password.
var ErrAuth = errors.New("etcd: authentication failed")

// Open connects to the endpoints. Without a user it does not wait for the
// cluster to answer: operations fail with coord.ErrUnavailable until it
// does. With a user it must authenticate first, which needs an answer: it
// retries until ctx ends, and fails at once (ErrAuth) if etcd refuses the
// password.
//
// Each attempt's time to connect and log in doubles after a failure, from
// 2 s up to 32 s, and the waits between attempts are jittered. etcd checks
// a password with bcrypt, which costs tens of milliseconds of its CPU: when
// many nodes start against one busy etcd, a fixed short timeout would give
// up on every login the server is still working on and ask again, and the
// retries alone would keep it too busy to answer anyone.
func Open(ctx context.Context, c ClientConfig, log *slog.Logger) (*Store, error) {
	b := backoff.New(50*time.Millisecond, 2*time.Second, backoff.WithJitter())
	for attempt := 0; ; attempt++ {
		cli, err := loginOnce(ctx, c, loginTimeout(attempt))
		if err == nil {
			return &Store{cli: cli, log: log, ka: &keepAlive{cli: cli}}, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w: %w", err, ctx.Err())
		}
		if errors.Is(err, ErrAuth) || errors.Is(err, ErrInsecure) || c.Username == "" {
			return nil, err
		}
		log.Debug("etcd not answering yet", "endpoints", c.Endpoints, "attempt", attempt+1, "err", err)
		if b.Wait(ctx) != nil {
			return nil, fmt.Errorf("%w: %w", err, ctx.Err())
		}
	}
}

// loginOnce is one attempt of Open. ctx ending cuts the attempt short (a
// stop during start-up does not wait out a long login), but once the
// client is logged in it no longer depends on ctx.
func loginOnce(ctx context.Context, c ClientConfig, timeout time.Duration) (*clientv3.Client, error) {
	base, cancel := context.WithCancel(context.WithoutCancel(ctx))
	detach := context.AfterFunc(ctx, cancel)
	cli, err := newClient(c, timeout, base)
	if !detach() && err == nil { // ctx ended while logging in
		cli.Close()
		err = fmt.Errorf("etcd client for %v: %w", c.Endpoints, ctx.Err())
	}
	if err != nil {
		cancel()
		return nil, err
	}
	// base now only ends with the client: Client.Close cancels the
	// client's own context, derived from it.
	context.AfterFunc(cli.Ctx(), cancel)
	return cli, nil
}

// loginTimeout is the time attempt n (from 0) of Open gets to connect and
// log in: 2 s, doubling up to 32 s.
func loginTimeout(n int) time.Duration {
	return 2 * time.Second << min(n, 4)
}

func newClient(c ClientConfig, dialTimeout time.Duration, base context.Context) (*clientv3.Client, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	cfg := clientv3.Config{
		Context:              base,
		Endpoints:            c.Endpoints,
		DialTimeout:          dialTimeout,
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		AutoSyncInterval:     0,
		Logger:               zap.NewNop(),
		Username:             c.Username,
		Password:             c.Password,
	}
	if c.TLS != nil {
		cfg.TLS = c.TLS.Clone()
	}
	cli, err := clientv3.New(cfg)
	if errors.Is(err, rpctypes.ErrAuthFailed) {
		return nil, fmt.Errorf("%w: user %q on %v: %w", ErrAuth, c.Username, c.Endpoints, err)
	}
	if err != nil {
		return nil, fmt.Errorf("etcd client for %v: %w", c.Endpoints, err)
	}
	return cli, nil
}
