package api_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/api"
	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/events"
)

func ctx10(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestTokenService: an admin makes, lists and revokes tokens; a secret is
// returned once and never listed; a new token works at once on the node
// that made it, and a revoked one stops at once there.
func TestTokenService(t *testing.T) {
	s := startServer(t, nil)
	admin := s.client(t, s.tokens[auth.Admin], false)
	ctx := ctx10(t)
	resp, err := admin.Tokens.CreateToken(ctx, connect.NewRequest(&taskdv1.CreateTokenRequest{Role: "operator", TtlSeconds: 3600, Description: "ci"}))
	if err != nil {
		t.Fatal(err)
	}
	m := resp.Msg
	if _, err := auth.ParseToken(m.Token); err != nil || m.Info.Role != "operator" || m.Info.Expires == nil || m.CaSha256 == "" ||
		!strings.HasPrefix(m.Info.CreatedBy, "token ") || !strings.Contains(m.Token, m.Info.Id) {
		t.Fatalf("create: %+v", m)
	}
	op := s.client(t, m.Token, false)
	if _, err := op.Tasks.ListTasks(ctx, connect.NewRequest(&taskdv1.ListTasksRequest{})); err != nil {
		t.Fatalf("the new token right after creation: %v", err)
	}
	list, err := admin.Tokens.ListTokens(ctx, connect.NewRequest(&taskdv1.ListTokensRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	secret := m.Token[len("taskd.")+9:]
	found := false
	for _, ti := range list.Msg.Tokens {
		found = found || ti.Id == m.Info.Id
		if strings.Contains(ti.String(), secret) {
			t.Fatal("token list shows a secret")
		}
	}
	if !found || len(list.Msg.Tokens) != len(auth.Roles)+2 { // the test's tokens, the local one, the new one
		t.Fatalf("list: %d tokens, new one found=%v", len(list.Msg.Tokens), found)
	}
	if _, err := admin.Tokens.RevokeToken(ctx, connect.NewRequest(&taskdv1.RevokeTokenRequest{Id: m.Info.Id})); err != nil {
		t.Fatal(err)
	}
	if _, err := op.Tasks.ListTasks(ctx, connect.NewRequest(&taskdv1.ListTasksRequest{})); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("revoked token right after revocation: %v", err)
	}
	before := s.snapshot(t)
	for name, req := range map[string]*taskdv1.CreateTokenRequest{
		"bad role":      {Role: "root"},
		"negative ttl":  {Role: "viewer", TtlSeconds: -1},
		"ttl overflow":  {Role: "viewer", TtlSeconds: 1 << 62},
		"control chars": {Role: "viewer", Description: "\x1b[2J"},
	} {
		if _, err := admin.Tokens.CreateToken(ctx, connect.NewRequest(req)); connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	for _, id := range []string{"../../election/epoch", "..", "", m.Info.Id + "/x"} {
		if _, err := admin.Tokens.RevokeToken(ctx, connect.NewRequest(&taskdv1.RevokeTokenRequest{Id: id})); connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("revoke %q: %v, want InvalidArgument", id, err)
		}
	}
	if _, err := admin.Tokens.RevokeToken(ctx, connect.NewRequest(&taskdv1.RevokeTokenRequest{Id: m.Info.Id})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("revoking twice: %v, want NotFound", err)
	}
	if after := s.snapshot(t); after != before {
		t.Fatalf("refused token calls changed the store:\nbefore %s\nafter  %s", before, after)
	}
}

// TestOpenEndpointsSayLittle: /healthz and /readyz answer without a token
// and say nothing but ok / ready / not ready; /metrics needs a viewer.
func TestOpenEndpointsSayLittle(t *testing.T) {
	s := startServer(t, nil)
	s.node.ready.Store(false) // a node that has not joined (yet)
	hc := s.httpClient(false)
	get := func(path, token string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, s.url+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz", ""); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := get("/readyz", ""); code != 503 || body != "not ready\n" {
		t.Errorf("/readyz of a node that is not ready: %d %q", code, body)
	}
	s.node.ready.Store(true)
	if code, body := get("/readyz", ""); code != 200 || body != "ready\n" {
		t.Errorf("/readyz: %d %q", code, body)
	}
	if code, body := get("/metrics", ""); code != 401 || strings.Contains(body, "taskd_up") {
		t.Errorf("/metrics without a token: %d %q", code, body)
	}
	if code, body := get("/metrics", s.tokens[auth.Join]); code != 403 || strings.Contains(body, "taskd_up") {
		t.Errorf("/metrics with a join token: %d %q", code, body)
	}
	if code, body := get("/metrics", s.tokens[auth.Viewer]); code != 200 || !strings.Contains(body, "taskd_up") {
		t.Errorf("/metrics with a viewer token: %d %q", code, body)
	}
}

// TestNoPlaintext: the listener speaks only TLS, loopback included, and the
// client refuses http:// endpoints rather than sending a token in clear.
func TestNoPlaintext(t *testing.T) {
	s := startServer(t, nil)
	resp, err := http.Get("http://" + s.addr + "/healthz")
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 200 || strings.Contains(string(b), "ok") {
			t.Fatalf("plaintext request answered: %d %q", resp.StatusCode, b)
		}
	}
	if _, err := api.NewClient(api.ClientConfig{Endpoint: "http://" + s.addr, Token: s.tokens[auth.Admin], CA: s.pool}); !errors.Is(err, api.ErrPlaintext) {
		t.Fatalf("http:// endpoint: %v, want ErrPlaintext", err)
	}
	// A server presenting another node's certificate is refused before
	// the token is sent.
	c, err := api.NewClient(api.ClientConfig{Endpoint: s.url, Token: s.tokens[auth.Admin], CA: s.pool, ExpectNode: "n2"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Cluster.ListMembers(ctx10(t), connect.NewRequest(&taskdv1.ListMembersRequest{})); err == nil || !strings.Contains(err.Error(), `expected "n2"`) {
		t.Fatalf("server named n1 when n2 was expected: %v", err)
	}
}

// TestAudit: every mutating call is one "audit" event with who, what,
// target and result, refused ones included; reads are not audited; the
// refusals anyone can cause are rate-limited so they cannot flush the
// timeline.
func TestAudit(t *testing.T) {
	s := startServer(t, nil)
	ctx := ctx10(t)
	audits := func() []events.Event {
		all, err := s.node.rec.Local()
		if err != nil {
			t.Fatal(err)
		}
		var out []events.Event
		for _, e := range all {
			if e.Type == "audit" {
				out = append(out, e)
			}
		}
		return out
	}
	// An audit event is logged once the handler has returned (the client
	// may have its answer first) and reaches the journal through a queue:
	// wait, bounded, for what must come.
	awaitAudits := func(what string, ok func([]events.Event) bool) []events.Event {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			all := audits()
			if ok(all) {
				return all
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 10s; audit events: %+v", what, all)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	op := s.client(t, s.tokens[auth.Operator], false)
	opID := strings.Split(s.tokens[auth.Operator], ".")[1]
	n0 := len(audits())
	if _, err := op.Tasks.ListTasks(ctx, connect.NewRequest(&taskdv1.ListTasksRequest{})); err != nil {
		t.Fatal(err)
	}
	if _, err := op.Runners.SetRunnerMarks(ctx, connect.NewRequest(&taskdv1.SetRunnerMarksRequest{Node: "n7", Action: "explode"})); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("bad runner action: %v", err)
	}
	if _, err := op.VIPs.DeleteVIP(ctx, connect.NewRequest(&taskdv1.DeleteVIPRequest{Service: "iscsi"})); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("operator deleting a VIP: %v", err)
	}
	got := awaitAudits("the two mutating calls audited", func(all []events.Event) bool { return len(all) >= n0+2 })[n0:]
	if len(got) != 2 {
		t.Fatalf("audit events: %d, want 2 (the read is not audited): %+v", len(got), got)
	}
	a, d := got[0], got[1]
	if a.Attrs["procedure"] != "/taskd.v1.RunnerService/SetRunnerMarks" || a.Attrs["token"] != opID || a.Attrs["role"] != "operator" ||
		a.Attrs["target"] != "n7" || a.Attrs["result"] != "invalid_argument" {
		t.Errorf("audit of a failed call: %+v", a)
	}
	if d.Attrs["procedure"] != "/taskd.v1.VIPService/DeleteVIP" || d.Attrs["token"] != opID || d.Attrs["result"] != "permission_denied" {
		t.Errorf("audit of a refused call: %+v", d)
	}
	// A flood of anonymous refusals is recorded only in part, and says
	// how much it left out.
	hc := s.httpClient(false)
	n1 := len(audits())
	start := time.Now()
	for range 200 {
		resp := post(t, hc, s.url+"/taskd.v1.TaskService/CreateTask", "", "application/json", strings.NewReader("{}"))
		resp.Body.Close()
	}
	elapsed := time.Since(start)
	flood := awaitAudits("the flood audited in part", func(all []events.Event) bool { return len(all) > n1 })[n1:]
	if limit := 20 + int(elapsed.Seconds()*5) + 1; len(flood) > limit || len(flood) == 0 {
		t.Fatalf("200 anonymous refusals in %v made %d audit events, want 1..%d", elapsed, len(flood), limit)
	}
	// The next recorded one counts what was dropped; authenticated calls
	// are never dropped.
	if _, err := op.Tasks.CancelTask(ctx, connect.NewRequest(&taskdv1.TaskRef{Id: "nosuchtask"})); err == nil {
		t.Fatal("cancel of an unknown task succeeded")
	}
	isCancel := func(e events.Event) bool {
		return e.Attrs["procedure"] == "/taskd.v1.TaskService/CancelTask" && e.Attrs["token"] == opID
	}
	last := awaitAudits("the authenticated call after a flood of refusals audited", func(all []events.Event) bool {
		return slices.ContainsFunc(all[n1:], isCancel)
	})
	if e := last[len(last)-1]; !isCancel(e) {
		t.Fatalf("the authenticated call after a flood of refusals is not the last audit event: %+v", e)
	}
}
