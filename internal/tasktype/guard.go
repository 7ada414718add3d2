package tasktype

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// GuardArg is the first argument with which taskd runs itself as the
// guard of an exec program (daemon.MainWith hands it to GuardMain).
//
// Why a process of its own: the program runs beside taskd, not inside it.
// A taskd that is stopped (SIGSTOP, a long pause) or starved of CPU cannot
// kill its program at its local deadline, and a taskd killed with -9 takes
// only the program along (PR_SET_PDEATHSIG), not the children it started.
// Meanwhile the session expires and another node resumes the task: two
// attempts would work at once. The guard is not paused, starved or killed
// with taskd. taskd tells it, every guardTick, how long the attempt stays
// active; the guard kills the program's process group when that time has
// passed without news, or when taskd's end of the pipe closes without
// "done" (taskd died).
const GuardArg = "__exec-guard"

// guardTick is how often taskd renews the guard's deadline.
const guardTick = 100 * time.Millisecond

// guardReady bounds the guard's start.
const guardReady = 5 * time.Second

// GuardMain runs the guard of an exec program (see GuardArg). Its stdin
// carries lines from taskd: "group PGID" first (the program's process
// group, sent as soon as the program started), then "active NANOS" (the
// attempt stays active that much longer) and at the end "done" (the
// program ended; leave its group alone). It writes "ready" once it reads.
// It returns the exit status: 2 for arguments or a first line that are
// not the protocol's, which kills nothing.
func GuardMain(args []string, stdin io.Reader, stdout io.Writer) int {
	if len(args) != 0 {
		fmt.Fprintln(os.Stderr, "exec guard: takes no arguments")
		return 2
	}
	lines := make(chan string)
	go func() {
		// Ends at EOF, after which the guard exits: nothing to join.
		defer close(lines)
		sc := bufio.NewScanner(stdin)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	fmt.Fprintln(stdout, "ready")
	first, ok := <-lines
	if !ok {
		return 0 // taskd died before it started the program
	}
	pgid, err := strconv.Atoi(strings.TrimPrefix(first, "group "))
	if err != nil || pgid <= 1 || !strings.HasPrefix(first, "group ") {
		fmt.Fprintf(os.Stderr, "exec guard: want \"group PGID\" first, got %q\n", first)
		return 2
	}
	kill := func() { _ = syscall.Kill(-pgid, syscall.SIGKILL) }
	var expired <-chan time.Time // no deadline until taskd sends one
	var t *time.Timer
	for {
		select {
		case l, ok := <-lines:
			ns, err := strconv.ParseInt(strings.TrimPrefix(l, "active "), 10, 64)
			switch {
			case !ok: // taskd is gone
				kill()
				return 0
			case l == "done":
				return 0
			case !strings.HasPrefix(l, "active ") || err != nil || ns <= 0:
				// Not the protocol: the guard cannot tell whether the
				// attempt is active; it must not outlive its fence.
				kill()
				return 0
			case t == nil:
				t = time.NewTimer(time.Duration(ns))
				expired = t.C
			default:
				t.Reset(time.Duration(ns))
			}
		case <-expired:
			kill()
			return 0
		}
	}
}

// activeFor is implemented by reporters that know how long the attempt
// stays active unless its session is renewed (the runner's attempts).
type activeFor interface {
	ActiveFor() time.Duration
}

// guard is taskd's side of a program's guard.
type guard struct {
	cmd *exec.Cmd
	w   *os.File
}

// startGuard runs this binary as a guard and waits until it is ready.
// The caller starts the program next and hands its group to follow at
// once: a taskd killed before follow leaves a program that dies with it
// (PR_SET_PDEATHSIG) before it can do much.
func startGuard() (*guard, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("exec guard: %w", err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("exec guard: %w", err)
	}
	cmd := exec.Command(self, GuardArg)
	cmd.Env, cmd.Dir = []string{"PATH=/usr/bin:/bin"}, "/"
	cmd.Stdin = pr
	ready, err := cmd.StdoutPipe()
	if err != nil {
		pr.Close()
		pw.Close()
		return nil, fmt.Errorf("exec guard: %w", err)
	}
	// Its own process group: neither a kill of the program's group nor
	// one of taskd's reaches it. No death signal: it must outlive taskd.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return nil, fmt.Errorf("exec guard: %w", err)
	}
	pr.Close()
	g := &guard{cmd: cmd, w: pw}
	got := make(chan error, 1)
	go func() {
		b := make([]byte, 6)
		_, err := io.ReadFull(ready, b)
		if err == nil && string(b) != "ready\n" {
			err = fmt.Errorf("it said %q", b)
		}
		got <- err
	}()
	t := time.NewTimer(guardReady)
	defer t.Stop()
	select {
	case err = <-got:
	case <-t.C:
		err = fmt.Errorf("not ready within %v", guardReady)
	}
	if err != nil {
		// A binary that does not know GuardArg may be doing anything.
		_ = cmd.Process.Kill()
		_ = g.stop(false)
		<-got // the read ends with the guard
		return nil, fmt.Errorf("exec guard (%s %s): %w", self, GuardArg, err)
	}
	return g, nil
}

// follow tells the guard the program's process group.
func (g *guard) follow(pgid int) error {
	_ = g.w.SetWriteDeadline(time.Now().Add(time.Second))
	_, err := fmt.Fprintf(g.w, "group %d\n", pgid)
	return err
}

// renew tells the guard how long the attempt stays active.
func (g *guard) renew(d time.Duration) error {
	_ = g.w.SetWriteDeadline(time.Now().Add(time.Second))
	_, err := fmt.Fprintf(g.w, "active %d\n", max(d.Nanoseconds(), 1))
	return err
}

// stop ends the guard: with done, it leaves the group alone; without, it
// kills it (as at taskd's death). It waits for the guard.
func (g *guard) stop(done bool) error {
	if done {
		_ = g.w.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = io.WriteString(g.w, "done\n")
	}
	g.w.Close()
	err := g.cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return fmt.Errorf("exec guard: %w", err)
	}
	return err
}
