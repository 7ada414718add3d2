package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/testenv"
	"github.com/taskd/taskd/internal/vip"
)

// helperMain runs inside a lab namespace (the test binary re-executed with
// `ip netns exec`). "arpsample" asks for the VIP every 20 ms and prints which
// MACs answered, one JSON line per sample, for at most LIMIT. "tcpconnect"
// connects to ADDR once.
func helperMain(mode string) int {
	switch mode {
	case "arpsample":
		ip := netip.MustParseAddr(os.Getenv("VIP"))
		src := netip.MustParseAddr(os.Getenv("SRC"))
		limit, err := time.ParseDuration(os.Getenv("LIMIT"))
		if err != nil {
			return 2
		}
		end := time.Now().Add(limit)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		w := bufio.NewWriter(os.Stdout)
		for time.Now().Before(end) {
			at := time.Now()
			macs, err := vip.Query(context.Background(), "eth0", src, ip, 15*time.Millisecond)
			b, _ := json.Marshal(sample{At: at.UnixNano(), MACs: macs, Err: errString(err)})
			w.Write(append(b, '\n'))
			w.Flush()
			<-tick.C
		}
		return 0
	case "tcpconnect":
		c, err := net.DialTimeout("tcp", os.Getenv("ADDR"), 2*time.Second)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		c.Close()
		return 0
	}
	return 2
}

type sample struct {
	At   int64    `json:"t"`
	MACs []string `json:"macs"`
	Err  string   `json:"err,omitempty"`
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func readSamples(t *testing.T, path string) []sample {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []sample
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var s sample
		if json.Unmarshal(sc.Bytes(), &s) == nil && s.At != 0 {
			out = append(out, s)
		}
	}
	return out
}

// vipLab is three taskd nodes with an embedded etcd cluster, each in its own
// namespace on the lab subnet, holding one VIP; and a client namespace.
type vipLab struct {
	t       *testing.T
	lab     *testenv.NetLab
	dir     string
	token   string
	timeout time.Duration
	nodes   map[string]*harness.Proc
}

const labVIP = "10.77.0.100"

func newVIPLab(t *testing.T, timeout time.Duration) *vipLab {
	l := &vipLab{t: t, lab: testenv.NewNetLab(t, "n1", "n2", "n3", "client"), dir: t.TempDir(),
		timeout: timeout, nodes: map[string]*harness.Proc{}}
	l.token = filepath.Join(l.dir, "token")
	if err := os.WriteFile(l.token, []byte("vip-lab-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for name, p := range l.nodes {
			p.Signal(syscall.SIGKILL)
			p.Wait()
			if t.Failed() {
				b, _ := os.ReadFile(filepath.Join(l.dir, name+".log"))
				t.Logf("--- log of %s:\n%s", name, tail(string(b), 3000))
			}
		}
	})
	for _, n := range []string{"n1", "n2", "n3"} {
		l.start(n)
	}
	return l
}

func (l *vipLab) start(name string) {
	l.t.Helper()
	var peers []string
	for _, n := range []string{"n1", "n2", "n3"} {
		peers = append(peers, fmt.Sprintf("%s=http://%s:2380", n, l.lab.Addr(n)))
	}
	args := []string{"netns", "exec", l.lab.NS(name), taskdBin,
		"--name", name, "--data-dir", filepath.Join(l.dir, name),
		"--listen", "0.0.0.0:10600", "--token-file", l.token,
		"--etcd-client-url", "http://127.0.0.1:2379", "--etcd-peer-url", "http://" + l.lab.Addr(name) + ":2380",
		"--etcd-initial-cluster", strings.Join(peers, ","),
		"--session-timeout", l.timeout.String(),
		"--vip", "iscsi=" + labVIP + "/32@eth0", "--log-format", "json"}
	p, err := harness.StartProc(filepath.Join(l.dir, name+".log"), "ip", args...)
	if err != nil {
		l.t.Fatal(err)
	}
	l.nodes[name] = p
}

// leader asks a node (from inside its namespace) who leads, and since when.
func (l *vipLab) leader(from string) (string, time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", l.lab.NS(from), taskctlBin,
		"--token-file", l.token, "service", "list", "-o", "json").Output()
	if err != nil {
		return "", time.Time{}
	}
	var r struct {
		Leader    string    `json:"leader"`
		ElectedAt time.Time `json:"elected_at"`
		Members   []struct {
			Name string `json:"name"`
		} `json:"members"`
	}
	if json.Unmarshal(out, &r) != nil || len(r.Members) != 3 {
		return "", time.Time{}
	}
	return r.Leader, r.ElectedAt
}

func (l *vipLab) sampler(limit time.Duration) string {
	log := filepath.Join(l.dir, "samples.jsonl")
	p, err := harness.StartProc(log, "ip", "netns", "exec", l.lab.NS("client"), "env",
		"TASKD_E2E_HELPER=arpsample", "VIP="+labVIP, "SRC="+l.lab.Addr("client"), "LIMIT="+limit.String(), os.Args[0])
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { p.Signal(syscall.SIGKILL); p.Wait() })
	return log
}

