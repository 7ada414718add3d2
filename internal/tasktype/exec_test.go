package tasktype

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/testenv"
)

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// reporter records what an exec program reported; fenceAfter > 0 makes
// that checkpoint (1-based) and every later one fail with ErrFenced.
type reporter struct {
	mu          sync.Mutex
	checkpoints []string
	progress    task.Progress
	fenceAfter  int
}

func (r *reporter) Checkpoint(cp []byte, p task.Progress) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fenceAfter > 0 && len(r.checkpoints)+1 >= r.fenceAfter {
		return task.ErrFenced
	}
	r.checkpoints, r.progress = append(r.checkpoints, string(cp)), p
	return nil
}
func (r *reporter) Progress(p task.Progress) { r.mu.Lock(); r.progress = p; r.mu.Unlock() }
func (r *reporter) Active() bool             { return true }
func (r *reporter) Attempt() int             { return 1 }
func (r *reporter) TaskID() string           { return "0f8fad5b-d9cb-469f-a165-70867728950e" }
func (r *reporter) RateLimit() (int64, bool, <-chan struct{}) {
	return 0, false, nil
}

// program installs a shell program as an exec type in a root-only dir.
func program(t *testing.T, body string) Exec {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "job")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	types, err := ExecTypes(dir, Builtin(Copy{}, nil, nil), quietLog)
	if err != nil || types["job"] == nil {
		t.Fatalf("exec types: %v %v", types, err)
	}
	return types["job"].(Exec)
}

// TestExecProtocol: spec on stdin, progress and checkpoints on fd 3, the
// checkpoint back on resume, and the exit codes.
func TestExecProtocol(t *testing.T) {
	x := program(t, `spec=$(cat)
start=0
if [ -n "$TASKD_CHECKPOINT_FILE" ]; then start=$(cat "$TASKD_CHECKPOINT_FILE"); fi
echo "spec $spec from $start"
i=$start
while [ $i -lt 3 ]; do
  i=$((i+1))
  echo "{\"progress\":{\"done\":$i,\"total\":3},\"checkpoint\":\"$i\"}" >&3
done
case "$spec" in
  *retry*) echo "disk busy" >&2; exit 75;;
  *bad*) echo "no such volume" >&2; exit 65;;
esac
`)
	ctx := context.Background()
	r := &reporter{}
	if err := x.Run(ctx, json.RawMessage(`{"n":1}`), nil, r); err != nil {
		t.Fatal(err)
	}
	if strings.Join(r.checkpoints, ",") != "1,2,3" || r.progress.Done != 3 || r.progress.Total != 3 {
		t.Fatalf("checkpoints %v progress %+v", r.checkpoints, r.progress)
	}
	r = &reporter{}
	if err := x.Run(ctx, json.RawMessage(`{}`), []byte("2"), r); err != nil || strings.Join(r.checkpoints, ",") != "3" {
		t.Fatalf("resume from 2: %v, checkpoints %v; want only 3", err, r.checkpoints)
	}
	err := x.Run(ctx, json.RawMessage(`"retry"`), nil, &reporter{})
	if err == nil || task.IsPermanent(err) || !strings.Contains(err.Error(), "disk busy") {
		t.Fatalf("exit 75: %v; want a retryable error with the last output line", err)
	}
	err = x.Run(ctx, json.RawMessage(`"bad"`), nil, &reporter{})
	if !task.IsPermanent(err) || !strings.Contains(err.Error(), "no such volume") {
		t.Fatalf("exit 65: %v; want a permanent error", err)
	}
}

