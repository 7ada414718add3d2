// Package api serves taskd's protobuf services over Connect, which speaks
// gRPC, gRPC-Web and JSON over HTTP on one port, and holds the matching
// client used by taskctl.
//
// Authentication: when a token is configured every RPC must carry
// "Authorization: Bearer TOKEN"; a missing or wrong token is Unauthenticated.
// A listener that is not on loopback requires a token (the node refuses to
// start without one). /healthz and /readyz are unauthenticated and reveal
// nothing but liveness and readiness.
package api

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/internal/api/gen/taskdv1"
	"github.com/taskd/taskd/internal/api/gen/taskdv1/taskdv1connect"
	"github.com/taskd/taskd/internal/bootstrap"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/schedule"
	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/vip"
	"github.com/taskd/taskd/internal/vips"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
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
	// Coordinator describes the coordination store in use.
	Coordinator() string
	// TaskStore is the task store, nil until the node is connected.
	TaskStore() *task.Store
	// Events is the node's timeline recorder (nil before it is open).
	Events() *events.Recorder
	// VIPs is the VIP registry, nil until the node is connected.
	VIPs() *vips.Registry
	// Schedules is the schedule store, nil until the node is connected.
	Schedules() *schedule.Store
}

// ServerConfig configures the API listener.
type ServerConfig struct {
	Listen  string
	Token   string // empty: no authentication (loopback only)
	TLSCert string
	TLSKey  string
	// TLS, when set and no TLSCert is given, serves TLS with the node
	// certificate next to the plaintext API on the same port (see
	// sniffListener); the join endpoint needs it.
	TLS *tls.Config
	// Join admits new nodes; nil: Join is unimplemented.
	Join Joiner
	// Metrics, when set, is served on /metrics, behind the same bearer
	// token as the RPCs (Prometheus: bearer_token_file).
	Metrics http.Handler
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
	if !IsLoopback(c.Listen) && c.Token == "" {
		return fmt.Errorf("listen address %q is not loopback: a bearer token is required (--token-file)", c.Listen)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("TLS needs both --tls-cert and --tls-key")
	}
	return nil
}

// Server is the node's API endpoint.
type Server struct {
	cfg     ServerConfig
	cluster Cluster
	log     *slog.Logger
	handler http.Handler
}

// NewServer builds the handler tree.
func NewServer(cfg ServerConfig, cluster Cluster, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, cluster: cluster, log: log}
	mux := http.NewServeMux()
	// A request larger than any valid one (a task spec is at most 64 KiB)
	// is refused before it is read into memory.
	opts := connect.WithHandlerOptions(connect.WithInterceptors(authInterceptor(cfg.Token)), connect.WithReadMaxBytes(1<<20))
	clusterPath, clusterHandler := taskdv1connect.NewClusterServiceHandler(&clusterService{c: cluster, join: cfg.Join}, opts)
	mux.Handle(clusterPath, joinOverTLSOnly(clusterHandler))
	mux.Handle(taskdv1connect.NewTaskServiceHandler(&taskService{c: cluster}, opts))
	mux.Handle(taskdv1connect.NewRunnerServiceHandler(&runnerService{c: cluster}, opts))
	mux.Handle(taskdv1connect.NewEventServiceHandler(&eventService{c: cluster}, opts))
	mux.Handle(taskdv1connect.NewVIPServiceHandler(&vipService{c: cluster}, opts))
	mux.Handle(taskdv1connect.NewScheduleServiceHandler(&scheduleService{c: cluster}, opts))
	if cfg.Metrics != nil {
		a := &auth{token: cfg.Token}
		mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
			if err := a.check(r.Header); err != nil {
				http.Error(w, err.Error(), http.StatusUnauthorized)
				return
			}
			cfg.Metrics.ServeHTTP(w, r)
		})
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !cluster.Ready() {
			v := cluster.View()
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: session %s %s\n", v.Session, v.JoinError)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	s.handler = mux
	return s, nil
}

// Handler is the HTTP handler (for tests).
func (s *Server) Handler() http.Handler { return s.handler }

