package vip

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/testenv"
)

// The netns tests run the package inside network namespaces they create:
// one per host, and one holding the bridge that joins them. The test binary
// re-executes itself inside a namespace (`ip netns exec NS <test binary>`)
// with TASKD_VIP_HELPER set to act as a holder, a foreign host or an ARP
// client there. Nothing touches the root namespace's network.

func TestMain(m *testing.M) {
	if mode := os.Getenv("TASKD_VIP_HELPER"); mode != "" {
		os.Exit(helperMain(mode))
	}
	os.Exit(m.Run())
}

func helperMain(mode string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	env := os.Getenv
	switch mode {
	case "hold":
		prefix, err := ParsePrefix(env("VIP"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		cfg := DefaultConfig()
		cfg.Refresh = time.Second
		cfg.Event = func(e Event) {
			b, _ := json.Marshal(e)
			fmt.Println(string(b))
		}
		err = Hold(ctx, Spec{Service: env("SERVICE"), Prefix: prefix, Interface: "eth0"}, cfg)
		switch {
		case err == nil:
			return 0
		case errors.Is(err, ErrConflict):
			fmt.Fprintln(os.Stderr, err)
			return 3
		default:
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	case "query":
		macs, err := Query(ctx, "eth0", netip.MustParseAddr(env("SRC")), netip.MustParseAddr(env("VIP")), 300*time.Millisecond)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println(strings.Join(macs, ","))
		return 0
	case "claim":
		// One gratuitous ARP reply, as a foreign host announcing the
		// address once.
		if err := claimOnce("eth0", netip.MustParseAddr(env("VIP"))); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	case "cleanup":
		removed, err := Cleanup(strings.Split(env("LABELS"), ","))
		fmt.Println(strings.Join(removed, ";"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	}
	return 2
}

func claimOnce(ifname string, ip netip.Addr) error {
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		return err
	}
	c, err := openARP(link.Attrs().Index, link.Attrs().HardwareAddr)
	if err != nil {
		return err
	}
	defer c.close()
	return c.send(arpPacket{Op: arpReply, SenderMAC: c.mac, SenderIP: ip, TargetMAC: broadcastMAC, TargetIP: ip}, broadcastMAC)
}

// lab is a set of namespaces on one bridge, subnet 10.77.0.0/24; host i
// has 10.77.0.(10+i) on eth0.
type lab struct {
	t      *testing.T
	prefix string
	hosts  []string
	dir    string
}

func newLab(t *testing.T, hosts ...string) *lab {
	t.Helper()
	testenv.Need(t, "iproute2", "ip")
	if os.Geteuid() != 0 {
		testenv.Missing(t, "network namespaces need root")
	}
	b := make([]byte, 3)
	rand.Read(b)
	l := &lab{t: t, prefix: "tdv" + hex.EncodeToString(b), hosts: hosts, dir: t.TempDir()}
	t.Cleanup(l.destroy)
	br := l.prefix + "-br"
	l.ip("netns", "add", br)
	l.ip("-n", br, "link", "add", "br0", "type", "bridge")
	l.ip("-n", br, "link", "set", "br0", "up")
	for i, h := range hosts {
		ns := l.ns(h)
		l.ip("netns", "add", ns)
		l.ip("-n", br, "link", "add", fmt.Sprintf("v%d", i), "type", "veth", "peer", "name", "eth0", "netns", ns)
		l.ip("-n", br, "link", "set", fmt.Sprintf("v%d", i), "master", "br0", "up")
		l.ip("-n", ns, "link", "set", "lo", "up")
		l.ip("-n", ns, "link", "set", "eth0", "up")
		l.ip("-n", ns, "addr", "add", l.addr(h)+"/24", "dev", "eth0")
	}
	return l
}

func (l *lab) ns(host string) string { return l.prefix + "-" + host }

func (l *lab) addr(host string) string {
	for i, h := range l.hosts {
		if h == host {
			return fmt.Sprintf("10.77.0.%d", 10+i)
		}
	}
	l.t.Fatalf("no host %s", host)
	return ""
}

func (l *lab) ip(args ...string) string {
	l.t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (l *lab) destroy() {
	for _, h := range append([]string{"br"}, l.hosts...) {
		exec.Command("ip", "netns", "del", l.ns(h)).Run()
	}
}

// helper runs the test binary as a helper in host's namespace.
func (l *lab) helper(host, mode string, env ...string) *exec.Cmd {
	cmd := exec.Command("ip", "netns", "exec", l.ns(host), os.Args[0])
	cmd.Env = append(os.Environ(), append([]string{"TASKD_VIP_HELPER=" + mode}, env...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// start runs a long-lived helper; its stdout lines go to a file read by
// events().
func (l *lab) start(host, mode string, env ...string) (*harness.Proc, string) {
	l.t.Helper()
	log := filepath.Join(l.dir, host+"-"+mode+".log")
	args := append([]string{"netns", "exec", l.ns(host), "env", "TASKD_VIP_HELPER=" + mode}, env...)
	args = append(args, os.Args[0])
	p, err := harness.StartProc(log, "ip", args...)
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { p.Signal(syscall.SIGKILL); p.Wait() })
	return p, log
}

func (l *lab) run(host, mode string, env ...string) (string, error) {
	out, err := l.helper(host, mode, env...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (l *lab) mac(host string) string {
	var links []struct {
		Address string `json:"address"`
	}
	if err := json.Unmarshal([]byte(l.ip("-n", l.ns(host), "-j", "link", "show", "dev", "eth0")), &links); err != nil || len(links) != 1 {
		l.t.Fatalf("mac of %s: %v", host, err)
	}
	return links[0].Address
}

type addrInfo struct {
	Local     string `json:"local"`
	PrefixLen int    `json:"prefixlen"`
	Label     string `json:"label"`
	// The kernel reports a permanent address's preferred lifetime as
	// "forever" even when it is deprecated; the flag is what counts.
	Deprecated bool `json:"deprecated"`
}

func (l *lab) addrs(host string) []addrInfo {
	var links []struct {
		AddrInfo []addrInfo `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(l.ip("-n", l.ns(host), "-j", "addr", "show", "dev", "eth0")), &links); err != nil || len(links) != 1 {
		l.t.Fatalf("addresses of %s: %v", host, err)
	}
	return links[0].AddrInfo
}

func (l *lab) has(host, ip string) (addrInfo, bool) {
	for _, a := range l.addrs(host) {
		if a.Local == ip {
			return a, true
		}
	}
	return addrInfo{}, false
}

func events(t *testing.T, log string) []Event {
	t.Helper()
	f, err := os.Open(log)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []Event
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e Event
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.Kind != "" {
			out = append(out, e)
		}
	}
	return out
}

func hasEvent(t *testing.T, log, kind string) bool {
	for _, e := range events(t, log) {
		if e.Kind == kind {
			return true
		}
	}
	return false
}

func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	if err := harness.WaitFor(ctx, 20*time.Millisecond, cond); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

const vipAddr = "10.77.0.100"

func TestHoldAddsAnnouncesAndReleases(t *testing.T) {
	l := newLab(t, "n1", "client")
	p, log := l.start("n1", "hold", "VIP="+vipAddr, "SERVICE=iscsi")
	waitFor(t, 10*time.Second, "vip held", func() bool { return hasEvent(t, log, "held") })

	a, ok := l.has("n1", vipAddr)
	if !ok {
		t.Fatal("held vip is not on n1's eth0")
	}
	if a.Label != "eth0:iscsi" || a.PrefixLen != 32 || !a.Deprecated {
		t.Fatalf("vip address %+v: want label eth0:iscsi, /32, deprecated (preferred lifetime 0)", a)
	}
	out, err := l.run("client", "query", "SRC="+l.addr("client"), "VIP="+vipAddr)
	if err != nil || out != l.mac("n1") {
		t.Fatalf("ARP for the vip from the client: %q (%v), want only n1's MAC %s", out, err, l.mac("n1"))
	}

	p.Signal(syscall.SIGTERM)
	p.Wait()
	if p.ExitCode() != 0 {
		t.Fatalf("holder exit code %d after SIGTERM", p.ExitCode())
	}
	if _, ok := l.has("n1", vipAddr); ok {
		t.Fatal("vip still on n1 after release")
	}
	if out, _ := l.run("client", "query", "SRC="+l.addr("client"), "VIP="+vipAddr); out != "" {
		t.Fatalf("released vip still answers ARP: %q", out)
	}
}

func TestProbeConflictDoesNotAdd(t *testing.T) {
	l := newLab(t, "n1", "foreign")
	l.ip("-n", l.ns("foreign"), "addr", "add", vipAddr+"/24", "dev", "eth0")
	p, log := l.start("n1", "hold", "VIP="+vipAddr, "SERVICE=iscsi")
	p.Wait()
	if p.ExitCode() != 3 {
		t.Fatalf("holder exit code %d, want 3 (ErrConflict)", p.ExitCode())
	}
	if _, ok := l.has("n1", vipAddr); ok {
		t.Fatal("vip added although another host answers for it")
	}
	evs := events(t, log)
	if len(evs) != 1 || evs[0].Kind != "probe-conflict" || evs[0].MAC != l.mac("foreign") {
		t.Fatalf("events %+v, want one probe-conflict naming %s", evs, l.mac("foreign"))
	}
}

func TestDuplicateClaimRaisesEvent(t *testing.T) {
	l := newLab(t, "n1", "foreign")
	_, log := l.start("n1", "hold", "VIP="+vipAddr, "SERVICE=iscsi")
	waitFor(t, 10*time.Second, "vip held", func() bool { return hasEvent(t, log, "held") })
	if _, err := l.run("foreign", "claim", "VIP="+vipAddr); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "duplicate event", func() bool { return hasEvent(t, log, "duplicate") })
	for _, e := range events(t, log) {
		if e.Kind == "duplicate" && e.MAC != l.mac("foreign") {
			t.Fatalf("duplicate event names %s, want the foreign host %s", e.MAC, l.mac("foreign"))
		}
	}
	if _, ok := l.has("n1", vipAddr); !ok {
		t.Fatal("one foreign claim made the holder drop the vip; the policy defends once")
	}
	// A second claim within the defend window makes the holder let go.
	if _, err := l.run("foreign", "claim", "VIP="+vipAddr); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "release on repeated conflict", func() bool {
		_, held := l.has("n1", vipAddr)
		return hasEvent(t, log, "released-on-conflict") && !held
	})
}

func TestCleanupRemovesStaleVIPAfterKill(t *testing.T) {
	l := newLab(t, "n1")
	p, log := l.start("n1", "hold", "VIP="+vipAddr, "SERVICE=iscsi")
	waitFor(t, 10*time.Second, "vip held", func() bool { return hasEvent(t, log, "held") })
	p.Signal(syscall.SIGKILL)
	p.Wait()
	if _, ok := l.has("n1", vipAddr); !ok {
		t.Fatal("kill -9 removed the vip; the test cannot show cleanup")
	}
	// Another address with a foreign label must survive the cleanup.
	l.ip("-n", l.ns("n1"), "addr", "add", "10.77.0.200/32", "dev", "eth0", "label", "eth0:other")
	out, err := l.run("n1", "cleanup", "LABELS=eth0:iscsi,eth0:nfs")
	if err != nil {
		t.Fatalf("cleanup: %v: %s", err, out)
	}
	if _, ok := l.has("n1", vipAddr); ok {
		t.Fatal("stale vip survived the cleanup")
	}
	if _, ok := l.has("n1", "10.77.0.200"); !ok {
		t.Fatal("cleanup removed an address that is not taskd's")
	}
}
