package health_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
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
	"github.com/taskd/taskd/internal/health"
	"github.com/taskd/taskd/internal/testenv"
)

// The probe runs in a network namespace the test creates, re-executing the
// test binary there, and probes that namespace's loopback. Taking lo down
// and up makes every echo fail and pass again; nothing touches the root
// namespace's network.

func TestMain(m *testing.M) {
	if os.Getenv("TASKD_HEALTH_HELPER") == "probe" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		defer stop()
		cfg := health.Config{Targets: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
			Interval: 100 * time.Millisecond, Timeout: 50 * time.Millisecond, Rise: 2, Fall: 2}
		health.Run(ctx, cfg, slog.New(slog.DiscardHandler), func(ok bool, reason string) {
			fmt.Printf("healthy=%v reason=%q\n", ok, reason)
		})
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestConfigValidate(t *testing.T) {
	good := health.DefaultConfig()
	good.Targets = []netip.Addr{netip.MustParseAddr("10.0.0.1")}
	if err := good.Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	for _, bad := range []func(c *health.Config){
		func(c *health.Config) { c.Targets = []netip.Addr{netip.MustParseAddr("fe80::1")} },
		func(c *health.Config) { c.Targets = []netip.Addr{netip.MustParseAddr("224.0.0.1")} },
		func(c *health.Config) { c.Timeout = c.Interval },
		func(c *health.Config) { c.Rise = 0 },
		func(c *health.Config) { c.Fall = 101 },
	} {
		c := good
		bad(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("config %+v accepted", c)
		}
	}
}

func TestRiseFall(t *testing.T) {
	testenv.NeedNetns(t)
	b := make([]byte, 3)
	rand.Read(b)
	ns := "tdh" + hex.EncodeToString(b)
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v %s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	ip("-n", ns, "link", "set", "lo", "up")

	log := filepath.Join(t.TempDir(), "probe.log")
	p, err := harness.StartProc(log, "ip", "netns", "exec", ns, "env", "TASKD_HEALTH_HELPER=probe", os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Signal(syscall.SIGKILL); p.Wait() })
	lines := func() []string {
		b, _ := os.ReadFile(log)
		return strings.FieldsFunc(string(b), func(r rune) bool { return r == '\n' })
	}
	wait := func(n int, what string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := testenv.WaitFor(ctx, 20*time.Millisecond, func() bool { return len(lines()) >= n }); err != nil {
			t.Fatalf("%s: only %q", what, lines())
		}
	}
	// Healthy at start: nothing is reported while lo answers, for five
	// rounds (more than fall).
	quiet := time.NewTimer(500 * time.Millisecond)
	<-quiet.C
	if l := lines(); len(l) != 0 {
		t.Fatalf("reports while healthy: %q", l)
	}
	ip("-n", ns, "link", "set", "lo", "down")
	wait(1, "lo down: no unhealthy report")
	if l := lines(); !strings.HasPrefix(l[0], "healthy=false") || !strings.Contains(l[0], "127.0.0.1") {
		t.Fatalf("first report %q, want unhealthy naming the target", l[0])
	}
	ip("-n", ns, "link", "set", "lo", "up")
	wait(2, "lo up: no healthy report")
	if l := lines(); l[1] != `healthy=true reason=""` || len(l) != 2 {
		t.Fatalf("reports %q, want one unhealthy then one healthy", l)
	}
}
