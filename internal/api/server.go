// Package api serves taskd's protobuf services over Connect, which speaks
// gRPC, gRPC-Web and JSON over HTTP on one port, and holds the matching
// client used by taskctl.
//
// Security: the listener speaks only TLS, with the node certificate, on
// every address including loopback. Every RPC needs a bearer token
// (internal/auth), checked by guard before the request body is read: the
// token's role must satisfy the procedure's in the one table of
// procedures (authn.go). Loopback is not a credential. /healthz and /readyz
// are open and say only "ok" and "ready"/"not ready"; /metrics needs a
// viewer token. Every mutating call and every refused call is an "audit"
// event in the timeline (audit.go).
package api

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/api/taskdv1/taskdv1connect"
	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/bootstrap"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/schedule"
	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/vipaddr"
	"github.com/taskd/taskd/internal/vips"
	"github.com/taskd/taskd/internal/webui"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Cluster is what the API needs from the node.
type Cluster interface {
	// View is the node's current picture of the cluster.
	View() quorum.View
	// Ready reports whether the node has joined with a live session.
	Ready() bool
	// SetPriority stores a node's priority.
	SetPriority(ctx context.Context, node string, priority int, force bool) error
	// SetSpecified restricts who may lead.
	SetSpecified(ctx context.Context, names []string, force bool) error
	// EtcdMembers are the embedded etcd's member names (nil for other
	// stores), read locally so that they are known without a quorum.
	EtcdMembers() []string
	// Forget removes a decommissioned node that is down.
	Forget(ctx context.Context, name string) (quorum.Forgotten, error)
	// Coordinator describes the coordination store in use.
	Coordinator() string
	// TaskStore is the task store, nil until the node is connected.
	TaskStore() *task.Store
	// Tokens is the API token records under the cluster's store root, nil
	// until the node is connected.
	Tokens() *auth.Tokens
	// EventRings is the members' event rings under the cluster's store
	// root, nil until the node is connected.
	EventRings() *events.Rings
	// Events is the node's timeline recorder (nil before it is open).
	Events() *events.Recorder
	// VIPs is the VIP registry, nil until the node is connected.
	VIPs() *vips.Registry
	// Schedules is the schedule store, nil until the node is connected.
	Schedules() *schedule.Store
}

// Limits of the HTTP server. There is no http.Server ReadTimeout: it would
// end server streams (task wait, events --follow); guard gives each request
// body BodyTimeout instead.
const (
	readHeaderTimeout  = 10 * time.Second // also bounds the TLS handshake
	idleTimeout        = 2 * time.Minute
	maxHeaderBytes     = 64 << 10
	maxRequestBytes    = 1 << 20 // a task spec is at most 64 KiB
	DefaultBodyTimeout = 30 * time.Second
)

// ServerConfig configures the API listener.
type ServerConfig struct {
	Listen string
	// TLS is the listener's configuration (the node certificate:
	// pki.Bundle.ServerTLS(false)). Required: there is no plaintext mode.
	TLS *tls.Config
	// Auth checks bearer tokens (the node's *auth.Verifier).
	Auth Authenticator
	// CAHash is the hex SHA-256 of the cluster CA, returned with new
	// tokens so that join tokens can pin it.
	CAHash string
	// Join admits new nodes; nil: Join is unimplemented.
	Join Joiner
	// Metrics, when set, is served on /metrics to viewer tokens
	// (Prometheus: bearer_token_file and tls_config.ca_file).
	Metrics http.Handler
	// BodyTimeout bounds the time a request body takes to arrive
	// (DefaultBodyTimeout if zero).
	BodyTimeout time.Duration
}

// IsLoopback reports whether addr (host:port) listens only on loopback.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Validate checks the listener settings.
func (c ServerConfig) Validate() error {
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("listen address %q: %w", c.Listen, err)
	}
	if c.TLS == nil || len(c.TLS.Certificates) == 0 {
		return errors.New("the API needs a TLS certificate (the node certificate)")
	}
	if c.Auth == nil {
		return errors.New("the API needs a token verifier")
	}
	if c.BodyTimeout < 0 {
		return fmt.Errorf("body timeout %v must not be negative", c.BodyTimeout)
	}
	return nil
}

// Server is the node's API endpoint.
type Server struct {
	cfg     ServerConfig
	cluster Cluster
	log     *slog.Logger
	audit   *auditor
	handler http.Handler
}

// NewServer builds the handler tree.
func NewServer(cfg ServerConfig, cluster Cluster, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.BodyTimeout == 0 {
		cfg.BodyTimeout = DefaultBodyTimeout
	}
	s := &Server{cfg: cfg, cluster: cluster, log: log, audit: newAuditor(log)}
	mux := http.NewServeMux()
	// A request larger than any valid one is refused before it is read
	// into memory.
	opts := connect.WithHandlerOptions(connect.WithInterceptors(auditInterceptor{}), connect.WithReadMaxBytes(maxRequestBytes))
	tokens := &tokenService{c: cluster, caHash: cfg.CAHash}
	if l, ok := cfg.Auth.(interface {
		Learn(auth.Record)
		Forget(string)
	}); ok {
		tokens.learner = l
	}
	mux.Handle(taskdv1connect.NewClusterServiceHandler(&clusterService{c: cluster, join: cfg.Join}, opts))
	mux.Handle(taskdv1connect.NewTaskServiceHandler(&taskService{c: cluster}, opts))
	mux.Handle(taskdv1connect.NewRunnerServiceHandler(&runnerService{c: cluster}, opts))
	mux.Handle(taskdv1connect.NewEventServiceHandler(&eventService{c: cluster}, opts))
	mux.Handle(taskdv1connect.NewVIPServiceHandler(&vipService{c: cluster}, opts))
	mux.Handle(taskdv1connect.NewScheduleServiceHandler(&scheduleService{c: cluster}, opts))
	mux.Handle(taskdv1connect.NewTokenServiceHandler(tokens, opts))
	if cfg.Metrics != nil {
		mux.Handle(pathMetrics, cfg.Metrics)
	}
	mux.Handle(pathUI, webui.Handler())
	mux.Handle(webui.Prefix, webui.Handler())
	mux.HandleFunc(pathHealth, func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc(pathReady, func(w http.ResponseWriter, _ *http.Request) {
		if !cluster.Ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready")
			return
		}
		fmt.Fprintln(w, "ready")
	})
	s.handler = s.guard(mux)
	return s, nil
}

