package e2e

import (
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/pki"
	"github.com/taskd/taskd/internal/vipaddr"
)

// TestVIPDrainFromConsole: an admin drains the VIP to another node from
// the console's VIP view, in a Chromium on the lab network (the client
// namespace, where an operator's laptop would be). The VIP answers ARP on
// that node within 1 s of the click, never on two MACs at once, and the
// open view shows the new holder within 3 s of the click by its live
// update (the click comes within 1 s of the view's opening, and the view's
// own reload comes 5 s after it).
func TestVIPDrainFromConsole(t *testing.T) {
	chromiumBin(t)
	c := startVIPCluster(t, 6*time.Second)
	samples, sampler, err := c.StartSampler(3*time.Minute, []string{"TASKD_E2E_HELPER=arpsample"}, os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sampler.Signal(syscall.SIGKILL); sampler.Wait() })
	holder := waitVIPOnLeader(t, c, samples)
	to := harness.VIPNodes[0]
	if to == holder {
		to = harness.VIPNodes[1]
	}
	tok, err := auth.ReadTokenFile(auth.LocalFile(c.DataDir("n1")))
	if err != nil {
		t.Fatal(err)
	}
	var dirs, addrs []string
	for _, n := range harness.VIPNodes {
		dirs, addrs = append(dirs, c.DataDir(n)), append(addrs, c.Lab.Addr(n))
	}
	shots := os.Getenv("TASKD_UI_SHOTS")
	if shots == "" {
		shots = t.TempDir()
	}
	oldMAC, err := c.Lab.MAC(holder)
	if err != nil {
		t.Fatal(err)
	}
	// Bounded: killed, the helper takes Chromium with it (chromedp starts
	// it with a parent-death signal).
	cmd := exec.CommandContext(ctxFor(t, 3*time.Minute), "ip", "netns", "exec", c.Lab.NS("client"), "env", "TASKD_E2E_HELPER=vipconsole",
		"CONSOLE=https://"+c.Lab.Addr("n1")+":10600/ui/", "TOKEN="+tok.String(), "DATA_DIRS="+strings.Join(dirs, ","),
		"ADDRS="+strings.Join(addrs, ","), "PROFILE="+t.TempDir(), "SHOTS="+shots, "SERVICE=iscsi", "FROM="+holder, "TO="+to, os.Args[0])
	out, err := cmd.CombinedOutput()
	t.Logf("console helper in the client namespace:\n%s", tail(string(out), 3000))
	if err != nil {
		t.Fatalf("draining from the console: %v", err)
	}
	var clicked time.Time
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "clicked="); ok {
			clicked, err = time.Parse(time.RFC3339Nano, v)
		}
	}
	if clicked.IsZero() || err != nil {
		t.Fatalf("the helper did not say when it clicked (%v)", err)
	}
	var got string
	var at time.Time
	if err := harness.WaitFor(ctxFor(t, 10*time.Second), 10*time.Millisecond, func() bool {
		var mac string
		var ok bool
		at, mac, ok = vipaddr.FirstAnswer(vipaddr.ReadSamples(samples), clicked, oldMAC)
		got = c.NodeOf(mac)
		return ok
	}); err != nil {
		t.Fatalf("no other host answered for the vip after the click: %v", err)
	}
	took := at.Sub(clicked)
	t.Logf("drain from the console: %s -> %s answered %v after the click", holder, got, took.Round(time.Millisecond))
	if got != to || took > time.Second {
		t.Errorf("drain to %s: answered by %s %v after the click (want %s within 1s)", to, got, took, to)
	}
	if n := vipaddr.Overlaps(vipaddr.ReadSamples(samples)); n > 0 {
		t.Fatalf("%d samples were answered by two MACs", n)
	}
}

// waitVIPLeader waits (60 s) for n1 to name a leader and returns it.
func waitVIPLeader(t *testing.T, c *harness.VIPCluster) string {
	t.Helper()
	var leader string
	if err := harness.WaitFor(ctxFor(t, 60*time.Second), 100*time.Millisecond, func() bool {
		leader, _ = c.Leader("n1")
		return leader != ""
	}); err != nil {
		t.Fatalf("no leader: %v", err)
	}
	return leader
}

