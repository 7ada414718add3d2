package testenv

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// zkJar is where Debian's zookeeper package installs the server.
const zkJar = "/usr/share/java/zookeeper.jar"

// ZKServer is one ZooKeeper server process started by a test.
type ZKServer struct {
	ID         int
	ClientPort int
	dir        string
	cfg        string
	t          testing.TB
	cmd        *exec.Cmd
	exited     chan struct{}
}

// Ensemble is a set of ZooKeeper servers forming one quorum.
type Ensemble struct {
	Servers []*ZKServer
}

// StartEnsemble starts n ZooKeeper servers (tickTime 500 ms, so sessions of
// 1-10 s are allowed) on loopback and waits until they serve. Cleanup kills
// them and removes their data.
func StartEnsemble(t testing.TB, n int) *Ensemble {
	t.Helper()
	if _, err := exec.LookPath("java"); err != nil {
		Missing(t, "java (Debian package zookeeper): %v", err)
	}
	if _, err := os.Stat(zkJar); err != nil {
		Missing(t, "ZooKeeper server (Debian package zookeeper): %v", err)
	}
	ports := FreePorts(t, 3*n)
	root := t.TempDir()
	var peers strings.Builder
	for i := range n {
		fmt.Fprintf(&peers, "server.%d=127.0.0.1:%d:%d\n", i+1, ports[3*i+1], ports[3*i+2])
	}
	e := &Ensemble{}
	for i := range n {
		dir := filepath.Join(root, fmt.Sprintf("zk%d", i+1))
		if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
			t.Fatal(err)
		}
		cfg := fmt.Sprintf(`tickTime=500
initLimit=20
syncLimit=5
dataDir=%s/data
clientPort=%d
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=*
maxSessionTimeout=20000
`, dir, ports[3*i])
		if n > 1 {
			cfg += peers.String()
			if err := os.WriteFile(filepath.Join(dir, "data", "myid"), fmt.Appendf(nil, "%d\n", i+1), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		cfgPath := filepath.Join(dir, "zoo.cfg")
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		e.Servers = append(e.Servers, &ZKServer{ID: i + 1, ClientPort: ports[3*i], dir: dir, cfg: cfgPath, t: t})
	}
	for _, s := range e.Servers {
		s.Start()
	}
	t.Cleanup(func() {
		for _, s := range e.Servers {
			s.Kill()
		}
	})
	for _, s := range e.Servers {
		s.WaitServing(60 * time.Second)
	}
	return e
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

// Addr is the server's client address.
func (s *ZKServer) Addr() string { return fmt.Sprintf("127.0.0.1:%d", s.ClientPort) }

// Start runs the server process.
func (s *ZKServer) Start() {
	s.t.Helper()
	log, err := os.OpenFile(filepath.Join(s.dir, "server.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		s.t.Fatal(err)
	}
	cmd := exec.Command("java", "-Xmx192m", "-XX:+UseSerialGC", "-cp", zkJar,
		"-Dzookeeper.log.dir="+s.dir, "org.apache.zookeeper.server.quorum.QuorumPeerMain", s.cfg)
	cmd.Stdout, cmd.Stderr = log, log
	// The server dies with the test binary even if cleanup never runs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		s.t.Fatalf("start zookeeper %d: %v", s.ID, err)
	}
	s.cmd = cmd
	s.exited = make(chan struct{})
	go func(exited chan struct{}) {
		_ = cmd.Wait()
		log.Close()
		close(exited)
	}(s.exited)
}

// Kill sends SIGKILL to the server and waits for it to exit.
func (s *ZKServer) Kill() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.exited
	s.cmd = nil
}

// Mode asks the server for its role ("leader", "follower", "standalone");
// "" if it does not answer.
func (s *ZKServer) Mode() string {
	c, err := net.DialTimeout("tcp", s.Addr(), 500*time.Millisecond)
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

// WaitServing waits until the server reports a mode.
func (s *ZKServer) WaitServing(limit time.Duration) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	if err := WaitFor(ctx, 100*time.Millisecond, func() bool { return s.Mode() != "" }); err != nil {
		s.t.Fatalf("zookeeper %d on %s not serving: %v (log in %s)", s.ID, s.Addr(), err, s.dir)
	}
}

// Leader returns the server that is the ensemble's leader, or nil.
func (e *Ensemble) Leader() *ZKServer {
	for _, s := range e.Servers {
		if s.cmd != nil && s.Mode() == "leader" {
			return s
		}
	}
	return nil
}
