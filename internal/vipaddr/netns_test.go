package vipaddr_test

import (
	"bufio"
	"context"
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

	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/testenv"
	"github.com/taskd/taskd/internal/vipaddr"
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
		prefix, err := vipaddr.ParsePrefix(env("VIP"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		cfg := vipaddr.DefaultConfig()
		cfg.Refresh = time.Second
		if v := env("VALID"); v != "" {
			cfg.ValidLifetime, _ = time.ParseDuration(v)
		}
		cfg.Event = func(e vipaddr.Event) {
			b, _ := json.Marshal(e)
			fmt.Println(string(b))
		}
		iface := "eth0"
		if v := env("IFACE"); v != "" {
			iface = v
		}
		if v := env("ALLOW_IF"); v != "" {
			cfg.Policy.Interfaces = strings.Split(v, ",")
		}
		if v := env("ALLOW_CIDR"); v != "" {
			if cfg.Policy.CIDRs, err = vipaddr.ParseCIDRs(strings.Split(v, ",")); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 2
			}
		}
		err = vipaddr.Hold(ctx, vipaddr.Spec{Service: env("SERVICE"), Prefix: prefix, Interface: iface}, cfg)
		switch {
		case err == nil:
			return 0
		case errors.Is(err, vipaddr.ErrConflict):
			fmt.Fprintln(os.Stderr, err)
			return 3
		case errors.Is(err, vipaddr.ErrLapsed):
			fmt.Fprintln(os.Stderr, err)
			return 4
		case errors.Is(err, vipaddr.ErrNotAllowed):
			fmt.Fprintln(os.Stderr, err)
			return exitNotAllowed
		case errors.Is(err, vipaddr.ErrForeign):
			fmt.Fprintln(os.Stderr, err)
			return exitForeign
		case errors.Is(err, vipaddr.ErrInvalid):
			fmt.Fprintln(os.Stderr, err)
			return exitInvalid
		default:
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	case "query":
		macs, err := vipaddr.Query(ctx, "eth0", netip.MustParseAddr(env("SRC")), netip.MustParseAddr(env("VIP")), 300*time.Millisecond)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println(strings.Join(macs, ","))
		return 0
	case "claim":
		// One gratuitous ARP reply, as a foreign host announcing the
		// address once.
		if err := vipaddr.Claim("eth0", netip.MustParseAddr(env("VIP"))); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	case "cleanup":
		removed, err := vipaddr.Cleanup(strings.Split(env("LABELS"), ","))
		fmt.Println(strings.Join(removed, ";"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	}
	return 2
}

// Exit codes of the "hold" helper for the refusals.
const (
	exitNotAllowed = 5
	exitForeign    = 6
	exitInvalid    = 7
)

// lab adds to testenv.NetLab the helper processes of this package's tests.
type lab struct {
	*testenv.NetLab
	t   *testing.T
	dir string
}

func newLab(t *testing.T, hosts ...string) *lab {
	t.Helper()
	return &lab{NetLab: testenv.NewNetLab(t, hosts...), t: t, dir: t.TempDir()}
}

// start runs a long-lived helper in host's namespace; its stdout lines go
// to a file read by events().
func (l *lab) start(host, mode string, env ...string) (*harness.Proc, string) {
	l.t.Helper()
	log := filepath.Join(l.dir, host+"-"+mode+".log")
	args := append([]string{"netns", "exec", l.NS(host), "env", "TASKD_VIP_HELPER=" + mode}, env...)
	args = append(args, os.Args[0])
	p, err := harness.StartProc(log, "ip", args...)
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { p.Signal(syscall.SIGKILL); p.Wait() })
	return p, log
}

// run runs a helper in host's namespace to completion.
func (l *lab) run(host, mode string, env ...string) (string, error) {
	cmd := exec.Command("ip", "netns", "exec", l.NS(host), os.Args[0])
	cmd.Env = append(os.Environ(), append([]string{"TASKD_VIP_HELPER=" + mode}, env...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func events(t *testing.T, log string) []vipaddr.Event {
	t.Helper()
	f, err := os.Open(log)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []vipaddr.Event
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e vipaddr.Event
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.Kind != "" {
			out = append(out, e)
		}
	}
	return out
}

func hasEvent(t *testing.T, log string, kind vipaddr.EventKind) bool {
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

	a, ok := l.Has("n1", vipAddr)
	if !ok {
		t.Fatal("held vip is not on n1's eth0")
	}
	if a.Label != "eth0:iscsi" || a.PrefixLen != 32 || !a.Deprecated {
		t.Fatalf("vip address %+v: want label eth0:iscsi, /32, deprecated (preferred lifetime 0)", a)
	}
	out, err := l.run("client", "query", "SRC="+l.Addr("client"), "VIP="+vipAddr)
	if err != nil || out != l.MAC("n1") {
		t.Fatalf("ARP for the vip from the client: %q (%v), want only n1's MAC %s", out, err, l.MAC("n1"))
	}

	p.Signal(syscall.SIGTERM)
	p.Wait()
	if p.ExitCode() != 0 {
		t.Fatalf("holder exit code %d after SIGTERM", p.ExitCode())
	}
	if _, ok := l.Has("n1", vipAddr); ok {
		t.Fatal("vip still on n1 after release")
	}
	if out, _ := l.run("client", "query", "SRC="+l.Addr("client"), "VIP="+vipAddr); out != "" {
		t.Fatalf("released vip still answers ARP: %q", out)
	}
}

func TestProbeConflictDoesNotAdd(t *testing.T) {
	l := newLab(t, "n1", "foreign")
	l.IP("-n", l.NS("foreign"), "addr", "add", vipAddr+"/24", "dev", "eth0")
	p, log := l.start("n1", "hold", "VIP="+vipAddr, "SERVICE=iscsi")
	p.Wait()
	if p.ExitCode() != 3 {
		t.Fatalf("holder exit code %d, want 3 (ErrConflict)", p.ExitCode())
	}
	if _, ok := l.Has("n1", vipAddr); ok {
		t.Fatal("vip added although another host answers for it")
	}
	evs := events(t, log)
	if len(evs) != 1 || evs[0].Kind != "probe-conflict" || evs[0].MAC != l.MAC("foreign") {
		t.Fatalf("events %+v, want one probe-conflict naming %s", evs, l.MAC("foreign"))
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
		if e.Kind == "duplicate" && e.MAC != l.MAC("foreign") {
			t.Fatalf("duplicate event names %s, want the foreign host %s", e.MAC, l.MAC("foreign"))
		}
	}
	if _, ok := l.Has("n1", vipAddr); !ok {
		t.Fatal("one foreign claim made the holder drop the vip; the policy defends once")
	}
	// A second claim within the defend window makes the holder let go.
	if _, err := l.run("foreign", "claim", "VIP="+vipAddr); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "release on repeated conflict", func() bool {
		_, held := l.Has("n1", vipAddr)
		return hasEvent(t, log, "released-on-conflict") && !held
	})
}

// A killed holder cannot renew the address's lifetime: the kernel removes
// it on its own, so a dead or frozen holder stops answering.
func TestKilledHolderAddressExpires(t *testing.T) {
	l := newLab(t, "n1")
	p, log := l.start("n1", "hold", "VIP="+vipAddr, "SERVICE=iscsi")
	waitFor(t, 10*time.Second, "vip held", func() bool { return hasEvent(t, log, "held") })
	p.Signal(syscall.SIGKILL)
	p.Wait()
	killed := time.Now()
	waitFor(t, 5*time.Second, "stale vip expiring", func() bool {
		_, ok := l.Has("n1", vipAddr)
		return !ok
	})
	t.Logf("address gone %v after kill -9 (valid lifetime 1s)", time.Since(killed).Round(10*time.Millisecond))
}

func TestCleanupRemovesStaleVIPAfterKill(t *testing.T) {
	l := newLab(t, "n1")
	// A long lifetime, so the address outlives the kill and only the
	// cleanup can remove it.
	p, log := l.start("n1", "hold", "VIP="+vipAddr, "SERVICE=iscsi", "VALID=60s")
	waitFor(t, 10*time.Second, "vip held", func() bool { return hasEvent(t, log, "held") })
	p.Signal(syscall.SIGKILL)
	p.Wait()
	if _, ok := l.Has("n1", vipAddr); !ok {
		t.Fatal("kill -9 removed the vip; the test cannot show cleanup")
	}
	// Another address with a foreign label must survive the cleanup.
	l.IP("-n", l.NS("n1"), "addr", "add", "10.77.0.200/32", "dev", "eth0", "label", "eth0:other")
	out, err := l.run("n1", "cleanup", "LABELS=eth0:iscsi,eth0:nfs")
	if err != nil {
		t.Fatalf("cleanup: %v: %s", err, out)
	}
	if _, ok := l.Has("n1", vipAddr); ok {
		t.Fatal("stale vip survived the cleanup")
	}
	if _, ok := l.Has("n1", "10.77.0.200"); !ok {
		t.Fatal("cleanup removed an address that is not taskd's")
	}
}

// A holder stopped (SIGSTOP) for longer than the address lifetime must not
// bring the address back when it runs again: by then another node may hold
// it. Its kernel address expired; on SIGCONT it neither renews nor
// announces, and Hold ends with ErrLapsed.
func TestStoppedHolderDoesNotReclaim(t *testing.T) {
	l := newLab(t, "n1", "client")
	p, log := l.start("n1", "hold", "VIP="+vipAddr, "SERVICE=iscsi")
	waitFor(t, 10*time.Second, "vip held", func() bool { return hasEvent(t, log, "held") })
	p.Signal(syscall.SIGSTOP)
	waitFor(t, 5*time.Second, "address expiring while stopped", func() bool {
		_, ok := l.Has("n1", vipAddr)
		return !ok
	})
	p.Signal(syscall.SIGCONT)
	select {
	case <-p.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the stopped holder kept holding after SIGCONT")
	}
	if code := p.ExitCode(); code != 4 {
		t.Fatalf("hold ended with exit code %d, want 4 (ErrLapsed)", code)
	}
	if _, ok := l.Has("n1", vipAddr); ok {
		t.Fatal("the stopped holder added the address back")
	}
	if !hasEvent(t, log, "lapsed") {
		t.Fatal("no lapsed event")
	}
	out, err := l.run("client", "query", "VIP="+vipAddr, "SRC="+l.Addr("client"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out) != "" {
		t.Fatalf("after the lapse %q still answers ARP for the vip", out)
	}
}
