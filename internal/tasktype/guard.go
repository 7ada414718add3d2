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
	"sync"
	"syscall"
	"time"
)

// GuardArg is the first argument with which taskd runs itself as the
// guard of its exec programs (daemon.MainWith hands it to GuardMain).
//
// Why a process of its own: a program runs beside taskd, not inside it.
// A taskd that is stopped (SIGSTOP, a long pause) or starved of CPU cannot
// kill its program at its local deadline, and a taskd killed with -9 takes
// only the program along (PR_SET_PDEATHSIG), not the children it started.
// Meanwhile the session expires and another node resumes the task: two
// attempts would work at once. The guard is not paused, starved or killed
// with taskd. One guard serves every program of a taskd process (starting
// a process per task would cost more than the task): for each program's
// group, taskd tells it every guardTick how long the attempt stays active;
// the guard kills a group whose time passed without news, and every group
// when taskd's end of the pipe closes (taskd died).
const GuardArg = "__exec-guard"

// guardTick is how often taskd renews a program's deadline.
const guardTick = 100 * time.Millisecond

// guardReady bounds the guard's start.
const guardReady = 5 * time.Second

// GuardMain runs the guard (see GuardArg). Its stdin carries lines from
// taskd:
//
//	add PGID NANOS     follow the process group PGID; its attempt stays
//	                   active NANOS longer (0: no deadline, only taskd's end)
//	active PGID NANOS  the attempt stays active NANOS longer (> 0)
//	del PGID           the program ended: forget its group
//
// It writes "ready" once it reads. A line that is not the protocol's
// kills every group it follows and ends it with status 2 (it can no
// longer tell which attempts are active); EOF kills them and ends it
// with 0.
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
	groups := map[int]time.Time{} // zero: no deadline
	killAll := func() {
		for pgid := range groups {
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
		}
	}
	t := time.NewTimer(time.Hour)
	t.Stop()
	for {
		select {
		case l, ok := <-lines:
			if !ok { // taskd is gone
				killAll()
				return 0
			}
			if err := guardLine(groups, l); err != nil {
				fmt.Fprintf(os.Stderr, "exec guard: %v\n", err)
				killAll()
				return 2
			}
		case <-t.C:
		}
		// Kill the groups whose time is up; wait for the next deadline.
		now := time.Now()
		var next time.Time
		for pgid, at := range groups {
			switch {
			case at.IsZero():
			case !now.Before(at):
				_ = syscall.Kill(-pgid, syscall.SIGKILL)
				delete(groups, pgid)
			case next.IsZero() || at.Before(next):
				next = at
			}
		}
		t.Stop()
		if !next.IsZero() {
			t.Reset(time.Until(next))
		}
	}
}

// guardLine applies one line of taskd's to the followed groups.
func guardLine(groups map[int]time.Time, l string) error {
	f := strings.Fields(l)
	if len(f) < 2 {
		return fmt.Errorf("line %q: not the protocol's", l)
	}
	pgid, err := strconv.Atoi(f[1])
	if err != nil || pgid <= 1 {
		return fmt.Errorf("line %q: bad process group", l)
	}
	var ns int64
	if len(f) == 3 {
		if ns, err = strconv.ParseInt(f[2], 10, 64); err != nil || ns < 0 {
			return fmt.Errorf("line %q: bad duration", l)
		}
	}
	_, known := groups[pgid]
	switch {
	case f[0] == "add" && len(f) == 3:
		groups[pgid] = time.Time{}
		if ns > 0 {
			groups[pgid] = time.Now().Add(time.Duration(ns))
		}
	case f[0] == "active" && len(f) == 3 && ns > 0:
		if known { // a group killed at its deadline stays dead
			groups[pgid] = time.Now().Add(time.Duration(ns))
		}
	case f[0] == "del" && len(f) == 2:
		delete(groups, pgid)
	default:
		return fmt.Errorf("line %q: not the protocol's", l)
	}
	return nil
}

// activeFor is implemented by reporters that know how long the attempt
// stays active unless its session is renewed (the runner's attempts).
type activeFor interface {
	ActiveFor() time.Duration
}

// errGuardGone: the guard's pipe broke; its programs are unprotected.
var errGuardGone = errors.New("exec guard gone")

// guard is taskd's side of its guard process.
type guard struct {
	cmd *exec.Cmd
	mu  sync.Mutex
	w   *os.File
	bad bool
}

// The process's guard, started with its first exec program and replaced
// when its pipe breaks.
var (
	guardMu     sync.Mutex
	sharedGuard *guard
)

// theGuard returns the process's guard, starting one if there is none or
// the last one broke.
func theGuard() (*guard, error) {
	guardMu.Lock()
	defer guardMu.Unlock()
	if g := sharedGuard; g != nil {
		g.mu.Lock()
		bad := g.bad
		g.mu.Unlock()
		if !bad {
			return g, nil
		}
		_ = g.cmd.Process.Kill()
		_ = g.cmd.Wait()
		sharedGuard = nil
	}
	g, err := startGuard()
	if err != nil {
		return nil, err
	}
	sharedGuard = g
	return g, nil
}

// startGuard runs this binary as a guard and waits until it is ready.
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
	cmd.Stdin, cmd.Stderr = pr, os.Stderr
	ready, err := cmd.StdoutPipe()
	if err != nil {
		pr.Close()
		pw.Close()
		return nil, fmt.Errorf("exec guard: %w", err)
	}
	// Its own process group: neither a kill of a program's group nor one
	// of taskd's reaches it. No death signal: it must outlive taskd.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return nil, fmt.Errorf("exec guard: %w", err)
	}
	pr.Close()
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
		pw.Close()
		_ = cmd.Wait()
		<-got // the read ends with the guard
		return nil, fmt.Errorf("exec guard (%s %s): %w", self, GuardArg, err)
	}
	return &guard{cmd: cmd, w: pw}, nil
}

// send writes one line; a guard whose pipe breaks is marked for
// replacement and the error wraps errGuardGone.
func (g *guard) send(format string, args ...any) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.bad {
		return errGuardGone
	}
	_ = g.w.SetWriteDeadline(time.Now().Add(time.Second))
	if _, err := fmt.Fprintf(g.w, format+"\n", args...); err != nil {
		g.bad = true
		g.w.Close()
		return fmt.Errorf("%w: %w", errGuardGone, err)
	}
	return nil
}

// add has the guard follow group pgid, active for d (0: no deadline).
func (g *guard) add(pgid int, d time.Duration) error {
	return g.send("add %d %d", pgid, max(d.Nanoseconds(), 0))
}

// renew tells the guard the attempt of group pgid stays active for d; a
// d of 0 (past the deadline) has the group killed at once.
func (g *guard) renew(pgid int, d time.Duration) error {
	return g.send("active %d %d", pgid, max(d.Nanoseconds(), 1))
}

// remove has the guard forget group pgid, whose program ended.
func (g *guard) remove(pgid int) error { return g.send("del %d", pgid) }
