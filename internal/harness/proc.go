// Package harness starts and controls real processes for end-to-end tests
// and benchmarks: taskd nodes and ZooKeeper servers on loopback. Processes
// get SIGKILL when the harness process dies (Pdeathsig), and are only ever
// signalled by the PID the harness started.
package harness

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Proc is a started process.
type Proc struct {
	cmd    *exec.Cmd
	exited chan struct{}
	mu     sync.Mutex
	state  *os.ProcessState
}

// StartProc starts name with args, output appended to logPath.
func StartProc(logPath, name string, args ...string) (*Proc, error) {
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		log.Close()
		p.mu.Lock()
		p.state = cmd.ProcessState
		p.mu.Unlock()
		close(p.exited)
	}()
	return p, nil
}

// PID is the process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Signal sends sig to the process (never to anything else).
func (p *Proc) Signal(sig syscall.Signal) {
	if !p.Exited() {
		_ = p.cmd.Process.Signal(sig)
	}
}

// Wait blocks until the process has exited.
func (p *Proc) Wait() { <-p.exited }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.exited }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// ExitCode is the exit status, or -1 if killed by a signal or still running.
func (p *Proc) ExitCode() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == nil {
		return -1
	}
	return p.state.ExitCode()
}

// Rusage is the resource usage of the exited process (nil while it runs).
func (p *Proc) Rusage() *syscall.Rusage {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == nil {
		return nil
	}
	ru, _ := p.state.SysUsage().(*syscall.Rusage)
	return ru
}

// FreePorts reserves n distinct free loopback TCP ports (released before
// returning). They are drawn at random from below the kernel's ephemeral
// range: a port from inside it can be taken as the source port of some
// outgoing connection while its process restarts (a killed node then
// fails to start again with "address already in use"). This process never
// hands out a port twice; another process may still race for one, which
// is unlikely among ~10,000.
func FreePorts(n int) ([]int, error) {
	lo, hi := portPool()
	ports := make([]int, 0, n)
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	given.Lock()
	defer given.Unlock()
	for tries := 0; len(ports) < n; tries++ {
		if tries > 100*n+1000 {
			return nil, fmt.Errorf("reserve port: no free port in %d-%d", lo, hi)
		}
		p := lo + rand.IntN(hi-lo+1)
		if given.ports[p] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue // in use
		}
		ls = append(ls, l)
		ports = append(ports, p)
		given.ports[p] = true
	}
	return ports, nil
}

var given = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// portPool is the range FreePorts draws from: 10000 up to just below the
// ephemeral range (net.ipv4.ip_local_port_range).
func portPool() (int, int) {
	lo, hi := 10000, 32767
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var elo, ehi int
		if _, err := fmt.Sscan(string(b), &elo, &ehi); err == nil && elo-1 > lo+1000 {
			hi = elo - 1
		}
	}
	return lo, hi
}

// WaitFor evaluates cond every interval until it holds or ctx ends.
func WaitFor(ctx context.Context, interval time.Duration, cond func() bool) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("condition not met: %w", ctx.Err())
		case <-t.C:
		}
	}
}
