package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/api/taskdv1/taskdv1connect"
	"github.com/taskd/taskd/internal/api"
	"github.com/taskd/taskd/internal/auth"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// procedures lists every RPC of the taskd.v1 services, from the
// descriptors compiled into the binary.
func procedures(t *testing.T) []string {
	t.Helper()
	_ = taskdv1.File_taskd_v1_token_proto // linked in
	var out []string
	protoregistry.GlobalFiles.RangeFilesByPackage("taskd.v1", func(fd protoreflect.FileDescriptor) bool {
		for i := 0; i < fd.Services().Len(); i++ {
			sd := fd.Services().Get(i)
			for j := 0; j < sd.Methods().Len(); j++ {
				out = append(out, "/"+string(sd.FullName())+"/"+string(sd.Methods().Get(j).Name()))
			}
		}
		return true
	})
	if len(out) < 20 {
		t.Fatalf("found only %d procedures: %v", len(out), out)
	}
	return out
}

// connectCode is the error code of a Connect unary JSON response.
func connectCode(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	var e struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	_ = json.Unmarshal(b, &e)
	if e.Code == "" && resp.StatusCode == http.StatusOK {
		return "ok"
	}
	return e.Code
}

func post(t *testing.T, hc *http.Client, url, token, ctype string, body io.Reader) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", ctype)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	return resp
}

// TestEveryProcedureNeedsItsRole plays every role against every RPC: a
// request with no token, a malformed one, a guessed one or a role below the
// procedure's is refused (Unauthenticated, PermissionDenied) and the store
// is unchanged; one whose role suffices gets past the check.
func TestEveryProcedureNeedsItsRole(t *testing.T) {
	s := startServer(t, nil)
	hc := s.httpClient(false)
	need := map[string]auth.Role{}
	for _, p := range procedures(t) {
		switch {
		case p == "/taskd.v1.TokenService/WhoAmI":
			need[p] = auth.Viewer
		case strings.HasPrefix(p, "/taskd.v1.TokenService/"), strings.HasSuffix(p, "/SetVIP"), strings.HasSuffix(p, "/DeleteVIP"),
			strings.HasSuffix(p, "/DrainVIP"), strings.HasSuffix(p, "/SetPriority"), strings.HasSuffix(p, "/SetSpecifiedMembers"),
			strings.HasSuffix(p, "/ForgetMember"), strings.HasSuffix(p, "/SetTypeLimit"):
			need[p] = auth.Admin
		case strings.HasSuffix(p, "/Join"):
			need[p] = auth.Join
		case strings.HasPrefix(p, "/taskd.v1.TaskService/") && !strings.HasPrefix(p, "/taskd.v1.TaskService/Get") &&
			!strings.HasPrefix(p, "/taskd.v1.TaskService/List") && !strings.HasPrefix(p, "/taskd.v1.TaskService/Watch") &&
			p != "/taskd.v1.TaskService/TaskLog",
			strings.HasPrefix(p, "/taskd.v1.ScheduleService/") && !strings.HasPrefix(p, "/taskd.v1.ScheduleService/Get") &&
				!strings.HasPrefix(p, "/taskd.v1.ScheduleService/List"),
			strings.HasSuffix(p, "/SetRunnerMarks"):
			need[p] = auth.Operator
		default:
			need[p] = auth.Viewer
		}
	}
	guessed := auth.NewToken().String()
	for p, role := range need {
		before := s.snapshot(t)
		for name, tok := range map[string]string{"no token": "", "malformed": "s3cret", "guessed": guessed} {
			resp := post(t, hc, s.url+p, tok, "application/json", strings.NewReader("{}"))
			if code := connectCode(t, resp); code != "unauthenticated" || resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s with %s: HTTP %d %q, want 401 unauthenticated", p, name, resp.StatusCode, code)
			}
		}
		for _, have := range auth.Roles {
			if have.Satisfies(role) {
				continue
			}
			resp := post(t, hc, s.url+p, s.tokens[have], "application/json", strings.NewReader("{}"))
			if code := connectCode(t, resp); code != "permission_denied" {
				t.Errorf("%s with a %s token: %q, want permission_denied (needs %s)", p, have, code, role)
			}
		}
		if after := s.snapshot(t); after != before {
			t.Errorf("refused calls to %s changed the store:\nbefore %s\nafter  %s", p, before, after)
		}
		// The role that suffices gets past the check (what the handler
		// makes of "{}" does not matter here).
		resp := post(t, hc, s.url+p, s.tokens[role], "application/json", strings.NewReader("{}"))
		if code := connectCode(t, resp); code == "unauthenticated" || code == "permission_denied" {
			t.Errorf("%s with a %s token: %q", p, role, code)
		}
	}
	// The local admin token is an admin.
	resp := post(t, hc, s.url+"/taskd.v1.TokenService/ListTokens", s.local.Token.String(), "application/json", strings.NewReader("{}"))
	if code := connectCode(t, resp); code != "ok" {
		t.Fatalf("local admin token on ListTokens: %q", code)
	}
	// Not a procedure: 404 before anything else.
	resp = post(t, hc, s.url+"/taskd.v1.TaskService/DropAll", s.tokens[auth.Admin], "application/json", strings.NewReader("{}"))
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown procedure: HTTP %d, want 404", resp.StatusCode)
	}
}

