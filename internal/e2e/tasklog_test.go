package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/harness"
)

// talkProgram prints three lines (stdout, stderr and a protocol log
// line), waits for the file the spec's "gate" names, then prints two more
// and succeeds.
const talkProgram = `#!/bin/sh
spec=$(cat)
gate=$(printf '%s' "$spec" | sed -n 's/.*"gate":"\([^"]*\)".*/\1/p')
echo "one on stdout, attempt $TASKD_ATTEMPT"
echo "two on stderr" >&2
printf '{"log":"three by the protocol"}\n' >&3
while [ ! -e "$gate" ]; do sleep 0.05; done
echo "four after the gate"
printf '{"log":"five, the last","progress":{"done":1,"total":1}}\n' >&3
`

// syncBuffer is a buffer a process writes while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestExecTaskLog: an exec program's output and log lines are the task's
// log. `taskctl task log ID --follow`, started while the program runs,
// prints the first lines before the task ends (it streams, and the lines
// are stored while the program waits), then the rest, and exits 0 when
// the task ends; `task log ID` afterwards prints the same lines, on any
// node, also with a viewer's token. A malformed id is refused (exit 2), an
// unknown one is not found (exit 4). On both backends.
func TestExecTaskLog(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "talk"), []byte(talkProgram), 0o755); err != nil {
		t.Fatal(err)
	}
	want := []string{"one on stdout, attempt 1", "two on stderr", "three by the protocol", "four after the gate", "five, the last"}
	backendsWith(t, harness.Options{Extra: []string{"--exec-dir", dir}}, func(t *testing.T, c *harness.Cluster) {
		leader := ready(t, c)
		gate := filepath.Join(t.TempDir(), "gate")
		id := create(t, leader, "talk", fmt.Sprintf(`{"gate":%q}`, gate))

		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		var out syncBuffer
		follow := exec.CommandContext(ctx, taskctlBin, "task", "log", id, "--follow")
		follow.Env = append(os.Environ(), leader.CtlEnv()...)
		follow.Stdout, follow.Stderr = &out, &out
		if err := follow.Start(); err != nil {
			t.Fatal(err)
		}
		ended := make(chan error, 1)
		go func() { ended <- follow.Wait() }()
		defer func() { cancel(); <-ended }()

		err := harness.WaitFor(ctxFor(t, 20*time.Second), 20*time.Millisecond, func() bool {
			return strings.Contains(out.String(), want[2])
		})
		if err != nil {
			t.Fatalf("task log --follow did not print the first lines while the program waits: %v\n%s", err, out.String())
		}
		if tk := waitTask(t, c, id, 5*time.Second, "running", func(*taskdv1.Task) bool { return true }); tk.State != "running" {
			t.Fatalf("the task is %s before its gate opened", tk.State)
		}
		if err := os.WriteFile(gate, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-ended:
			ended <- err // for the deferred wait
			if err != nil {
				t.Fatalf("task log --follow: %v\n%s", err, out.String())
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("task log --follow did not end with the task\n%s", out.String())
		}
		checkLog(t, "task log --follow", out.String(), want)

		for _, n := range c.Nodes {
			code, got := runTaskctl(t, n.CtlEnv(), "task", "log", id)
			if code != 0 {
				t.Fatalf("task log on %s: exit %d\n%s", n.Name, code, got)
			}
			checkLog(t, "task log on "+n.Name, got, want)
		}
		viewer := filepath.Join(t.TempDir(), "viewer.token")
		if err := os.WriteFile(viewer, []byte(makeToken(t, leader, "viewer")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		code, got := runTaskctl(t, leader.CtlEnv(), "--token-file", viewer, "task", "log", id, "-o", "json")
		if code != 0 || strings.Count(got, `"seq"`) != len(want) || !strings.Contains(got, want[4]) {
			t.Fatalf("task log as a viewer (json): exit %d\n%s", code, got)
		}
		if code, got := runTaskctl(t, leader.CtlEnv(), "task", "log", "../active/x"); code != 2 {
			t.Errorf("task log with a malformed id: exit %d, want 2\n%s", code, got)
		}
		if code, got := runTaskctl(t, leader.CtlEnv(), "task", "log", "0f8fad5b-d9cb-469f-a165-70867728950e"); code != 4 {
			t.Errorf("task log of an unknown task: exit %d, want 4\n%s", code, got)
		}
	})
}

// checkLog checks that out holds exactly the wanted lines, each after a
// time and the attempt: the three written before the gate first, then the
// two after it. Within each group the order is free: stdout and stderr
// share a pipe, but the protocol's fd 3 is read apart from them.
func checkLog(t *testing.T, what, out string, want []string) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != len(want) {
		t.Fatalf("%s printed %d lines, want %d:\n%s", what, len(lines), len(want), out)
	}
	var texts []string
	for i, l := range lines {
		f := strings.SplitN(l, " ", 3)
		if len(f) != 3 || f[1] != "a1" {
			t.Fatalf("%s line %d is %q, want TIME a1 TEXT", what, i+1, l)
		}
		if _, err := time.Parse("2006-01-02T15:04:05.000Z", f[0]); err != nil {
			t.Errorf("%s line %d: time %q: %v", what, i+1, f[0], err)
		}
		texts = append(texts, f[2])
	}
	for _, g := range [][2]int{{0, 3}, {3, 5}} {
		got, exp := slices.Clone(texts[g[0]:g[1]]), slices.Clone(want[g[0]:g[1]])
		slices.Sort(got)
		slices.Sort(exp)
		if !slices.Equal(got, exp) {
			t.Errorf("%s: lines %d-%d are %q, want %q in some order\n%s", what, g[0]+1, g[1], texts[g[0]:g[1]], want[g[0]:g[1]], out)
		}
	}
}
