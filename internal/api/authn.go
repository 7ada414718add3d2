package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1/taskdv1connect"
	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/webui"
)

// procedure is what the API knows about one RPC before decoding it.
type procedure struct {
	role     auth.Role
	mutating bool   // audited, whatever the outcome
	target   string // what the audit names: "task", "node", "service", "token", "members"
}

// procedures is the one table of who may call what. A procedure that is
// not in it is answered 404 before anything is read; a test checks that
// every RPC of every service is in it.
var procedures = map[string]procedure{
	taskdv1connect.ClusterServiceListMembersProcedure:         {auth.Viewer, false, ""},
	taskdv1connect.ClusterServiceSetPriorityProcedure:         {auth.Admin, true, "node"},
	taskdv1connect.ClusterServiceSetSpecifiedMembersProcedure: {auth.Admin, true, "members"},
	taskdv1connect.ClusterServiceForgetMemberProcedure:        {auth.Admin, true, "node"},
	// The join RPC (internal/api/join.go): only join tokens.
	taskdv1connect.ClusterServiceJoinProcedure: {auth.Join, true, "node"},

	taskdv1connect.EventServiceListEventsProcedure:  {auth.Viewer, false, ""},
	taskdv1connect.EventServiceWatchEventsProcedure: {auth.Viewer, false, ""},

	taskdv1connect.TaskServiceCreateTaskProcedure:     {auth.Operator, true, "task"},
	taskdv1connect.TaskServiceGetTaskProcedure:        {auth.Viewer, false, ""},
	taskdv1connect.TaskServiceListTasksProcedure:      {auth.Viewer, false, ""},
	taskdv1connect.TaskServiceCancelTaskProcedure:     {auth.Operator, true, "task"},
	taskdv1connect.TaskServicePauseTaskProcedure:      {auth.Operator, true, "task"},
	taskdv1connect.TaskServiceResumeTaskProcedure:     {auth.Operator, true, "task"},
	taskdv1connect.TaskServiceSetTaskWindowProcedure:  {auth.Operator, true, "task"},
	taskdv1connect.TaskServiceSetTaskRateProcedure:    {auth.Operator, true, "task"},
	taskdv1connect.TaskServiceWatchTaskProcedure:      {auth.Viewer, false, ""},
	taskdv1connect.TaskServiceWatchTasksProcedure:     {auth.Viewer, false, ""},
	taskdv1connect.TaskServiceTaskLogProcedure:        {auth.Viewer, false, ""},
	taskdv1connect.TaskServiceListTypeLimitsProcedure: {auth.Viewer, false, ""},
	taskdv1connect.TaskServiceSetTypeLimitProcedure:   {auth.Admin, true, "type"},

	taskdv1connect.RunnerServiceListRunnersProcedure:    {auth.Viewer, false, ""},
	taskdv1connect.RunnerServiceSetRunnerMarksProcedure: {auth.Operator, true, "node"},

	taskdv1connect.VIPServiceSetVIPProcedure:    {auth.Admin, true, "service"},
	taskdv1connect.VIPServiceListVIPsProcedure:  {auth.Viewer, false, ""},
	taskdv1connect.VIPServiceDeleteVIPProcedure: {auth.Admin, true, "service"},
	taskdv1connect.VIPServiceDrainVIPProcedure:  {auth.Admin, true, "service"},

	taskdv1connect.ScheduleServiceCreateScheduleProcedure:  {auth.Operator, true, "schedule"},
	taskdv1connect.ScheduleServiceListSchedulesProcedure:   {auth.Viewer, false, ""},
	taskdv1connect.ScheduleServiceGetScheduleProcedure:     {auth.Viewer, false, ""},
	taskdv1connect.ScheduleServicePauseScheduleProcedure:   {auth.Operator, true, "schedule"},
	taskdv1connect.ScheduleServiceResumeScheduleProcedure:  {auth.Operator, true, "schedule"},
	taskdv1connect.ScheduleServiceTriggerScheduleProcedure: {auth.Operator, true, "schedule"},
	taskdv1connect.ScheduleServiceDeleteScheduleProcedure:  {auth.Operator, true, "schedule"},

	taskdv1connect.TokenServiceCreateTokenProcedure: {auth.Admin, true, "token"},
	taskdv1connect.TokenServiceListTokensProcedure:  {auth.Admin, false, ""},
	taskdv1connect.TokenServiceRevokeTokenProcedure: {auth.Admin, true, "token"},
	taskdv1connect.TokenServiceWhoAmIProcedure:      {auth.Viewer, false, ""},
}

// Paths outside the RPCs.
const (
	pathHealth  = "/healthz" // open: says "ok"
	pathReady   = "/readyz"  // open: says "ready" or "not ready"
	pathMetrics = "/metrics" // viewer
	pathUI      = "/ui"      // open: the web console's files, under /ui/
)

// Authenticator checks bearer tokens; *auth.Verifier is the one taskd uses.
type Authenticator interface {
	Verify(token string) (auth.Identity, error)
}

type identityKey struct{}

// Caller is the identity of the request's token; handlers run only for
// authenticated requests, so it is always set there.
func Caller(ctx context.Context) (auth.Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(auth.Identity)
	return id, ok
}

// bearer extracts the token of an Authorization header.
func bearer(h http.Header) (string, bool) {
	v := h.Values("Authorization")
	if len(v) != 1 || len(v[0]) <= len("Bearer ") || !strings.EqualFold(v[0][:len("Bearer ")], "Bearer ") {
		return "", false
	}
	return strings.TrimSpace(v[0][len("Bearer "):]), true
}