// Handler is the HTTP handler (for tests).
func (s *Server) Handler() http.Handler { return s.handler }

// Run serves TLS on ln until ctx ends, then shuts down gracefully.
func (s *Server) Run(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.handler,
		TLSConfig:         s.cfg.TLS.Clone(),
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	select {
	case err := <-errc:
		return fmt.Errorf("api server on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	<-errc
	if err != nil {
		return fmt.Errorf("api server shutdown: %w", err)
	}
	return nil
}

// toConnect maps domain errors to API codes; the one place that does.
func toConnect(err error) error {
	if err == nil {
		return nil
	}
	code := connect.CodeInternal
	switch {
	case errors.Is(err, quorum.ErrInvalid), errors.Is(err, vipaddr.ErrInvalid), errors.Is(err, auth.ErrInvalid):
		code = connect.CodeInvalidArgument
	case errors.Is(err, auth.ErrNotFound):
		code = connect.CodeNotFound
	case errors.Is(err, vips.ErrInUse), errors.Is(err, schedule.ErrExists), errors.Is(err, task.ErrKeyReused):
		code = connect.CodeAlreadyExists
	case errors.Is(err, vips.ErrNotFound):
		code = connect.CodeNotFound
	case errors.Is(err, vips.ErrNoTarget):
		code = connect.CodeFailedPrecondition
	case errors.Is(err, quorum.ErrLive), errors.Is(err, quorum.ErrSpecified):
		code = connect.CodeFailedPrecondition
	case errors.Is(err, quorum.ErrNotMember), errors.Is(err, quorum.ErrNotKnown), errors.Is(err, coord.ErrNotFound), errors.Is(err, task.ErrNotFound),
		errors.Is(err, schedule.ErrNotFound):
		code = connect.CodeNotFound
	case errors.Is(err, coord.ErrConflict), errors.Is(err, coord.ErrExists), errors.Is(err, task.ErrState):
		code = connect.CodeFailedPrecondition
	case errors.Is(err, quorum.ErrFenced), errors.Is(err, task.ErrFenced):
		code = connect.CodeAborted
	case errors.Is(err, coord.ErrUnavailable), errors.Is(err, coord.ErrSessionLost):
		code = connect.CodeUnavailable
	case errors.Is(err, bootstrap.ErrUnauthenticated):
		code = connect.CodeUnauthenticated
	case errors.Is(err, bootstrap.ErrInvalid):
		code = connect.CodeInvalidArgument
	case errors.Is(err, bootstrap.ErrRefused):
		code = connect.CodeAlreadyExists
	case errors.Is(err, bootstrap.ErrUnavailable):
		code = connect.CodeUnavailable
	case errors.Is(err, context.DeadlineExceeded):
		code = connect.CodeDeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = connect.CodeCanceled
	}
	return connect.NewError(code, trimRedundant(code, err))
}

// redundant are the leading words of a message that only repeat what its
// code says ("invalid_argument: invalid argument: ...").
var redundant = map[connect.Code][]string{
	connect.CodeInvalidArgument:    {keys.ErrInvalid.Error() + ": "},
	connect.CodeFailedPrecondition: {task.ErrState.Error() + ": "},
	// The joining node's client says it again around the answer.
	connect.CodeUnavailable: {bootstrap.ErrUnavailable.Error() + ": "},
}

// trimmedError is err with a shorter message; errors.Is still sees err.
type trimmedError struct {
	msg string
	err error
}

func (e trimmedError) Error() string { return e.msg }
func (e trimmedError) Unwrap() error { return e.err }

// trimRedundant drops words that repeat the code from err's message, so
// that taskctl prints one prefix.
func trimRedundant(code connect.Code, err error) error {
	msg := err.Error()
	for _, p := range redundant[code] {
		if rest, ok := strings.CutPrefix(msg, p); ok && rest != "" {
			return trimmedError{rest, err}
		}
	}
	return err
}

type clusterService struct {
	c    Cluster
	join Joiner
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func (s *clusterService) SetPriority(ctx context.Context, req *connect.Request[taskdv1.SetPriorityRequest]) (*connect.Response[taskdv1.SetPriorityResponse], error) {
	m := req.Msg
	if err := keys.ValidName(m.Node); err != nil {
		return nil, toConnect(err)
	}
	if err := s.c.SetPriority(ctx, m.Node, int(m.Priority), m.Force); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&taskdv1.SetPriorityResponse{}), nil
}

func (s *clusterService) SetSpecifiedMembers(ctx context.Context, req *connect.Request[taskdv1.SetSpecifiedMembersRequest]) (*connect.Response[taskdv1.SetSpecifiedMembersResponse], error) {
	for _, n := range req.Msg.Members {
		if err := keys.ValidName(n); err != nil {
			return nil, toConnect(err)
		}
	}
	if err := s.c.SetSpecified(ctx, req.Msg.Members, req.Msg.Force); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&taskdv1.SetSpecifiedMembersResponse{}), nil
}
