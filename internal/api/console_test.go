package api_test

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/auth"
)

// TestConsoleFilesOpenDataNot: the console's files are served without a
// token and hold no data; the data stays behind the token. A request that
// tries to reach the API through the console's path gets a file or 404,
// never data, and writing to the console's path is refused.
func TestConsoleFilesOpenDataNot(t *testing.T) {
	s := startServer(t, nil)
	hc := s.httpClient(false)
	cl := s.client(t, s.tokens[auth.Operator], false)
	created, err := cl.Tasks.CreateTask(context.Background(), connect.NewRequest(&taskdv1.CreateTaskRequest{Type: "sleep", Spec: `{"duration":"1h"}`}))
	if err != nil {
		t.Fatal(err)
	}
	secret := created.Msg.Task.Id
	get := func(method, path, token string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(method, s.url+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	for _, path := range []string{"/ui/", "/ui/app.js", "/ui/api.js", "/ui/views.js", "/ui/app.css"} {
		resp, body := get(http.MethodGet, path, "")
		if resp.StatusCode != 200 || len(body) == 0 {
			t.Errorf("GET %s without a token: %d, %d bytes; want 200 and the file", path, resp.StatusCode, len(body))
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("GET %s: Content-Security-Policy %q", path, csp)
		}
		if strings.Contains(body, secret) {
			t.Errorf("GET %s serves the id of a task: the console's files must hold no data", path)
		}
	}
	if resp, _ := get(http.MethodGet, "/ui", ""); resp.Request.URL.Path != "/ui/" {
		t.Errorf("/ui ends at %s; want a redirect to /ui/", resp.Request.URL.Path)
	}
	for _, path := range []string{"/ui/../taskd.v1.TaskService/ListTasks", "/ui/%2e%2e/taskd.v1.TaskService/ListTasks", "/ui/nosuch.js", "/ui/taskd.v1.TaskService/ListTasks"} {
		resp, body := get(http.MethodGet, path, s.tokens[auth.Admin])
		if strings.Contains(body, secret) {
			t.Errorf("GET %s: %d with data: %q", path, resp.StatusCode, body)
		}
	}
	before := s.snapshot(t)
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		if resp, _ := get(m, "/ui/index.html", s.tokens[auth.Admin]); resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s /ui/index.html: %d; want 405", m, resp.StatusCode)
		}
	}
	if after := s.snapshot(t); after != before {
		t.Errorf("writes to the console's path changed the store")
	}
	// The data the console shows needs a token, as for taskctl.
	resp := post(t, hc, s.url+"/taskd.v1.TaskService/ListTasks", "", "application/json", strings.NewReader("{}"))
	if code := connectCode(t, resp); code != "unauthenticated" {
		t.Errorf("ListTasks without a token: %q; want unauthenticated", code)
	}
}

// TestWhoAmI: each role learns its own name; a join token cannot call it.
func TestWhoAmI(t *testing.T) {
	s := startServer(t, nil)
	for _, r := range auth.Roles {
		got, err := s.client(t, s.tokens[r], false).Tokens.WhoAmI(context.Background(), connect.NewRequest(&taskdv1.WhoAmIRequest{}))
		if r == auth.Join {
			if connect.CodeOf(err) != connect.CodePermissionDenied {
				t.Errorf("WhoAmI with a join token: %v; want permission_denied", err)
			}
			continue
		}
		if err != nil || got.Msg.Role != string(r) || got.Msg.TokenId == "" || !strings.Contains(s.tokens[r], got.Msg.TokenId) {
			t.Errorf("WhoAmI with a %s token: %v %v", r, got, err)
			continue
		}
		checkServerTiming(t, "WhoAmI", got.Header())
	}
}

// serverTiming is the Server-Timing header of a procedure's answer.
var serverTiming = regexp.MustCompile(`^auth;dur=([0-9]+\.[0-9]), handler;dur=([0-9]+\.[0-9])$`)

// checkServerTiming: the answer says how long the server took, and the
// token check's share is part of the whole.
func checkServerTiming(t *testing.T, what string, h http.Header) {
	t.Helper()
	m := serverTiming.FindStringSubmatch(h.Get("Server-Timing"))
	if m == nil {
		t.Errorf("%s: Server-Timing %q; want auth;dur=…, handler;dur=…", what, h.Get("Server-Timing"))
		return
	}
	a, _ := strconv.ParseFloat(m[1], 64)
	w, _ := strconv.ParseFloat(m[2], 64)
	if a > w {
		t.Errorf("%s: Server-Timing %q: the token check (%v ms) is more than the whole (%v ms)", what, m[0], a, w)
	}
}

