package harness

import (
	"bufio"
	"context"
	"crypto/tls"
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

// zkNettyJars complete the class path for ZooKeeper's Netty connection
// factory (TLS). zookeeper.jar's manifest names netty-buffer, -common,
// -handler, -transport and -transport-native-epoll; Netty's TLS handler
// also needs the codec and resolver, and epoll its unix-common part. All
// come with Debian's libnetty-java, a dependency of libzookeeper-java.
var zkNettyJars = []string{
	"/usr/share/java/netty-codec.jar",
	"/usr/share/java/netty-resolver.jar",
	"/usr/share/java/netty-transport-native-unix-common.jar",
}

// ErrNoZooKeeper: the ZooKeeper server or Java is not installed.
var ErrNoZooKeeper = errors.New("ZooKeeper server not installed (Debian package zookeeper; `make test-deps` installs it)")

// ZKServer is one ZooKeeper server process. It serves clients on a TLS
// port only (secureClientPort, Netty) and requires a client certificate of
// the test cluster's CA. The harness's own "srvr" probe goes through that
// TLS port like any client: there is no plaintext client port at all.
//
// Quorum traffic between servers is TLS too when the servers live in
// network namespaces (StartEnsembleIn: it crosses the lab network). On
// loopback (StartEnsemble) it never leaves the host and stays plaintext:
// quorum TLS makes a restarted server serve about half a second later,
// which tests that time outages against the local deadline cannot absorb.
type ZKServer struct {
	ID         int
	ClientPort int
	host       string // client and peer address
	ns         string // network namespace ("" for the current one)
	dir        string
	cfg        string
	proc       *Proc
	probe      *tls.Config
}

// NSHost places a server: an address inside a network namespace.
type NSHost struct{ NS, Addr string }

// Ensemble is a set of ZooKeeper servers forming one quorum.
type Ensemble struct {
	Servers []*ZKServer
	// PKI signed the servers' certificates; clients and taskd nodes of the
	// ensemble use its CA and secrets (Options.PKI).
	PKI *PKI
}

// StartEnsemble starts n servers (tickTime 500 ms, so session timeouts of
// 1-20 s are allowed) on loopback under dir and waits until they serve.
// Their certificates come from p (nil: a new PKI under dir).
func StartEnsemble(dir string, n int, p *PKI) (*Ensemble, error) {
	ports, err := FreePorts(3 * n)
	if err != nil {
		return nil, err
	}
	hosts := make([]NSHost, n)
	for i := range hosts {
		hosts[i] = NSHost{Addr: "127.0.0.1"}
	}
	return startEnsemble(dir, hosts, ports, p, false)
}

// StartEnsembleIn starts one server per host, each inside its network
// namespace on its address, with the standard ports (2281 for TLS clients,
// 2888, 3888).
func StartEnsembleIn(dir string, hosts []NSHost, p *PKI) (*Ensemble, error) {
	var ports []int
	for range hosts {
		ports = append(ports, 2281, 2888, 3888)
	}
	return startEnsemble(dir, hosts, ports, p, true)
}

func startEnsemble(dir string, hosts []NSHost, ports []int, p *PKI, quorumTLS bool) (*Ensemble, error) {
	n := len(hosts)
	if _, err := exec.LookPath("java"); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoZooKeeper, err)
	}
	for _, jar := range append([]string{ZKJar}, zkNettyJars...) {
		if _, err := os.Stat(jar); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrNoZooKeeper, err)
		}
	}
	if p == nil {
		var err error
		if p, err = NewPKI(filepath.Join(dir, "pki")); err != nil {
			return nil, err
		}
	}
	probe, err := p.Bundle("zk-probe")
	if err != nil {
		return nil, err
	}
	var peers strings.Builder
	for i := range n {
		fmt.Fprintf(&peers, "server.%d=%s:%d:%d\n", i+1, hosts[i].Addr, ports[3*i+1], ports[3*i+2])
	}
	e := &Ensemble{PKI: p}
	for i := range n {
		sdir := filepath.Join(dir, fmt.Sprintf("zk%d", i+1))
		if err := os.MkdirAll(filepath.Join(sdir, "data"), 0o755); err != nil {
			return nil, err
		}
		keyStore, err := p.ServerPEM(sdir, fmt.Sprintf("zk%d", i+1), hosts[i].Addr)
		if err != nil {
			return nil, err
		}
		cfg := fmt.Sprintf("tickTime=500\ninitLimit=20\nsyncLimit=5\ndataDir=%s/data\n"+
			"secureClientPort=%d\nsecureClientPortAddress=%s\n"+
			"admin.enableServer=false\n4lw.commands.whitelist=*\nmaxSessionTimeout=20000\n",
			sdir, ports[3*i], hosts[i].Addr)
		cfg += zkTLSConfig(keyStore, p.CAFile(), quorumTLS)
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
		e.Servers = append(e.Servers, &ZKServer{ID: i + 1, ClientPort: ports[3*i], host: hosts[i].Addr, ns: hosts[i].NS, dir: sdir, cfg: cfgPath,
			probe: p.ClientTLS(probe)})
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
	return "zks://" + strings.Join(e.Addrs(), ",") + chroot
}

// zkTLSConfig is the zoo.cfg part that makes a server speak TLS only to
// clients (Netty, client certificate required) and, with quorum, to its
// peers, with PEM key and trust stores. Unknown zoo.cfg keys become zookeeper.* system
// properties, which is where ZooKeeper reads the ssl.* settings.
func zkTLSConfig(keyStore, trustStore string, quorum bool) string {
	cfg := "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n" +
		"ssl.keyStore.location=" + keyStore + "\nssl.keyStore.type=PEM\n" +
		"ssl.trustStore.location=" + trustStore + "\nssl.trustStore.type=PEM\n" +
		"ssl.clientAuth=need\n"
	if quorum {
		cfg += "sslQuorum=true\n" +
			"ssl.quorum.keyStore.location=" + keyStore + "\nssl.quorum.keyStore.type=PEM\n" +
			"ssl.quorum.trustStore.location=" + trustStore + "\nssl.quorum.trustStore.type=PEM\n"
	}
	return cfg
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

// PID is the server process's id (in a namespace, "ip netns exec" runs
// the server in its own place), 0 when it was never started.
func (s *ZKServer) PID() int {
	if s.proc == nil {
		return 0
	}
	return s.proc.PID()
}

// Start runs the server process.
func (s *ZKServer) Start() error {
	// C1 only: a test server lives seconds to minutes, and starts
	// measurably sooner without the optimising compiler. The heap is a
	// ceiling, taken only as needed: a benchmark's 100 000 finished tasks
	// with their index entries are some 200 000 nodes, by estimate 150 MB
	// of tree, too close to a 192 MB heap (the server logs nothing that
	// would tell: its logger is SLF4J's no-op).
	argv := []string{"java", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-cp", strings.Join(append([]string{ZKJar}, zkNettyJars...), ":"),
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
	raw, err := DialInNS(s.ns, s.Addr(), 500*time.Millisecond)
	if err != nil {
		return ""
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(time.Second))
	cfg := s.probe.Clone()
	cfg.ServerName = s.host
	c := tls.Client(raw, cfg)
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