// authenticate resolves the request's token. The error is a *connect.Error
// whose message tells a person what to do, never why a token failed in
// detail (unknown id and wrong secret look the same).
func (s *Server) authenticate(r *http.Request) (auth.Identity, error) {
	tok, ok := bearer(r.Header)
	if !ok {
		return auth.Identity{}, connect.NewError(connect.CodeUnauthenticated,
			errors.New("no bearer token: taskctl reads the node's admin token from --data-dir (run it as root), or pass --token-file"))
	}
	id, err := s.cfg.Auth.Verify(tok)
	switch {
	case err == nil:
		return id, nil
	case errors.Is(err, auth.ErrNotLoaded):
		return id, connect.NewError(connect.CodeUnavailable, err)
	case errors.Is(err, auth.ErrExpired):
		return id, connect.NewError(connect.CodeUnauthenticated, errors.New("token expired: ask an admin for a new one (taskctl token create)"))
	}
	return id, connect.NewError(connect.CodeUnauthenticated, errors.New("invalid or revoked token"))
}

// guard runs before any handler: it resolves the token, checks the role
// the procedure needs and only then lets the request be decoded. Nothing of
// the body is read for a request it refuses.
func (s *Server) guard(next http.Handler) http.Handler {
	ew := connect.NewErrorWriter()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		path := r.URL.Path
		switch path {
		case pathHealth, pathReady:
			next.ServeHTTP(w, r)
			return
		case pathUI:
			// The console's files: no data, no token (internal/webui).
			dropBody(w, r)
			next.ServeHTTP(w, r)
			return
		case pathMetrics:
			id, err := s.authenticate(r)
			if err == nil && !id.Role.Satisfies(auth.Viewer) {
				err = connect.NewError(connect.CodePermissionDenied, fmt.Errorf("token %s has role %s; /metrics needs viewer", id.TokenID, id.Role))
			}
			if err != nil {
				s.audit.denied(r, path, id, err)
				dropBody(w, r)
				http.Error(w, err.Error(), httpStatus(err))
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		if strings.HasPrefix(path, webui.Prefix) {
			dropBody(w, r)
			next.ServeHTTP(w, r)
			return
		}
		p, ok := procedures[path]
		if !ok {
			dropBody(w, r)
			http.NotFound(w, r)
			return
		}
		id, err := s.authenticate(r)
		authed := time.Since(start)
		if err == nil && !id.Role.Satisfies(p.role) {
			err = connect.NewError(connect.CodePermissionDenied,
				fmt.Errorf("token %s has role %s; %s needs role %s", id.TokenID, id.Role, path, p.role))
		}
		if err != nil {
			if connect.CodeOf(err) != connect.CodeUnavailable {
				s.audit.denied(r, path, id, err)
			}
			dropBody(w, r)
			_ = ew.Write(w, r, err)
			return
		}
		ctx := context.WithValue(r.Context(), identityKey{}, id)
		var rec *auditRecord
		if p.mutating {
			rec = &auditRecord{}
			ctx = context.WithValue(ctx, auditKey{}, rec)
		}
		r = r.WithContext(ctx)
		s.limitBody(w, r)
		next.ServeHTTP(&timed{ResponseWriter: w, start: start, auth: authed}, r)
		if rec != nil {
			s.audit.call(r, path, p, id, rec)
		}
	})
}

// dropBody makes sure the body of a refused request is never read: on
// HTTP/1 net/http would otherwise read up to 256 KiB of it after the
// handler (to reuse the connection), waiting as long as the client cares to
// trickle it. Closing the connection instead costs the client a reconnect.
// On HTTP/2 the unread stream is reset, and other streams carry on.
func dropBody(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 1 && r.ContentLength != 0 {
		w.Header().Set("Connection", "close")
	}
}

// limitBody gives the request body bodyTimeout to arrive. The deadline is
// lifted once the body is complete, so a server stream lives as long as
// its client wants (http.Server.ReadTimeout would cut it).
func (s *Server) limitBody(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	if err := rc.SetReadDeadline(time.Now().Add(s.cfg.BodyTimeout)); err != nil {
		return
	}
	r.Body = &deadlineBody{ReadCloser: r.Body, lift: func() { _ = rc.SetReadDeadline(time.Time{}) }}
}

type deadlineBody struct {
	io.ReadCloser
	once sync.Once
	lift func()
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) {
		b.once.Do(b.lift)
	}
	return n, err
}

func httpStatus(err error) int {
	switch connect.CodeOf(err) {
	case connect.CodeUnauthenticated:
		return http.StatusUnauthorized
	case connect.CodePermissionDenied:
		return http.StatusForbidden
	case connect.CodeUnavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// timed adds a Server-Timing header to a procedure's answer: "handler" is
// the time from the request's arrival in the guard to the answer's
// headers (for a stream, to its first message), "auth" the token check's
// share of it. A browser shows it in its network panel
// (and in the Resource Timing API's serverTiming), so the server's share
// of a slow call can be told from the network's and the browser's. It
// carries no data a caller did not already have.
type timed struct {
	http.ResponseWriter
	start time.Time
	auth  time.Duration // of which the token's check
	wrote bool
}

func (t *timed) stamp() {
	if !t.wrote {
		t.wrote = true
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		t.Header().Set("Server-Timing", fmt.Sprintf("auth;dur=%.1f, handler;dur=%.1f", ms(t.auth), ms(time.Since(t.start))))
	}
}

func (t *timed) WriteHeader(code int) {
	t.stamp()
	t.ResponseWriter.WriteHeader(code)
}

func (t *timed) Write(b []byte) (int, error) {
	t.stamp()
	return t.ResponseWriter.Write(b)
}

// Flush keeps server streams working: connect flushes each message.
func (t *timed) Flush() {
	t.stamp()
	if f, ok := t.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection.
func (t *timed) Unwrap() http.ResponseWriter { return t.ResponseWriter }