// TestListTasksPages: filters by state, node and key, newest first, and
// pages with a total; a page larger than the bound is refused.
func TestListTasksPages(t *testing.T) {
	s := startServer(t, nil)
	cl := s.client(t, s.tokens[auth.Operator], false)
	ctx := context.Background()
	var ids []string
	for i := range 7 {
		req := &taskdv1.CreateTaskRequest{Type: "sleep", Spec: `{"duration":"1h"}`}
		if i%2 == 0 {
			req.Node = "n2"
		}
		r, err := cl.Tasks.CreateTask(ctx, connect.NewRequest(req))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.Msg.Task.Id)
	}
	if _, err := cl.Tasks.CancelTask(ctx, connect.NewRequest(&taskdv1.TaskRef{Id: ids[0]})); err != nil {
		t.Fatal(err)
	}
	list := func(req *taskdv1.ListTasksRequest) ([]string, int32) {
		t.Helper()
		r, err := cl.Tasks.ListTasks(ctx, connect.NewRequest(req))
		if err != nil {
			t.Fatalf("ListTasks %v: %v", req, err)
		}
		var out []string
		for _, tk := range r.Msg.Tasks {
			out = append(out, tk.Id)
		}
		return out, r.Msg.Total
	}
	newest := slices.Clone(ids)
	slices.Reverse(newest)
	// Twice: reading every task (the index is not ready: no leader has
	// backfilled it), then from the finished-task index.
	for pass := range 2 {
		if pass == 1 {
			if _, err := s.node.tasks.Backfill(ctx, s.node.tasks.Txn); err != nil {
				t.Fatal(err)
			}
		}
		for _, c := range []struct {
			req   *taskdv1.ListTasksRequest
			want  []string
			total int32
		}{
			{&taskdv1.ListTasksRequest{}, ids, 7},
			{&taskdv1.ListTasksRequest{NewestFirst: true, Limit: 3}, newest[:3], 7},
			{&taskdv1.ListTasksRequest{NewestFirst: true, Limit: 3, Offset: 3}, newest[3:6], 7},
			{&taskdv1.ListTasksRequest{NewestFirst: true, Limit: 3, Offset: 6}, newest[6:], 7},
			{&taskdv1.ListTasksRequest{Limit: 3, Offset: 100}, nil, 7},
			{&taskdv1.ListTasksRequest{Status: "waiting", Node: "n2"}, []string{ids[2], ids[4], ids[6]}, 3},
			{&taskdv1.ListTasksRequest{Status: "cancelled"}, ids[:1], 1},
			{&taskdv1.ListTasksRequest{Key: ids[5]}, ids[5:6], 1},
		} {
			got, total := list(c.req)
			if !slices.Equal(got, c.want) || total != c.total {
				t.Errorf("pass %d: ListTasks %v: %v (total %d); want %v (total %d)", pass, c.req, got, total, c.want, c.total)
			}
		}
	}
	// A filtered newest-first page from the index: the total is the
	// matches found, flagged a lower bound only while more may follow.
	r, err := cl.Tasks.ListTasks(ctx, connect.NewRequest(&taskdv1.ListTasksRequest{NewestFirst: true, Limit: 1, Status: "cancelled"}))
	if err != nil || len(r.Msg.Tasks) != 1 || r.Msg.Tasks[0].Id != ids[0] || r.Msg.Total != 1 || r.Msg.TotalAtLeast {
		t.Errorf("newest cancelled task: %v, %v; want %s, total 1, exact", r, err, ids[0])
	}
	r, err = cl.Tasks.ListTasks(ctx, connect.NewRequest(&taskdv1.ListTasksRequest{Status: "waiting", Explain: true, Limit: 1}))
	if err != nil || len(r.Msg.Tasks) != 1 || r.Msg.Tasks[0].Reason == "" {
		t.Errorf("ListTasks with explain: %v %v; want a reason for the waiting task", r, err)
	}
	for _, bad := range []*taskdv1.ListTasksRequest{{Limit: -1}, {Offset: -1}, {Limit: 100000}, {Node: "../x"}, {Key: strings.Repeat("k", 200)}} {
		if _, err := cl.Tasks.ListTasks(ctx, connect.NewRequest(bad)); connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("ListTasks %v: %v; want invalid_argument", bad, err)
		}
	}
}

// TestWatchTasks: the first message is the unfinished set; a new task and
// a progress write arrive as changes, a cancelled task as removed.
func TestWatchTasks(t *testing.T) {
	s := startServer(t, nil)
	cl := s.client(t, s.tokens[auth.Operator], false)
	viewer := s.client(t, s.tokens[auth.Viewer], false)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	first, err := cl.Tasks.CreateTask(ctx, connect.NewRequest(&taskdv1.CreateTaskRequest{Type: "sleep", Spec: `{"duration":"1h"}`}))
	if err != nil {
		t.Fatal(err)
	}
	st, err := viewer.Tasks.WatchTasks(ctx, connect.NewRequest(&taskdv1.WatchTasksRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	next := func(what string) *taskdv1.WatchTasksResponse {
		t.Helper()
		if !st.Receive() {
			t.Fatalf("%s: stream ended: %v", what, st.Err())
		}
		return st.Msg()
	}
	m := next("snapshot")
	checkServerTiming(t, "WatchTasks", st.ResponseHeader())
	if !m.Snapshot || len(m.Tasks) != 1 || m.Tasks[0].Id != first.Msg.Task.Id || m.Tasks[0].Reason == "" {
		t.Fatalf("first message %v; want a snapshot of the one waiting task, with its reason", m)
	}
	second, err := cl.Tasks.CreateTask(ctx, connect.NewRequest(&taskdv1.CreateTaskRequest{Type: "sleep", Spec: `{"duration":"1h"}`}))
	if err != nil {
		t.Fatal(err)
	}
	m = next("the new task")
	if m.Snapshot || len(m.Tasks) != 1 || m.Tasks[0].Id != second.Msg.Task.Id {
		t.Fatalf("after a create: %v; want the new task", m)
	}
	if _, err := cl.Tasks.CancelTask(ctx, connect.NewRequest(&taskdv1.TaskRef{Id: first.Msg.Task.Id})); err != nil {
		t.Fatal(err)
	}
	m = next("the cancelled task")
	if !slices.Equal(m.Removed, []string{first.Msg.Task.Id}) || len(m.Tasks) != 0 {
		t.Fatalf("after a cancel: %v; want %s removed", m, first.Msg.Task.Id)
	}
}
