package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/harness"
)

// TestTypeLimitsCLI: `taskctl limits` end to end. An admin sets a limit
// of 1 on the sleep type; of two long sleep tasks one runs and `task show`
// of the other names the type's limit and its holder; an operator's token
// may not change the limit (exit 5, nothing changed) but a viewer may
// list it; bad limits exit 2 and an unknown one 4; unset lets the second
// task run. On both backends.
func TestTypeLimitsCLI(t *testing.T) {
	backendsWith(t, harness.Options{}, func(t *testing.T, c *harness.Cluster) {
		leader := ready(t, c)
		env := leader.CtlEnv()
		ctl := func(want int, args ...string) string {
			t.Helper()
			code, out := runTaskctl(t, env, args...)
			if code != want {
				t.Fatalf("taskctl %s: exit %d, want %d\n%s", strings.Join(args, " "), code, want, out)
			}
			return out
		}
		tokenFile := func(role string) string {
			p := filepath.Join(t.TempDir(), role+".token")
			if err := os.WriteFile(p, []byte(makeToken(t, leader, role)+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}
		if out := ctl(0, "limits", "set", "sleep", "1"); !strings.Contains(out, "sleep") || !strings.Contains(out, "1") {
			t.Fatalf("limits set printed %q", out)
		}
		first := create(t, leader, "sleep", `{"duration":"1h"}`)
		waitTask(t, c, first, 20*time.Second, "running", func(tk *taskdv1.Task) bool { return tk.State == "running" })
		second := create(t, leader, "sleep", `{"duration":"1h"}`)
		// The second waits, and says for what.
		waitTask(t, c, second, 20*time.Second, "the type limit named", func(tk *taskdv1.Task) bool {
			return tk.State == "waiting" && strings.Contains(tk.Reason, "limit of type sleep: 1 of 1") && strings.Contains(tk.Reason, first)
		})
		ctl(5, "--token-file", tokenFile("operator"), "limits", "set", "sleep", "5")
		ctl(5, "--token-file", tokenFile("operator"), "limits", "unset", "sleep")
		if out := ctl(0, "--token-file", tokenFile("viewer"), "limits", "list"); !strings.Contains(out, "sleep  1      1") {
			t.Fatalf("limits list as a viewer after an operator's refused changes:\n%s", out)
		}
		ctl(2, "limits", "set", "sleep", "0")
		ctl(2, "limits", "set", "sleep", "100001")
		ctl(2, "limits", "set", "a/b", "1")
		ctl(4, "limits", "unset", "nosuch")
		ctl(0, "limits", "unset", "sleep")
		waitTask(t, c, second, 20*time.Second, "running after the unset", func(tk *taskdv1.Task) bool { return tk.State == "running" })
		if out := ctl(0, "limits", "list"); strings.Contains(out, "sleep") {
			t.Fatalf("limits list after unset:\n%s", out)
		}
	})
}
