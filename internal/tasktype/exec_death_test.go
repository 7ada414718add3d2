package tasktype

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/testenv"
)

// leasedReporter is a reporter whose session always has activeFor left,
// as a live runner's does.
type leasedReporter struct {
	reporter
	activeFor time.Duration
}

func (r *leasedReporter) ActiveFor() time.Duration { return r.activeFor }

// TestMain lets the test binary play a taskd that runs an exec program
// and is then killed or stopped (TestExecProgramDiesWithTaskd,
// TestExecGuardKillsWhileTaskdIsStopped), and the guard it starts.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == GuardArg {
		os.Exit(GuardMain(os.Args[2:], os.Stdin, os.Stdout))
	}
	if dir := os.Getenv("TASKD_EXEC_TEST_RUNNER"); dir != "" {
		types, err := ExecTypes(dir, Builtin(Copy{}, nil, nil), quietLog)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		ms, _ := strconv.Atoi(os.Getenv("TASKD_EXEC_TEST_ACTIVE_MS"))
		var r task.Reporter = &reporter{} // a reporter without a deadline
		if ms > 0 {
			r = &leasedReporter{activeFor: time.Duration(ms) * time.Millisecond}
		}
		_ = types["job"].Run(context.Background(), json.RawMessage(`{}`), nil, r)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runnerWithProgram starts the test binary as a taskd running an exec
// program that starts a background child and then writes a line to beat
// every 50 ms; it returns the runner and the pids of program and child.
func runnerWithProgram(t *testing.T, activeMS int) (runner *exec.Cmd, pid, child int, beat string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	pidFile, beat := filepath.Join(tmp, "pid"), filepath.Join(tmp, "beat")
	prog := fmt.Sprintf("#!/bin/sh\nsleep 600 &\necho $$ $! > %s.new\nmv %s.new %s\nwhile :; do sleep 0.05; echo x >> %s; done\n", pidFile, pidFile, pidFile, beat)
	if err := os.WriteFile(filepath.Join(dir, "job"), []byte(prog), 0o755); err != nil {
		t.Fatal(err)
	}
	runner = exec.Command(os.Args[0], "-test.run=^$")
	runner.Env = append(os.Environ(), "TASKD_EXEC_TEST_RUNNER="+dir, fmt.Sprintf("TASKD_EXEC_TEST_ACTIVE_MS=%d", activeMS))
	if err := runner.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = runner.Process.Kill(); _ = runner.Wait() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := testenv.WaitFor(ctx, 10*time.Millisecond, func() bool {
		b, err := os.ReadFile(pidFile)
		fs := strings.Fields(string(b))
		if err != nil || len(fs) != 2 {
			return false
		}
		pid, _ = strconv.Atoi(fs[0])
		child, _ = strconv.Atoi(fs[1])
		return pid > 0 && child > 0
	}); err != nil {
		t.Fatalf("the program did not start: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL); _ = syscall.Kill(child, syscall.SIGKILL) })
	return runner, pid, child, beat
}

// dead: the process is gone or a zombie (a stopped parent cannot reap
// its dead child).
func dead(pid int) bool {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return syscall.Kill(pid, 0) == syscall.ESRCH
	}
	// The state follows the command in parentheses, which may hold spaces.
	i := bytes.LastIndexByte(st, ')')
	return i > 0 && i+2 < len(st) && st[i+2] == 'Z'
}

func waitGone(t *testing.T, limit time.Duration, what string, pids ...int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	for _, p := range pids {
		if err := testenv.WaitFor(ctx, 10*time.Millisecond, func() bool { return dead(p) }); err != nil {
			st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
			t.Fatalf("process %d still runs %s: %s", p, what, st)
		}
	}
}

// TestExecProgramDiesWithTaskd: a taskd killed with -9 while its exec
// program runs takes the program and the child it started with it, so
// that the attempt cannot go on working while another node resumes the
// task. (The program dies by PR_SET_PDEATHSIG; the child only by the
// guard, which kills the group when taskd's end of its pipe closes.)
func TestExecProgramDiesWithTaskd(t *testing.T) {
	runner, pid, child, _ := runnerWithProgram(t, 0)
	if err := runner.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = runner.Wait()
	waitGone(t, 10*time.Second, "after its taskd was killed", pid, child)
}

// TestExecGuardKillsWhileTaskdIsStopped plays the long pause: taskd is
// stopped (SIGSTOP) while its program works. Its session will expire and
// another node resume the task, so the program and its child must die by
// the local deadline although taskd cannot act. Before that, a taskd that
// renews keeps its program alive well past one deadline.
func TestExecGuardKillsWhileTaskdIsStopped(t *testing.T) {
	const activeMS = 300
	runner, pid, child, beat := runnerWithProgram(t, activeMS)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// 30 beats of 50 ms: five deadlines' worth of renewals.
	if err := testenv.WaitFor(ctx, 10*time.Millisecond, func() bool {
		b, _ := os.ReadFile(beat)
		return bytes.Count(b, []byte("\n")) >= 30
	}); err != nil {
		t.Fatalf("the program did not work: %v", err)
	}
	if dead(pid) || dead(child) {
		t.Fatal("the guard killed the program of a taskd that renews its deadline")
	}
	if err := runner.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	waitGone(t, 5*time.Second, "while its taskd is stopped", pid, child)
	t.Logf("program and child killed %v after taskd was stopped (deadline %d ms, renewed every %v)",
		time.Since(stopped).Round(time.Millisecond), activeMS, guardTick)
	// The runner is still stopped: nothing but the guard killed them.
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", runner.Process.Pid))
	if fs := strings.Fields(string(st)); err != nil || len(fs) < 3 || fs[2] != "T" {
		t.Fatalf("the runner is not stopped any more (%q, %v)", st, err)
	}
}

// sleeper starts sleep 600 in a process group of its own.
func sleeper(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd
}

// TestExecGuardProtocol plays taskd and crafted input against the guard:
// a group past its deadline is killed and one renewed or forgotten is
// not; a line that is not the protocol's kills every group followed
// (the guard can no longer tell which attempts are active) and ends it
// with 2; arguments are refused before anything is followed; EOF (taskd
// died) kills every group.
func TestExecGuardProtocol(t *testing.T) {
	var out bytes.Buffer
	if code := GuardMain([]string{"12"}, strings.NewReader(""), &out); code != 2 || out.Len() != 0 {
		t.Errorf("GuardMain with arguments = %d, %q; want 2 and nothing written", code, out.String())
	}
	for _, bad := range []string{"12", "add x 5", "add 1 5", "add -5 5", "add 12 -1", "active 12", "del", "kill 12", "add 12 5 6"} {
		s := sleeper(t)
		in := fmt.Sprintf("add %d 0\n%s\n", s.Process.Pid, bad)
		if code := GuardMain(nil, strings.NewReader(in), io.Discard); code != 2 {
			t.Errorf("line %q: exit %d, want 2", bad, code)
		}
		if err := s.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
			t.Errorf("after line %q the followed group was not killed: %v", bad, err)
		}
	}
	// EOF: every group followed dies, with or without a deadline.
	a, b := sleeper(t), sleeper(t)
	in := fmt.Sprintf("add %d 0\nadd %d 60000000000\n", a.Process.Pid, b.Process.Pid)
	if code := GuardMain(nil, strings.NewReader(in), io.Discard); code != 0 {
		t.Fatalf("exit %d at EOF", code)
	}
	for _, c := range []*exec.Cmd{a, b} {
		if err := c.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
			t.Fatalf("group %d not killed at EOF: %v", c.Process.Pid, err)
		}
	}
	// Deadlines: late dies; renewed (0.2 s given, renewed to 60 s) and
	// forgotten (del) live on while the guard waits for late.
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() { done <- GuardMain(nil, pr, io.Discard) }()
	late, renewed, forgotten := sleeper(t), sleeper(t), sleeper(t)
	fmt.Fprintf(pw, "add %d 200000000\nadd %d 200000000\nadd %d 200000000\nactive %d 60000000000\ndel %d\n",
		late.Process.Pid, renewed.Process.Pid, forgotten.Process.Pid, renewed.Process.Pid, forgotten.Process.Pid)
	waitGone(t, 5*time.Second, "past its deadline", late.Process.Pid)
	if dead(renewed.Process.Pid) || dead(forgotten.Process.Pid) {
		t.Fatal("the guard killed a renewed or forgotten group")
	}
	fmt.Fprintf(pw, "del %d\n", renewed.Process.Pid)
	pw.Close()
	if code := <-done; code != 0 || dead(renewed.Process.Pid) || dead(forgotten.Process.Pid) {
		t.Fatalf("exit %d; a forgotten group was killed at EOF", code)
	}
}

// TestExecGuardReplaced: a guard that died (killed by someone) is noticed
// at the next line taskd sends it (errGuardGone: the attempt stops, its
// program unprotected), and the next program gets a new guard that works.
func TestExecGuardReplaced(t *testing.T) {
	g, err := theGuard()
	if err != nil {
		t.Fatal(err)
	}
	if err := g.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	s := sleeper(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The pipe breaks once the guard is gone: EPIPE on a write.
	if err := testenv.WaitFor(ctx, 10*time.Millisecond, func() bool {
		return errors.Is(g.add(s.Process.Pid, 0), errGuardGone)
	}); err != nil {
		t.Fatal("writes to a dead guard do not fail")
	}
	g2, err := theGuard()
	if err != nil || g2 == g {
		t.Fatalf("no new guard: %v (same: %v)", err, g2 == g)
	}
	if err := g2.add(s.Process.Pid, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	waitGone(t, 5*time.Second, "past its deadline under the new guard", s.Process.Pid)
}
