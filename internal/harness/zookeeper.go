package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// ZKJar is where Debian's zookeeper package installs the server.
const ZKJar = "/usr/share/java/zookeeper.jar"

// ErrNoZooKeeper: the ZooKeeper server or Java is not installed.
var ErrNoZooKeeper = errors.New("ZooKeeper server not installed (Debian package zookeeper; `make test-deps` installs it)")

// ZKServer is one ZooKeeper server process.
type ZKServer struct {
	ID         int
	ClientPort int
	host       string // client and peer address
	ns         string // network namespace ("" for the current one)
	dir        string
	cfg        string
	proc       *Proc
}

// NSHost places a server: an address inside a network namespace.
type NSHost struct{ NS, Addr string }

// Ensemble is a set of ZooKeeper servers forming one quorum.
type Ensemble struct {
	Servers []*ZKServer
}

// StartEnsemble starts n servers (tickTime 500 ms, so session timeouts of
// 1-20 s are allowed) on loopback under dir and waits until they serve.
func StartEnsemble(dir string, n int) (*Ensemble, error) {
	ports, err := FreePorts(3 * n)
	if err != nil {
		return nil, err
	}
	hosts := make([]NSHost, n)
	for i := range hosts {
		hosts[i] = NSHost{Addr: "127.0.0.1"}
	}
	return startEnsemble(dir, hosts, ports)
}

// StartEnsembleIn starts one server per host, each inside its network
// namespace on its address, with the standard ports (2181, 2888, 3888).
func StartEnsembleIn(dir string, hosts []NSHost) (*Ensemble, error) {
	var ports []int
	for range hosts {
		ports = append(ports, 2181, 2888, 3888)
	}
	return startEnsemble(dir, hosts, ports)
}

func startEnsemble(dir string, hosts []NSHost, ports []int) (*Ensemble, error) {
	n := len(hosts)
	if _, err := exec.LookPath("java"); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoZooKeeper, err)
	}
	if _, err := os.Stat(ZKJar); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoZooKeeper, err)
	}
	var peers strings.Builder
	for i := range n {
		fmt.Fprintf(&peers, "server.%d=%s:%d:%d\n", i+1, hosts[i].Addr, ports[3*i+1], ports[3*i+2])
	}
	e := &Ensemble{}
	for i := range n {
		sdir := filepath.Join(dir, fmt.Sprintf("zk%d", i+1))
		if err := os.MkdirAll(filepath.Join(sdir, "data"), 0o755); err != nil {
			return nil, err
		}
		cfg := fmt.Sprintf("tickTime=500\ninitLimit=20\nsyncLimit=5\ndataDir=%s/data\nclientPort=%d\n"+
			"clientPortAddress=%s\nadmin.enableServer=false\n4lw.commands.whitelist=*\nmaxSessionTimeout=20000\n",
			sdir, ports[3*i], hosts[i].Addr)
		if n > 1 {
			cfg += peers.String()
			if err := os.WriteFile(filepath.Join(sdir, "data", "myid"), fmt.Appendf(nil, "%d\n", i+1), 0o644); err != nil {
				return nil, err
			}
		}
		cfgPath := filepath.Join(sdir, "zoo.cfg")
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
			return nil, err
		}
		e.Servers = append(e.Servers, &ZKServer{ID: i + 1, ClientPort: ports[3*i], host: hosts[i].Addr, ns: hosts[i].NS, dir: sdir, cfg: cfgPath})
	}
	for _, s := range e.Servers {
		if err := s.Start(); err != nil {
			e.Close()
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, s := range e.Servers {
		if err := WaitFor(ctx, 100*time.Millisecond, func() bool { return s.Mode() != "" }); err != nil {
			e.Close()
			return nil, fmt.Errorf("zookeeper %d on %s not serving (log in %s): %w", s.ID, s.Addr(), s.dir, err)
		}
	}
	return e, nil
}

// Close kills every server.
func (e *Ensemble) Close() {
	for _, s := range e.Servers {
		s.Kill()
	}
}

// Addrs lists the client addresses, host:port.
func (e *Ensemble) Addrs() []string {
	out := make([]string, len(e.Servers))
	for i, s := range e.Servers {
		out[i] = s.Addr()
	}
	return out
}

// URL is the taskd --coordinator value for the ensemble under chroot.
func (e *Ensemble) URL(chroot string) string {
	return "zk://" + strings.Join(e.Addrs(), ",") + chroot
}

// Leader returns the server that leads the ensemble, or nil.
func (e *Ensemble) Leader() *ZKServer {
	for _, s := range e.Servers {
		if s.Running() && s.Mode() == "leader" {
			return s
		}
	}
	return nil
}

// Addr is the server's client address.
func (s *ZKServer) Addr() string { return fmt.Sprintf("%s:%d", s.host, s.ClientPort) }

// Running reports whether the process runs.
func (s *ZKServer) Running() bool { return s.proc != nil && !s.proc.Exited() }

// Start runs the server process.
func (s *ZKServer) Start() error {
	argv := []string{"java", "-Xmx192m", "-XX:+UseSerialGC", "-cp", ZKJar,
		"-Dzookeeper.log.dir=" + s.dir, "org.apache.zookeeper.server.quorum.QuorumPeerMain", s.cfg}
	if s.ns != "" {
		argv = append([]string{"ip", "netns", "exec", s.ns}, argv...)
	}
	p, err := StartProc(filepath.Join(s.dir, "server.log"), argv[0], argv[1:]...)
	if err != nil {
		return fmt.Errorf("start zookeeper %d: %w", s.ID, err)
	}
	s.proc = p
	return nil
}

// Kill sends SIGKILL and waits for the exit.
func (s *ZKServer) Kill() {
	if s.proc != nil {
		s.proc.Signal(syscall.SIGKILL)
		s.proc.Wait()
	}
}

// Freeze stops the server with SIGSTOP: it neither answers nor closes its
// connections, like a hung host. The outage lasts exactly until Thaw, with
// no JVM start or election on top (a restart would add both).
func (s *ZKServer) Freeze() { s.proc.Signal(syscall.SIGSTOP) }

// Thaw resumes a frozen server (SIGCONT).
func (s *ZKServer) Thaw() { s.proc.Signal(syscall.SIGCONT) }

// Mode asks the server for its role ("leader", "follower", "standalone");
// "" if it does not answer.
func (s *ZKServer) Mode() string {
	c, err := DialInNS(s.ns, s.Addr(), 500*time.Millisecond)
	if err != nil {
		return ""
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("srvr")); err != nil {
		return ""
	}
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		if m, ok := strings.CutPrefix(sc.Text(), "Mode: "); ok {
			return m
		}
	}
	return ""
}
