package api

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/events"
)

// Audit: every mutating call, and every refused call, becomes one event of
// type "audit" in the timeline (a log line with event=audit, which
// internal/events records): who (token id and role), the procedure, its
// target and the result code.

type auditKey struct{}

// auditRecord is filled by the interceptor once the request was decoded
// and handled; a request that never got that far has reached=false.
type auditRecord struct {
	reached bool
	target  string
	result  string
}

// auditor writes audit events. Refusals are rate-limited: anyone who can
// reach the port can cause them, and must not be able to flush the
// timeline's bounded ring with them. Calls by authenticated tokens are
// never dropped.
type auditor struct {
	log *slog.Logger

	mu         sync.Mutex
	allowance  float64
	last       time.Time
	suppressed int
}

const (
	deniedPerSecond = 5
	deniedBurst     = 20
)

func newAuditor(log *slog.Logger) *auditor {
	return &auditor{log: log, allowance: deniedBurst}
}

// take reports whether a refusal may be recorded now, and how many were
// dropped since the last one recorded.
func (a *auditor) take(now time.Time) (bool, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.last.IsZero() {
		a.allowance = min(deniedBurst, a.allowance+now.Sub(a.last).Seconds()*deniedPerSecond)
	}
	a.last = now
	if a.allowance < 1 {
		a.suppressed++
		return false, 0
	}
	a.allowance--
	n := a.suppressed
	a.suppressed = 0
	return true, n
}

func method(procedure string) string { return path.Base(procedure) }

// denied records a refused request (no, bad or insufficient token).
func (a *auditor) denied(r *http.Request, procedure string, id auth.Identity, err error) {
	ok, dropped := a.take(time.Now())
	if !ok {
		return
	}
	who := "anonymous"
	if id.TokenID != "" {
		who = id.String()
	} else if tok, has := bearer(r.Header); has {
		// The id part of a well-formed token is not secret; it tells
		// which token was tried.
		if t, perr := auth.ParseToken(tok); perr == nil {
			who = "unverified token " + t.ID
		} else {
			who = "malformed token"
		}
	}
	code := connect.CodeOf(err).String()
	attrs := []any{events.Audit.Attr(), "who", who, "procedure", procedure, "result", code, "remote", r.RemoteAddr}
	if id.TokenID != "" {
		attrs = append(attrs, "token", id.TokenID, "role", string(id.Role))
	}
	if dropped > 0 {
		attrs = append(attrs, "dropped", dropped)
	}
	a.log.Warn(method(procedure)+" refused for "+who+": "+code, attrs...)
}

// call records a mutating call that passed authentication.
func (a *auditor) call(r *http.Request, procedure string, p procedure, id auth.Identity, rec *auditRecord) {
	result, target := rec.result, rec.target
	if !rec.reached {
		result = "not decoded" // malformed or oversized request
	}
	msg := method(procedure)
	if target != "" {
		msg += " " + target
	}
	msg += " by " + id.String() + ": " + result
	a.log.Info(msg, events.Audit.Attr(), "who", id.String(), "token", id.TokenID, "role", string(id.Role),
		"procedure", procedure, "target_kind", p.target, "target", target, "result", result, "remote", r.RemoteAddr)
}

// auditInterceptor notes the target and result code of a mutating call
// for the guard, which writes the event.
type auditInterceptor struct{}

func (auditInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		resp, err := next(ctx, req)
		if rec, ok := ctx.Value(auditKey{}).(*auditRecord); ok {
			rec.reached = true
			rec.result = "ok"
			if err != nil {
				rec.result = connect.CodeOf(err).String()
			}
			var out any
			if resp != nil {
				out = resp.Any()
			}
			rec.target = targetOf(req.Any(), out)
		}
		return resp, err
	}
}

func (auditInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (auditInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// targetOf names what a call acted on, from the request (or, for a
// create, the response): a task id, a node, a service, a token id.
func targetOf(req, resp any) string {
	switch m := resp.(type) {
	case *taskdv1.CreateTaskResponse:
		return m.GetTask().GetId()
	case *taskdv1.CreateTokenResponse:
		return m.GetInfo().GetId() + " (" + m.GetInfo().GetRole() + ")"
	}
	switch m := req.(type) {
	case *taskdv1.CreateTaskRequest:
		return "new " + m.GetType() + " task"
	case *taskdv1.CreateTokenRequest:
		return "new " + m.GetRole() + " token"
	case *taskdv1.SetTypeLimitRequest:
		if m.GetUnset() {
			return m.GetType() + " (unset)"
		}
		return fmt.Sprintf("%s=%d", m.GetType(), m.GetLimit())
	case interface{ GetId() string }:
		return m.GetId()
	case interface{ GetNode() string }:
		return m.GetNode()
	case interface{ GetService() string }:
		return m.GetService()
	case interface{ GetMembers() []string }:
		return "[" + strings.Join(m.GetMembers(), ",") + "]"
	case interface{ GetName() string }:
		return m.GetName()
	}
	return ""
}
