package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/api"
	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/pki"
)

// TestLocalUserIsLockedOut (findings 4, 8, 12): an unprivileged local user
// (uid 65534) can read no credential, and every call it makes to change
// something is refused, loopback or not, with no token, a guessed one or a
// viewer's; nothing changes, and the refusals are in the audit trail.
func TestLocalUserIsLockedOut(t *testing.T) {
	_, n := readyNode(t)
	dir := attackerDir(t)
	self, ctl := filepath.Join(dir, "e2e.test"), filepath.Join(dir, "taskctl")
	p := pki.In(n.DataDir)
	creds := []string{auth.LocalFile(n.DataDir), p.CAKey(), p.NodeKey(), p.Secrets(), p.NodeCert(), p.CACert()}

	// The credential files refuse uid 65534 as deployed, and still do
	// when every directory above them is opened up: each file is 0600.
	readAll := func(what string) {
		t.Helper()
		code, out := asNobody(t, []string{"TASKD_E2E_HELPER=readcreds", "FILES=" + strings.Join(creds, ":")}, self)
		if code != 0 || strings.Contains(out, "READABLE") || strings.Count(out, "permission denied") != len(creds) {
			t.Fatalf("uid %d reading the credentials (%s): exit %d\n%s", nobody, what, code, out)
		}
	}
	readAll("as deployed")
	var opened []string
	for d := n.DataDir; d != "/" && d != "."; d = filepath.Dir(d) {
		opened = append(opened, d)
	}
	opened = append(opened, p.Dir)
	modes := map[string]os.FileMode{}
	for _, d := range opened {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		modes[d] = fi.Mode().Perm()
		if err := os.Chmod(d, fi.Mode().Perm()|0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for d, m := range modes {
			os.Chmod(d, m)
		}
	})
	readAll("directories opened")

	before := state(t, n)
	// 1. taskctl as uid 65534 finds no usable credential and says so.
	for _, args := range [][]string{
		{"vip", "set", "evil", "10.99.0.1", "--interface", "lo"},
		{"task", "create", "sleep", "--spec", `{"duration":"1s"}`},
		{"token", "create", "--role", "admin"},
	} {
		code, out := asNobody(t, []string{"TASKD_ENDPOINT=https://" + n.API, "TASKD_DATA_DIR=" + n.DataDir}, append([]string{ctl}, args...)...)
		if code != 5 || !strings.Contains(out, "run taskctl as root") {
			t.Errorf("taskctl %s as uid %d without credentials: exit %d, want 5 and advice\n%s", args[0], nobody, code, out)
		}
	}
	// 2. Raw calls over loopback: no token, a guessed token, a huge body.
	guessed := auth.NewToken().String()
	for _, call := range []struct {
		proc, token, body, bytes string
	}{
		{"/taskd.v1.VIPService/SetVIP", "", `{"service":"evil","address":"10.99.0.1","interface":"lo"}`, ""},
		{"/taskd.v1.TaskService/CreateTask", "", `{"type":"sleep","spec":"{\"duration\":\"1s\"}"}`, ""},
		{"/taskd.v1.TokenService/CreateToken", "", `{"role":"admin"}`, ""},
		{"/taskd.v1.VIPService/SetVIP", guessed, `{"service":"evil","address":"10.99.0.1","interface":"lo"}`, ""},
		{"/taskd.v1.TokenService/CreateToken", guessed, `{"role":"admin"}`, ""},
		{"/taskd.v1.TaskService/CreateTask", "", "", "268435456"},      // 256 MiB, never read
		{"/taskd.v1.TaskService/CreateTask", "", "\xff{{not json", ""}, // malformed, never decoded
	} {
		code, out := asNobody(t, []string{"TASKD_E2E_HELPER=rawcall", "URL=https://" + n.API + call.proc, "TOKEN=" + call.token,
			"BODY=" + call.body, "BODY_BYTES=" + call.bytes}, self)
		if code != 0 || !strings.Contains(out, "status=401 code=unauthenticated") {
			t.Errorf("raw %s as uid %d (token %v, %s bytes): exit %d %s; want 401 unauthenticated", call.proc, nobody, call.token != "", call.bytes, code, out)
		}
	}
	// 3. taskctl with the attacker's own files: a guessed token, then a
	// viewer's token (both 0600, owned by uid 65534), and the public CA.
	caPEM, err := os.ReadFile(p.CACert())
	if err != nil {
		t.Fatal(err)
	}
	writeAs(t, filepath.Join(dir, "ca.crt"), caPEM, nobody)
	writeAs(t, filepath.Join(dir, "guessed.token"), []byte(guessed+"\n"), nobody)
	writeAs(t, filepath.Join(dir, "viewer.token"), []byte(makeToken(t, n, "viewer")+"\n"), nobody)
	before = state(t, n) // now with the viewer token
	for _, tc := range []struct{ file, want string }{{"guessed.token", "unauthenticated"}, {"viewer.token", "permission_denied"}} {
		env := []string{"TASKD_ENDPOINT=https://" + n.API, "TASKD_TOKEN_FILE=" + filepath.Join(dir, tc.file), "TASKD_TLS_CA=" + filepath.Join(dir, "ca.crt")}
		for _, args := range [][]string{
			{"vip", "set", "evil", "10.99.0.1", "--interface", "lo"},
			{"task", "create", "sleep", "--spec", `{"duration":"1s"}`},
			{"token", "create", "--role", "admin"},
			{"service", "set-priority", "n1", "7"},
		} {
			code, out := asNobody(t, env, append([]string{ctl}, args...)...)
			if code != 5 || !strings.Contains(out, tc.want) {
				t.Errorf("taskctl %s with %s: exit %d, want 5 %s\n%s", strings.Join(args, " "), tc.file, code, tc.want, out)
			}
		}
	}
	// Positive control: the viewer token does read.
	if code, out := asNobody(t, []string{"TASKD_ENDPOINT=https://" + n.API, "TASKD_TOKEN_FILE=" + filepath.Join(dir, "viewer.token"),
		"TASKD_TLS_CA=" + filepath.Join(dir, "ca.crt")}, ctl, "service", "list"); code != 0 {
		t.Fatalf("viewer reading: exit %d\n%s", code, out)
	}
	if after := state(t, n); after != before {
		t.Fatalf("the attacker changed the cluster:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	// The refusals are audited, with who tried.
	audits := auditEvents(t, n)
	for _, want := range []map[string]string{
		{"who": "anonymous", "procedure": "/taskd.v1.VIPService/SetVIP", "result": "unauthenticated"},
		{"who": "unverified token " + strings.Split(guessed, ".")[1], "procedure": "/taskd.v1.TokenService/CreateToken"},
		{"role": "viewer", "procedure": "/taskd.v1.VIPService/SetVIP", "result": "permission_denied"},
	} {
		if !hasEvent(audits, want) {
			t.Errorf("audit trail lacks %v", want)
		}
	}
}

type event struct {
	Message string            `json:"message"`
	Attrs   map[string]string `json:"attrs"`
}

// auditEvents reads the audit events of the timeline through taskctl.
func auditEvents(t *testing.T, n *harness.Node) []event {
	t.Helper()
	code, out := runTaskctl(t, n.CtlEnv(), "events", "--type", "audit", "-o", "json")
	if code != 0 {
		t.Fatalf("events: exit %d\n%s", code, out)
	}
	var r struct {
		Events []event `json:"events"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("events -o json: %v\n%s", err, out)
	}
	return r.Events
}

// hasEvent reports whether an event has every attribute of want.
func hasEvent(evs []event, want map[string]string) bool {
	for _, e := range evs {
		ok := true
		for k, v := range want {
			if k == "message" {
				ok = ok && strings.Contains(e.Message, v)
			} else {
				ok = ok && e.Attrs[k] == v
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// TestOperatorCannotAdminister: an operator runs tasks but cannot make
// tokens, set or delete VIPs, or change the election; each attempt is
// refused, audited, and changes nothing.
func TestOperatorCannotAdminister(t *testing.T) {
	_, n := readyNode(t)
	tokFile := filepath.Join(t.TempDir(), "operator.token")
	if err := os.WriteFile(tokFile, []byte(makeToken(t, n, "operator")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out := runTaskctl(t, n.CtlEnv(), "vip", "set", "iscsi", "10.99.0.1", "--interface", "eth0"); code != 0 {
		t.Fatalf("admin sets a VIP: exit %d\n%s", code, out)
	}
	env := append(n.CtlEnv(), "TASKD_TOKEN_FILE="+tokFile)
	before := state(t, n)
	for _, args := range [][]string{
		{"token", "create", "--role", "admin"},
		{"token", "create", "--role", "operator"},
		{"token", "list"},
		{"vip", "set", "evil", "10.99.0.2", "--interface", "eth0"},
		{"vip", "delete", "iscsi"},
		{"vip", "drain", "iscsi"},
		{"service", "set-priority", "n1", "7"},
		{"service", "set-specified-members", "--clear"},
	} {
		if code, out := runTaskctl(t, env, args...); code != 5 || !strings.Contains(out, "permission_denied") {
			t.Errorf("operator: taskctl %s: exit %d, want 5 permission_denied\n%s", strings.Join(args, " "), code, out)
		}
	}
	if after := state(t, n); after != before {
		t.Fatalf("the operator changed what it may not:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	code, id := runTaskctl(t, env, "task", "create", "noop")
	if code != 0 {
		t.Fatalf("operator creating a task: exit %d\n%s", code, id)
	}
	id = strings.TrimSpace(id)
	opID := strings.Split(strings.TrimSpace(mustRead(t, tokFile)), ".")[1]
	audits := auditEvents(t, n)
	if !hasEvent(audits, map[string]string{"procedure": "/taskd.v1.TaskService/CreateTask", "target": id, "token": opID, "role": "operator", "result": "ok"}) ||
		!hasEvent(audits, map[string]string{"procedure": "/taskd.v1.ClusterService/SetSpecifiedMembers", "token": opID, "result": "permission_denied"}) {
		t.Fatalf("audit trail lacks the operator's task or refusal: %+v", audits)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestInsecureCredentialFiles (finding 8): a token file that others can
// read is refused by taskctl (before anything is sent) and by taskd (which
// does not start), as is a group-readable node key.
func TestInsecureCredentialFiles(t *testing.T) {
	c, n := readyNode(t)
	before := state(t, n)
	tokFile := filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(tokFile, []byte(n.Token+"\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if code, out := runTaskctl(t, append(n.CtlEnv(), "TASKD_TOKEN_FILE="+tokFile), "token", "create", "--role", "admin"); code != 5 || !strings.Contains(out, "chmod 600") {
		t.Fatalf("group-readable --token-file: exit %d, want 5 and chmod advice\n%s", code, out)
	}
	if after := state(t, n); after != before {
		t.Fatalf("a refused token file still changed the cluster:\n%s\n%s", before, after)
	}
	n.Kill()
	for _, f := range []string{auth.LocalFile(n.DataDir), pki.In(n.DataDir).NodeKey()} {
		if err := os.Chmod(f, 0o640); err != nil {
			t.Fatal(err)
		}
		if err := n.Start(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-n.Proc.Done():
		case <-ctxFor(t, 30*time.Second).Done():
			t.Fatalf("taskd started with a group-readable %s", f)
		}
		if code := n.Proc.ExitCode(); code != 78 || !strings.Contains(n.Log(), "chmod 600 "+f) {
			t.Fatalf("taskd with a group-readable %s: exit %d, want 78 naming the file\n%s", f, code, tail(n.Log(), 2000))
		}
		if err := os.Chmod(f, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := harness.WaitAgreed(ctxFor(t, 60*time.Second), c.Nodes, 0); err != nil {
		t.Fatalf("node did not come back with its files fixed: %v", err)
	}
	if after := state(t, n); after != before {
		t.Fatalf("the cluster changed across the refused starts:\n%s\n%s", before, after)
	}
}

// TestRevokedTokenStopsEverywhere: a token revoked through one node is
// refused by every node within a second, while the others keep working.
func TestRevokedTokenStopsEverywhere(t *testing.T) {
	c := newCluster(t, 3, harness.Options{SessionTimeout: taskTimeout})
	if _, err := harness.WaitAgreed(ctxFor(t, 60*time.Second), c.Nodes, 0); err != nil {
		t.Fatal(err)
	}
	tok := makeToken(t, c.Nodes[0], "viewer")
	clients := map[string]*api.Client{}
	for _, nd := range c.Nodes {
		cl, err := api.NewClient(api.ClientConfig{Endpoint: nd.API, Token: tok, CA: c.PKI.CA.Pool(), ExpectNode: nd.Name})
		if err != nil {
			t.Fatal(err)
		}
		clients[nd.Name] = cl
	}
	call := func(name string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := clients[name].Cluster.ListMembers(ctx, connect.NewRequest(&taskdv1.ListMembersRequest{}))
		return err
	}
	if err := harness.WaitFor(ctxFor(t, 10*time.Second), 20*time.Millisecond, func() bool {
		for name := range clients {
			if call(name) != nil {
				return false
			}
		}
		return true
	}); err != nil {
		t.Fatal("the new viewer token was never accepted by every node")
	}
	id := strings.Split(tok, ".")[1]
	if code, out := runTaskctl(t, c.Nodes[1].CtlEnv(), "token", "revoke", id); code != 0 {
		t.Fatalf("revoke: exit %d\n%s", code, out)
	}
	revoked := time.Now()
	for name := range clients {
		ctx, cancel := context.WithDeadline(context.Background(), revoked.Add(time.Second))
		err := harness.WaitFor(ctx, 10*time.Millisecond, func() bool {
			return connect.CodeOf(call(name)) == connect.CodeUnauthenticated
		})
		cancel()
		if err != nil {
			t.Errorf("%s still accepts the revoked token a second after revocation", name)
		}
	}
	for _, nd := range c.Nodes {
		if _, err := nd.List(context.Background()); err != nil {
			t.Errorf("%s's admin token stopped working: %v", nd.Name, err)
		}
	}
	// The token stays refused (a later resync does not bring it back).
	if err := call(c.Nodes[2].Name); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("revoked token later: %v", err)
	}
}

// TestJoinToken: a join token pins the cluster's CA, expires by default,
// and its credential may call nothing but Join.
func TestJoinToken(t *testing.T) {
	c, n := readyNode(t)
	code, out := runTaskctl(t, n.CtlEnv(), "token", "create", "--role", "join")
	if code != 0 {
		t.Fatalf("token create --role join: exit %d\n%s", code, out)
	}
	jt, err := pki.ParseJoinToken(strings.SplitN(out, "\n", 2)[0])
	if err != nil {
		t.Fatalf("join token: %v\n%s", err, out)
	}
	if jt.CAHash != c.PKI.CA.Fingerprint() {
		t.Fatalf("join token pins %s, the cluster CA is %s", jt.CAHash, c.PKI.CA.Fingerprint())
	}
	cl, err := api.NewClient(api.ClientConfig{Endpoint: n.API, Token: jt.Credential, CA: c.PKI.CA.Pool()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t, 10*time.Second)
	if _, err := cl.Cluster.ListMembers(ctx, connect.NewRequest(&taskdv1.ListMembersRequest{})); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("join credential reading members: %v, want PermissionDenied", err)
	}
	if _, err := cl.Tokens.CreateToken(ctx, connect.NewRequest(&taskdv1.CreateTokenRequest{Role: "admin"})); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("join credential making a token: %v, want PermissionDenied", err)
	}
	list, err := n.Client().Tokens.ListTokens(ctx, connect.NewRequest(&taskdv1.ListTokensRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	id := strings.Split(jt.Credential, ".")[1]
	for _, tk := range list.Msg.Tokens {
		if tk.Id == id {
			if tk.Role != "join" || tk.Expires == nil || time.Until(tk.Expires.AsTime()) > 24*time.Hour {
				t.Fatalf("join token record: %+v", tk)
			}
			return
		}
	}
	t.Fatalf("join token %s not listed", id)
}
