package tasktype

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/testenv"
)

// TestMain lets the test binary play a taskd that runs an exec program
// and is then killed (TestExecProgramDiesWithTaskd).
func TestMain(m *testing.M) {
	if dir := os.Getenv("TASKD_EXEC_TEST_RUNNER"); dir != "" {
		types, err := ExecTypes(dir, Builtin(Copy{}, nil, nil), quietLog)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		_ = types["job"].Run(context.Background(), json.RawMessage(`{}`), nil, &reporter{})
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestExecProgramDiesWithTaskd: a taskd killed with -9 while its exec
// program runs takes the program with it, so that the attempt cannot go on
// working while another node resumes the task.
func TestExecProgramDiesWithTaskd(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(t.TempDir(), "pid")
	if err := os.WriteFile(filepath.Join(dir, "job"), []byte("#!/bin/sh\necho $$ > "+pidFile+"\nwhile :; do sleep 0.05; done\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	runner := exec.Command(os.Args[0], "-test.run=^$")
	runner.Env = append(os.Environ(), "TASKD_EXEC_TEST_RUNNER="+dir)
	if err := runner.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = runner.Process.Kill(); _ = runner.Wait() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var pid int
	if err := testenv.WaitFor(ctx, 10*time.Millisecond, func() bool {
		b, err := os.ReadFile(pidFile)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && pid > 0
	}); err != nil {
		t.Fatalf("the program did not start: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	if err := runner.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = runner.Wait()
	if err := testenv.WaitFor(ctx, 10*time.Millisecond, func() bool { return syscall.Kill(pid, 0) == syscall.ESRCH }); err != nil {
		t.Fatalf("program %d still runs after its taskd was killed", pid)
	}
}
