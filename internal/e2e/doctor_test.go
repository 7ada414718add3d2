package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/harness"
)

// TestDoctor: taskctl doctor passes on a healthy cluster and finds each
// injected misconfiguration: a wrong token, a member whose advertised
// address is wrong, and a member with another session timeout.
func TestDoctor(t *testing.T) {
	guessed := filepath.Join(t.TempDir(), "guessed.token")
	if err := os.WriteFile(guessed, []byte(auth.NewToken().String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, 3, harness.Options{SessionTimeout: taskTimeout})
	withToken := c.Nodes[0].CtlEnv()
	var code int
	var out string
	err := harness.WaitFor(ctxFor(t, 60*time.Second), 100*time.Millisecond, func() bool {
		code, out = runTaskctl(t, withToken, "doctor")
		return code == 0
	})
	if err != nil || strings.Contains(out, "FAIL") {
		t.Fatalf("doctor on a healthy cluster: exit %d\n%s", code, out)
	}
	code, out = runTaskctl(t, append(withToken, "TASKD_TOKEN_FILE="+guessed), "doctor")
	if code != 8 || !strings.Contains(out, "token is missing, wrong") {
		t.Errorf("doctor with a wrong token: exit %d\n%s", code, out)
	}

	// Restart n2 advertising a dead address and n3 with another timeout.
	n2, n3 := c.Nodes[1], c.Nodes[2]
	n2.Kill()
	n2.Args = append(n2.Args, "--advertise", "127.0.0.1:1")
	n3.Kill()
	n3.Args = append(n3.Args, "--session-timeout", "8s")
	for _, n := range []*harness.Node{n2, n3} {
		if err := n.Start(); err != nil {
			t.Fatal(err)
		}
	}
	err = harness.WaitFor(ctxFor(t, 60*time.Second), 100*time.Millisecond, func() bool {
		_, out = runTaskctl(t, withToken, "doctor")
		return strings.Contains(out, "different session timeouts") && strings.Contains(out, "127.0.0.1:1")
	})
	if err != nil {
		t.Fatalf("doctor did not find the injected problems:\n%s", out)
	}
	if code, _ := runTaskctl(t, withToken, "doctor"); code != 8 {
		t.Errorf("doctor with problems exited %d; want 8", code)
	}
	t.Logf("taskctl doctor:\n%s", out)
}