// Run serves until ctx ends, then shuts down gracefully.
func (s *Server) Run(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           h2c.NewHandler(s.handler, &http2.Server{}),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	var sniff *sniffListener
	if s.cfg.TLSCert == "" && s.cfg.TLS != nil {
		cfg := s.cfg.TLS.Clone()
		cfg.NextProtos = []string{"h2", "http/1.1"}
		sniff = newSniffListener(ln, cfg)
		defer sniff.wait()
		ln = sniff
	}
	errc := make(chan error, 1)
	go func() {
		if s.cfg.TLSCert != "" {
			errc <- srv.ServeTLS(ln, s.cfg.TLSCert, s.cfg.TLSKey)
		} else {
			errc <- srv.Serve(ln)
		}
	}()
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

// authInterceptor requires the bearer token on every RPC when one is set.
func authInterceptor(token string) connect.Interceptor {
	return &auth{token: token}
}

type auth struct{ token string }

func (a *auth) check(h http.Header) error {
	if a.token == "" {
		return nil
	}
	got, ok := strings.CutPrefix(h.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(a.token)) != 1 {
		return connect.NewError(connect.CodeUnauthenticated, errors.New("missing or wrong bearer token: pass --token-file (or TASKD_TOKEN_FILE) with the node's token"))
	}
	return nil
}

func (a *auth) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		// Join carries a join credential, not the API token; the join
		// server verifies it first thing.
		if !req.Spec().IsClient && req.Spec().Procedure != taskdv1connect.ClusterServiceJoinProcedure {
			if err := a.check(req.Header()); err != nil {
				return nil, err
			}
		}
		return next(ctx, req)
	}
}

func (a *auth) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (a *auth) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if err := a.check(conn.RequestHeader()); err != nil {
			return err
		}
		return next(ctx, conn)
	}
}

// toConnect maps domain errors to API codes; the one place that does.
func toConnect(err error) error {
	if err == nil {
		return nil
	}
	code := connect.CodeInternal
	switch {
	case errors.Is(err, quorum.ErrInvalid), errors.Is(err, vip.ErrInvalid):
		code = connect.CodeInvalidArgument
	case errors.Is(err, vips.ErrInUse), errors.Is(err, schedule.ErrExists):
		code = connect.CodeAlreadyExists
	case errors.Is(err, vips.ErrNotFound):
		code = connect.CodeNotFound
	case errors.Is(err, vips.ErrNoTarget):
		code = connect.CodeFailedPrecondition
	case errors.Is(err, quorum.ErrNotMember), errors.Is(err, coord.ErrNotFound), errors.Is(err, task.ErrNotFound),
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
	return connect.NewError(code, err)
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

func (s *clusterService) ListMembers(context.Context, *connect.Request[taskdv1.ListMembersRequest]) (*connect.Response[taskdv1.ListMembersResponse], error) {
	v := s.c.View()
	out := &taskdv1.ListMembersResponse{
		Leader: v.Leader, Epoch: v.Epoch, ElectedAt: ts(v.ElectedAt), Self: v.Self,
		SelfSession: v.Session, SelfReady: v.Ready, SelfError: v.JoinError, Coordinator: s.c.Coordinator(),
		SpecifiedMembers: v.Specified, ServerTime: timestamppb.Now(),
		SessionTimeoutMs: v.Timeout.Milliseconds(), DeadlineFraction: v.DeadlineFraction,
	}
	for _, m := range v.Members {
		pm := &taskdv1.Member{
			Name: m.Name, Address: m.Address, Priority: int32(m.Priority), CurrentPriority: int32(m.CurrentPriority),
			Session: m.Session, Health: m.Health, HealthReason: m.HealthReason, Leader: m.Name == v.Leader,
			Version: m.Version, NodeId: m.NodeID, StartedAt: ts(m.StartedAt), JoinedAt: ts(m.JoinedAt),
		}
		if m.Name == v.Self {
			pm.Session = v.Session
		}
		out.Members = append(out.Members, pm)
	}
	if f := v.LastFence; f != nil {
		out.LastFence = &taskdv1.FenceReport{
			Reason: f.Reason, Started: ts(f.Started), Finished: ts(f.Finished), DurationMs: f.Duration.Milliseconds(),
			EarliestExpiry: ts(f.EarliestExpiry), BeforeExpiry: f.BeforeExpiry,
		}
	}
	return connect.NewResponse(out), nil
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