// stallingBody sends a few bytes and then nothing until closed: a server
// that decoded before authenticating would wait for the rest.
type stallingBody struct {
	first []byte
	once  sync.Once
	done  chan struct{}
}

func newStallingBody(first []byte) *stallingBody {
	return &stallingBody{first: first, done: make(chan struct{})}
}

func (b *stallingBody) Read(p []byte) (int, error) {
	if len(b.first) > 0 {
		n := copy(p, b.first)
		b.first = b.first[n:]
		return n, nil
	}
	// Give up after a while, so that a server that waits for the body
	// fails the test instead of hanging it.
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-b.done:
	case <-t.C:
	}
	return 0, io.ErrUnexpectedEOF
}

func (b *stallingBody) Close() error {
	b.once.Do(func() { close(b.done) })
	return nil
}

// endless is a body of n bytes of garbage, produced as read.
type endless struct {
	left int64
	read atomic.Int64
}

func (e *endless) Read(p []byte) (int, error) {
	if e.left <= 0 {
		return 0, io.EOF
	}
	n := int64(len(p))
	n = min(n, e.left)
	for i := range p[:n] {
		p[i] = 0xa5
	}
	e.left -= n
	e.read.Add(n)
	return int(n), nil
}

// TestRefusedBeforeDecoding: a request without a valid token, or with a
// role too low, is answered before its body is read, in every protocol:
// a body that never completes gets its refusal at once, a malformed one is
// not reported as malformed, and a huge one is not read to its end.
func TestRefusedBeforeDecoding(t *testing.T) {
	s := startServer(t, nil)
	for _, proto := range []struct {
		name  string
		http1 bool
		ctype string
	}{
		{"connect+proto/http1", true, "application/proto"},
		{"connect+json/h2", false, "application/json"},
		{"grpc/h2", false, "application/grpc"},
	} {
		t.Run(proto.name, func(t *testing.T) {
			hc := s.httpClient(proto.http1)
			url := s.url + "/taskd.v1.VIPService/SetVIP"
			check := func(what, token string, body io.Reader, want connect.Code) {
				t.Helper()
				start := time.Now()
				resp := post(t, hc, url, token, proto.ctype, body)
				took := time.Since(start)
				code := resp.Header.Get("Grpc-Status")
				if proto.ctype == "application/grpc" {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if code == "" {
						code = resp.Trailer.Get("Grpc-Status")
					}
					if code != strconv.Itoa(int(want)) {
						t.Errorf("%s: grpc-status %q, want %d (%s)", what, code, want, want)
					}
				} else if got := connectCode(t, resp); got != want.String() {
					t.Errorf("%s: %q, want %s", what, got, want)
				}
				if took > 3*time.Second {
					t.Errorf("%s: the refusal took %v: the server waited for the body", what, took)
				}
			}
			before := s.snapshot(t)
			stall := newStallingBody([]byte{0x0a, 0x05})
			defer stall.Close()
			check("stalled body, no token", "", stall, connect.CodeUnauthenticated)
			stall2 := newStallingBody([]byte{0x0a, 0x05})
			defer stall2.Close()
			check("stalled body, viewer", s.tokens[auth.Viewer], stall2, connect.CodePermissionDenied)
			check("malformed body, no token", "", bytes.NewReader([]byte("\xff\xfe not a message {{{")), connect.CodeUnauthenticated)
			check("malformed body, guessed token", auth.NewToken().String(), bytes.NewReader([]byte("\xff\xfe")), connect.CodeUnauthenticated)
			huge := &endless{left: 1 << 30}
			check("1 GiB body, no token", "", huge, connect.CodeUnauthenticated)
			if n := huge.read.Load(); n >= 1<<30 {
				t.Errorf("the server read the whole 1 GiB body of a refused request")
			}
			// Positive control: with the role, the same garbage is
			// decoded, and refused as malformed.
			if proto.ctype != "application/grpc" {
				check("malformed body, admin", s.tokens[auth.Admin], bytes.NewReader([]byte("\xff\xfe not a message {{{")), connect.CodeInvalidArgument)
			}
			if after := s.snapshot(t); after != before {
				t.Errorf("the store changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// TestTokensOnStreams: server streams carry the token (the client
// interceptor wraps streaming calls), are refused without one, and outlive
// the body timeout: the per-request read deadline is lifted once the
// request is read, so a long "task wait" or "events --follow" is not cut
// (on HTTP/1.1 an expired read deadline would cancel the request).
func TestTokensOnStreams(t *testing.T) {
	const bodyTimeout = 300 * time.Millisecond
	s := startServer(t, func(c *api.ServerConfig) { c.BodyTimeout = bodyTimeout })
	pctx, pcancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.node.rec.Run(pctx, s.store) }()
	defer func() { pcancel(); wg.Wait() }()

	viewer := s.tokens[auth.Viewer]
	h1 := taskdv1connect.NewEventServiceClient(s.httpClient(true), s.url)
	for _, tc := range []struct {
		name   string
		events taskdv1connect.EventServiceClient
		header string // set by hand (the HTTP/1.1 client has no interceptor)
	}{
		{"connect/h2", s.client(t, viewer, false).Events, ""},
		{"grpc/h2", s.client(t, viewer, true).Events, ""},
		{"connect/http1.1", h1, viewer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if tc.header == "" {
				anon := s.client(t, "", strings.HasPrefix(tc.name, "grpc"))
				st, err := anon.Events.WatchEvents(ctx, connect.NewRequest(&taskdv1.ListEventsRequest{}))
				if err == nil {
					for st.Receive() {
					}
					err = st.Err()
					st.Close()
				}
				if connect.CodeOf(err) != connect.CodeUnauthenticated {
					t.Fatalf("stream without a token: %v, want Unauthenticated", err)
				}
			}
			// The event is published only after several body timeouts;
			// the stream must still be there to deliver it.
			var pub sync.WaitGroup
			pub.Add(1)
			go func() {
				defer pub.Done()
				idle := time.NewTimer(4 * bodyTimeout)
				defer idle.Stop()
				select {
				case <-idle.C:
					s.node.rec.Record("probe", "stream still open "+tc.name, nil)
				case <-ctx.Done():
				}
			}()
			defer pub.Wait()
			req := connect.NewRequest(&taskdv1.ListEventsRequest{})
			if tc.header != "" {
				req.Header().Set("Authorization", "Bearer "+tc.header)
			}
			st, err := tc.events.WatchEvents(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			for st.Receive() {
				if st.Msg().Type == "probe" && strings.HasSuffix(st.Msg().Message, tc.name) {
					return
				}
			}
			t.Fatalf("stream ended before the event arrived: %v", st.Err())
		})
	}
}

// TestSlowBodyIsCut: an authenticated request whose body does not arrive
// within the body timeout fails instead of holding the handler.
func TestSlowBodyIsCut(t *testing.T) {
	s := startServer(t, func(c *api.ServerConfig) { c.BodyTimeout = 300 * time.Millisecond })
	for _, http1 := range []bool{true, false} {
		body := newStallingBody([]byte("{"))
		start := time.Now()
		resp := post(t, s.httpClient(http1), s.url+"/taskd.v1.TaskService/CreateTask", s.tokens[auth.Operator], "application/json", body)
		code := connectCode(t, resp)
		body.Close()
		if code == "ok" || time.Since(start) > 5*time.Second {
			t.Fatalf("http1=%v: slow body: %q after %v, want an error within the body timeout", http1, code, time.Since(start))
		}
	}
}