// waitVIPOnLeader waits for a leader, and for the VIP to answer ARP on
// it; it returns the leader.
func waitVIPOnLeader(t *testing.T, c *harness.VIPCluster, samples string) string {
	t.Helper()
	leader := waitVIPLeader(t, c)
	if err := harness.WaitFor(ctxFor(t, 20*time.Second), 20*time.Millisecond, func() bool {
		_, mac, ok := vipaddr.FirstAnswer(vipaddr.ReadSamples(samples), time.Time{}, "")
		return ok && c.NodeOf(mac) == leader
	}); err != nil {
		t.Fatalf("the leader %s never answered for the vip: %v", leader, err)
	}
	return leader
}

// vipConsoleMain runs in the client namespace: it starts Chromium, logs
// in to the console at $CONSOLE with $TOKEN, waits for $SERVICE's row to
// show the holder $FROM, drains the VIP to $TO with the row's own input
// and button, prints the click's time (clicked=RFC 3339), and waits for
// the row to show $TO as the holder.
func vipConsoleMain() int {
	f := helperFailer{}
	return f.run(func() {
		var leaves []*x509.Certificate
		for _, d := range strings.Split(os.Getenv("DATA_DIRS"), ",") {
			b, err := pki.Load(d)
			if err != nil {
				f.Fatalf("credentials in %s: %v", d, err)
			}
			leaves = append(leaves, b.Leaf)
		}
		bin, err := exec.LookPath("chromium")
		if err != nil {
			f.Fatalf("%v", err)
		}
		profile, shots := os.Getenv("PROFILE"), os.Getenv("SHOTS")
		b, stop := startBrowser(f, harness.ChromiumOptionsFor(bin, profile, leaves, strings.Split(os.Getenv("ADDRS"), ",")...), profile, shots)
		defer stop()
		b.loginAt(os.Getenv("CONSOLE"), os.Getenv("TOKEN"))
		svc, from, to := os.Getenv("SERVICE"), os.Getenv("FROM"), os.Getenv("TO")
		holderJS := fmt.Sprintf(`(document.querySelector('tr[data-vip=%q] td:nth-child(4)') || {}).textContent`, svc)
		// The view also reloads every 5 s. Clicked within 1 s of the
		// view's opening, a row that shows the new holder within 3 s
		// shows it by the live update, not by that reload.
		var opened time.Time
		for try := 0; ; try++ {
			b.goTo("#/timeline")
			b.waitJS(10*time.Second, "the timeline view", `document.querySelector('#view h1')?.textContent === 'Timeline'`)
			opened = time.Now()
			b.goTo("#/vips")
			b.waitJS(20*time.Second, "the VIP's row with its holder "+from, holderJS+fmt.Sprintf(" === %q", from))
			if time.Since(opened) < time.Second {
				break
			}
			if try == 2 {
				f.Fatalf("the VIP view took %v to show its row, three times: a live update cannot be told from the view's 5 s reload", time.Since(opened))
			}
		}
		b.shot("vip-drain-before")
		// Typed and clicked in one step: a live refresh between the
		// two would replace the row, and the text typed with it.
		fmt.Printf("clicked=%s\n", time.Now().Format(time.RFC3339Nano))
		clicked := time.Now()
		if _, err := eval[bool](b, fmt.Sprintf(`(() => { const r = document.querySelector('tr[data-vip=%q]');
			const in_ = r.querySelector('input[aria-label=%q]'), btn = r.querySelector('button[aria-label=%q]');
			in_.value = %q; btn.click(); return true; })()`, svc, "Drain "+svc+" to node", "Drain "+svc, to)); err != nil {
			f.Fatalf("drain from the row: %v", err)
		}
		b.waitJS(3*time.Second, "the row shows the new holder "+to, holderJS+fmt.Sprintf(" === %q", to))
		fmt.Printf("shown after %v\n", time.Since(clicked).Round(time.Millisecond))
		b.shot("vip-drain-after")
	})
}

// helperFailer is a failer for a helper process: Fatalf ends run, which
// reports the failure, after the deferred cleanups ran (Chromium killed).
type helperFailer struct{}

type helperFatal string

func (helperFailer) Helper() {}

func (helperFailer) Logf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }

func (helperFailer) Fatalf(format string, args ...any) {
	panic(helperFatal(fmt.Sprintf(format, args...)))
}

// run runs f; it returns 1 if f called Fatalf, else 0.
func (helperFailer) run(f func()) (code int) {
	defer func() {
		if r := recover(); r != nil {
			msg, ok := r.(helperFatal)
			if !ok {
				panic(r)
			}
			fmt.Fprintln(os.Stderr, "FAIL:", string(msg))
			code = 1
		}
	}()
	f()
	return 0
}