// answeredBy waits for the first sample at or after since in which exactly
// one MAC other than not answers, and returns its time and MAC.
func (l *vipLab) answeredBy(log string, since time.Time, not string, limit time.Duration) (time.Time, string) {
	l.t.Helper()
	var at time.Time
	var mac string
	err := harness.WaitFor(ctxFor(l.t, limit), 20*time.Millisecond, func() bool {
		for _, s := range readSamples(l.t, log) {
			if s.At >= since.UnixNano() && len(s.MACs) == 1 && s.MACs[0] != not {
				at, mac = time.Unix(0, s.At), s.MACs[0]
				return true
			}
		}
		return false
	})
	if err != nil {
		l.t.Fatalf("no answer for the vip from a host other than %q: %v", not, err)
	}
	return at, mac
}

func (l *vipLab) nodeOf(mac string) string {
	for _, n := range []string{"n1", "n2", "n3"} {
		if l.lab.MAC(n) == mac {
			return n
		}
	}
	return "?" + mac
}

// TestVIPFollowsLeader: the leader holds the VIP; kill -9 it and the VIP
// answers ARP and TCP on the new leader within session timeout + 0.5 s;
// the restarted node has no stale VIP; a sampler in the client namespace
// never sees two MACs answer in one sample.
func TestVIPFollowsLeader(t *testing.T) {
	const timeout = 3 * time.Second
	l := newVIPLab(t, timeout)
	samples := l.sampler(3 * time.Minute)
	var leader string
	var electedAt time.Time
	if err := harness.WaitFor(ctxFor(t, 60*time.Second), 100*time.Millisecond, func() bool {
		leader, electedAt = l.leader("n1")
		return leader != ""
	}); err != nil {
		t.Fatalf("no leader: %v", err)
	}
	_, mac := l.answeredBy(samples, time.Now().Add(-time.Hour), "", 20*time.Second)
	if holder := l.nodeOf(mac); holder != leader {
		t.Fatalf("vip answered by %s, leader is %s", holder, leader)
	}

	const rounds = 3
	for round := 1; round <= rounds; round++ {
		old := leader
		oldMAC := l.lab.MAC(old)
		// A new leader moves etcd's raft leadership away, and etcd renews
		// every lease when raft leadership moves: until session timeout
		// + 1 s after the election, a dead leader's lease lives longer
		// (docs/operations.md). Measure taskd's own failover, after that.
		if err := harness.WaitFor(ctxFor(t, 3*timeout), 100*time.Millisecond, func() bool {
			return time.Since(electedAt) > timeout+time.Second
		}); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		l.nodes[old].Signal(syscall.SIGKILL)
		l.nodes[old].Wait()
		at, mac := l.answeredBy(samples, killed, oldMAC, 4*timeout)
		took := at.Sub(killed)
		newHolder := l.nodeOf(mac)
		t.Logf("round %d: kill -9 of %s; vip answered by %s after %v", round, old, newHolder, took.Round(time.Millisecond))
		if took > timeout+500*time.Millisecond {
			t.Errorf("vip failover took %v, more than session timeout + 0.5s (%v)", took, timeout+500*time.Millisecond)
		}
		out, err := exec.Command("ip", "netns", "exec", l.lab.NS("client"), "env", "TASKD_E2E_HELPER=tcpconnect",
			"ADDR="+labVIP+":10600", os.Args[0]).CombinedOutput()
		if err != nil {
			t.Fatalf("TCP connect to the vip from the client after failover: %v: %s", err, out)
		}
		// The killed node's address expired with its lifetime; restart
		// it and it rejoins without holding anything.
		if _, ok := l.lab.Has(old, labVIP); ok {
			t.Fatalf("%s still has the vip %v after its kill", old, time.Since(killed))
		}
		l.start(old)
		if err := harness.WaitFor(ctxFor(t, 60*time.Second), 100*time.Millisecond, func() bool {
			leader, electedAt = l.leader(old)
			return leader != "" && leader != old
		}); err != nil {
			t.Fatalf("%s did not rejoin: %v", old, err)
		}
		if _, ok := l.lab.Has(old, labVIP); ok {
			t.Fatalf("restarted follower %s holds the vip", old)
		}
		if leader != newHolder {
			t.Fatalf("leader %s, vip holder %s", leader, newHolder)
		}
	}

	all := readSamples(t, samples)
	var answered int
	for _, s := range all {
		if len(s.MACs) > 1 {
			t.Fatalf("sample at %v: %d MACs answered for the vip: %v", time.Unix(0, s.At), len(s.MACs), s.MACs)
		}
		if len(s.MACs) == 1 {
			answered++
		}
	}
	if answered < 100 || !slices.ContainsFunc(all, func(s sample) bool { return len(s.MACs) == 0 }) {
		t.Fatalf("%d samples, %d answered: the sampler did not observe the failovers", len(all), answered)
	}
	t.Logf("%d ARP samples, %d answered, none by two MACs", len(all), answered)
}
