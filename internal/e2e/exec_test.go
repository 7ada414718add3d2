package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/harness"
)

// TestExecTaskResumesAfterRunnerKill: an exec task (the shell example,
// examples/exec/count.sh) runs on a node that is then killed with -9. Its
// program dies with it (no step after the kill), and the task resumes on
// another node from the program's last checkpoint and succeeds. On both
// backends.
func TestExecTaskResumesAfterRunnerKill(t *testing.T) {
	src, err := os.ReadFile(filepath.Join("..", "..", "examples", "exec", "count.sh"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "count"), src, 0o755); err != nil {
		t.Fatal(err)
	}
	backendsWith(t, harness.Options{Extra: []string{"--exec-dir", dir}}, func(t *testing.T, c *harness.Cluster) {
		leader := ready(t, c)
		ledger := filepath.Join(t.TempDir(), "ledger")
		id := create(t, leader, "count", fmt.Sprintf(`{"to":40,"step_ms":200,"ledger":%q}`, ledger))
		tk := waitTask(t, c, id, 20*time.Second, "10 steps on attempt 1", func(tk *taskdv1.Task) bool {
			return tk.State == "running" && tk.Progress.GetDone() >= 10
		})
		victim := c.Node(tk.Runner)
		victim.Kill()
		// The program dies with taskd's last thread (SIGKILL by
		// PR_SET_PDEATHSIG); give that delivery 100 ms.
		killed := time.Now().Add(100 * time.Millisecond)
		tk = waitTask(t, c, id, taskTimeout+20*time.Second, "attempt 2 running", func(tk *taskdv1.Task) bool {
			return tk.Attempt == 2 && tk.State == "running"
		})
		if tk.Runner == victim.Name {
			t.Fatalf("attempt 2 went to the killed runner %s", victim.Name)
		}
		waitTask(t, c, id, 40*time.Second, "success", func(tk *taskdv1.Task) bool { return tk.State == "succeeded" })

		b, err := os.ReadFile(ledger)
		if err != nil {
			t.Fatal(err)
		}
		last1, first2 := 0, 0
		var end1, start2 int64
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			var attempt, step int
			var at int64
			if _, err := fmt.Sscan(l, &attempt, &step, &at); err != nil {
				t.Fatalf("ledger line %q: %v", l, err)
			}
			switch attempt {
			case 1:
				last1, end1 = step, at
				if at > killed.UnixNano() {
					t.Errorf("attempt 1 made step %d after its node was killed: its program outlived taskd", step)
				}
			case 2:
				if first2 == 0 {
					first2, start2 = step, at
				}
			}
		}
		t.Logf("attempt 1 reached step %d; attempt 2 on %s resumed at step %d, %v after the last step of attempt 1",
			last1, tk.Runner, first2, time.Duration(start2-end1))
		if first2 < 2 || first2 > last1+1 {
			t.Errorf("attempt 2 started at step %d after attempt 1 reached %d; want a resume from its checkpoint", first2, last1)
		}
		if start2 <= end1 {
			t.Errorf("the attempts overlapped: attempt 2 stepped at %d before attempt 1's last step at %d", start2, end1)
		}
		if last := strconv.Itoa(40); !strings.Contains(string(b), " "+last+" ") {
			t.Errorf("the count never reached %s", last)
		}
	})
}