// TestExecStop: a stop that leaves the task to the attempt (cancel) sends
// SIGTERM and lets the program checkpoint; a fence kills the whole
// process group at once, children included, and a checkpoint after it is
// refused.
func TestExecStop(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	x := program(t, `sleep 600 &
echo $! > `+pidFile+`
trap 'echo "{\"checkpoint\":\"on-term\"}" >&3; exit 0' TERM
echo '{"checkpoint":"started"}' >&3
while :; do sleep 0.05; done
`)
	childGone := func(t *testing.T) {
		t.Helper()
		b, err := os.ReadFile(pidFile)
		if err != nil {
			t.Fatal(err)
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := testenv.WaitFor(ctx, 10*time.Millisecond, func() bool { return syscall.Kill(pid, 0) == syscall.ESRCH }); err != nil {
			t.Fatalf("child %d of the program still runs after the attempt ended", pid)
		}
	}

	t.Run("cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancelCause(context.Background())
		r := &reporter{}
		done := make(chan error, 1)
		go func() { done <- x.Run(ctx, nil, nil, r) }()
		waitCheckpoints(t, r, 1)
		cancel(errors.Join(errors.New("cancelled by a user"), task.ErrStopAsked))
		if err := <-done; !errors.Is(err, task.ErrStopAsked) {
			t.Fatalf("Run: %v; want the stop cause", err)
		}
		if strings.Join(r.checkpoints, ",") != "started,on-term" {
			t.Fatalf("checkpoints %v; want the program's checkpoint on SIGTERM", r.checkpoints)
		}
		childGone(t)
	})
	t.Run("fenced", func(t *testing.T) {
		r := &reporter{fenceAfter: 1}
		err := x.Run(context.Background(), nil, nil, r)
		if !errors.Is(err, task.ErrFenced) || len(r.checkpoints) != 0 {
			t.Fatalf("Run: %v, checkpoints %v; want ErrFenced and none stored", err, r.checkpoints)
		}
		childGone(t)
	})
	t.Run("session ends", func(t *testing.T) {
		ctx, cancel := context.WithCancelCause(context.Background())
		r := &reporter{}
		done := make(chan error, 1)
		go func() { done <- x.Run(ctx, nil, nil, r) }()
		waitCheckpoints(t, r, 1)
		cancel(errors.New("runner stopping: session ended"))
		<-done
		if len(r.checkpoints) != 1 {
			t.Fatalf("checkpoints %v; the program must get no SIGTERM grace when the session ends", r.checkpoints)
		}
		childGone(t)
	})
}

func waitCheckpoints(t *testing.T, r *reporter, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := testenv.WaitFor(ctx, 10*time.Millisecond, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.checkpoints) >= n
	}); err != nil {
		t.Fatalf("the program made no checkpoint: %v", err)
	}
}

// TestExecTypesRefuseUnsafePrograms plays a local user who tries to get a
// program run as root: a file writable by others, owned by another user,
// a symlink, a built-in's name or a directory open to others are never
// registered.
func TestExecTypesRefuseUnsafePrograms(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("good", 0o755)
	write("openwrite", 0o757)
	write("groupwrite", 0o775)
	write("notexec", 0o644)
	write("copy", 0o755)
	write("Bad.Name", 0o755)
	if err := os.Chown(write("nobodys", 0o755), 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/bin/sh", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	types, err := ExecTypes(dir, Builtin(Copy{}, nil, nil), quietLog)
	if err != nil {
		t.Fatal(err)
	}
	if len(types) != 1 || types["good"] == nil {
		t.Fatalf("registered %v; want only good", types)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if _, err := ExecTypes(dir, Builtin(Copy{}, nil, nil), quietLog); err == nil {
		t.Fatal("a directory writable by others was accepted")
	}
}

// TestExecExamples runs the shell and Python examples of
// examples/exec through the exec type: a run, a resume, a bad spec.
func TestExecExamples(t *testing.T) {
	for _, ex := range []string{"count.sh", "count.py"} {
		t.Run(ex, func(t *testing.T) {
			src, err := os.ReadFile(filepath.Join("..", "..", "examples", "exec", ex))
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
			types, err := ExecTypes(dir, Builtin(Copy{}, nil, nil), quietLog)
			if err != nil || types["count"] == nil {
				t.Fatalf("exec types: %v %v", types, err)
			}
			x, ctx := types["count"], context.Background()
			r := &reporter{}
			if err := x.Run(ctx, json.RawMessage(`{"to":3,"step_ms":10}`), nil, r); err != nil || strings.Join(r.checkpoints, ",") != "1,2,3" {
				t.Fatalf("run: %v, checkpoints %v", err, r.checkpoints)
			}
			r = &reporter{}
			if err := x.Run(ctx, json.RawMessage(`{"to":3,"step_ms":10}`), []byte("2"), r); err != nil || strings.Join(r.checkpoints, ",") != "3" {
				t.Fatalf("resume: %v, checkpoints %v", err, r.checkpoints)
			}
			if err := x.Run(ctx, json.RawMessage(`{"to":"many"}`), nil, &reporter{}); !task.IsPermanent(err) {
				t.Fatalf("bad spec: %v; want permanent", err)
			}
		})
	}
}
