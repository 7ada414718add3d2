package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/harness"
	"google.golang.org/protobuf/encoding/protojson"
)

// The attacker suite of the API (issue 12, findings 4, 7, 8, 12). Each test
// plays one actor of docs/security.md and checks the refusal and that
// nothing changed.

const nobody = 65534

// attackerMain is the test binary re-executed as uid 65534
// (TASKD_E2E_HELPER=readcreds|rawcall).
func attackerMain(mode string) int {
	switch mode {
	case "readcreds":
		// Try to read every file named in $FILES; print what happened.
		readable := 0
		for _, f := range strings.Split(os.Getenv("FILES"), ":") {
			_, err := os.ReadFile(f)
			if err == nil {
				readable++
				fmt.Printf("%s: READABLE\n", f)
				continue
			}
			fmt.Printf("%s: %v\n", f, err)
		}
		if readable > 0 {
			return 1
		}
		return 0
	case "rawcall":
		// POST $BODY_BYTES bytes (or $BODY) to $URL with $TOKEN, without
		// verifying the server: the attacker does not care who answers.
		var body io.Reader = strings.NewReader(os.Getenv("BODY"))
		if n := os.Getenv("BODY_BYTES"); n != "" {
			var size int64
			fmt.Sscan(n, &size)
			body = io.LimitReader(zeros{}, size)
		}
		req, err := http.NewRequest(http.MethodPost, os.Getenv("URL"), body)
		if err != nil {
			fmt.Println(err)
			return 2
		}
		req.Header.Set("Content-Type", "application/json")
		if tok := os.Getenv("TOKEN"); tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		hc := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // the attacker
		start := time.Now()
		resp, err := hc.Do(req)
		if err != nil {
			fmt.Println("error:", err)
			return 2
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		var e struct {
			Code string `json:"code"`
		}
		_ = json.Unmarshal(b, &e)
		fmt.Printf("status=%d code=%s took=%v\n", resp.StatusCode, e.Code, time.Since(start).Round(time.Millisecond))
		return 0
	}
	return 2
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// attackerDir holds copies of the test binary and taskctl that uid 65534
// can execute (go test's build directory is private), and the attacker's
// own files.
func attackerDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "taskd-attacker")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for src, dst := range map[string]string{os.Args[0]: "e2e.test", taskctlBin: "taskctl"} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, dst), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// asNobody runs argv as uid/gid 65534 with env and returns its exit code
// and output.
func asNobody(t *testing.T, env []string, argv ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append([]string{"PATH=/usr/bin:/bin", "HOME=/nonexistent"}, env...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatalf("run %v as uid %d: %v\n%s", argv, nobody, err, out)
	}
	return 0, string(out)
}

// writeAs writes a file owned by uid/gid, mode 0600.
func writeAs(t *testing.T, path string, b []byte, uid int) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, uid, uid); err != nil {
		t.Fatal(err)
	}
}

// state is what an attacker could want to change, read through the API
// with the node's admin token: tokens, VIPs, tasks, priorities and the
// specified members.
func state(t *testing.T, n *harness.Node) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := n.Client()
	var parts []string
	toks, err := c.Tokens.ListTokens(ctx, connect.NewRequest(&taskdv1.ListTokensRequest{}))
	if err != nil {
		t.Fatalf("list tokens: %v", err)
	}
	vs, err := c.VIPs.ListVIPs(ctx, connect.NewRequest(&taskdv1.ListVIPsRequest{}))
	if err != nil {
		t.Fatalf("list vips: %v", err)
	}
	ts, err := c.Tasks.ListTasks(ctx, connect.NewRequest(&taskdv1.ListTasksRequest{Status: "all"}))
	if err != nil {
		t.Fatalf("list tasks: %v", err)
	}
	ms, err := c.Cluster.ListMembers(ctx, connect.NewRequest(&taskdv1.ListMembersRequest{}))
	if err != nil {
		t.Fatalf("list members: %v", err)
	}
	for _, v := range vs.Msg.Vips {
		parts = append(parts, "vip "+v.Service+" "+v.Address+" "+v.Interface)
	}
	for _, tk := range ts.Msg.Tasks {
		parts = append(parts, "task "+tk.Id+" "+tk.Type+" "+tk.Spec)
	}
	for _, m := range ms.Msg.Members {
		parts = append(parts, fmt.Sprintf("member %s priority %d", m.Name, m.Priority))
	}
	parts = append(parts, "specified "+strings.Join(ms.Msg.SpecifiedMembers, ","))
	b, _ := protojson.Marshal(toks.Msg)
	parts = append(parts, string(b))
	return strings.Join(parts, "\n")
}

// readyNode starts a one-node cluster and waits until it leads.
func readyNode(t *testing.T) (*harness.Cluster, *harness.Node) {
	t.Helper()
	c := newCluster(t, 1, harness.Options{SessionTimeout: taskTimeout})
	if _, err := harness.WaitAgreed(ctxFor(t, 60*time.Second), c.Nodes, 0); err != nil {
		t.Fatal(err)
	}
	return c, c.Nodes[0]
}

// makeToken creates a token of role through taskctl with the node's admin
// credentials and returns it.
func makeToken(t *testing.T, n *harness.Node, role string) string {
	t.Helper()
	code, out := runTaskctl(t, n.CtlEnv(), "token", "create", "--role", role, "--description", "attacker test "+role)
	if code != 0 {
		t.Fatalf("token create --role %s: exit %d\n%s", role, code, out)
	}
	return strings.SplitN(out, "\n", 2)[0]
}
