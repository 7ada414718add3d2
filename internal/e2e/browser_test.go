package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/testenv"
)

// browser is a headless Chromium that the test starts, with a fresh
// profile, driven over the DevTools protocol.
type browser struct {
	t     failer
	ctx   context.Context
	shots string // where screenshots go
}

// failer is whom the browser reports to: a test, or a helper process in
// a lab namespace (helperFailer).
type failer interface {
	Helper()
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
}

// newBrowser starts Chromium for the cluster's API. It trusts exactly the
// nodes' certificates (by their public keys: the cluster CA is not in the
// system's store), resolves no host name, so it reaches nothing but the
// loopback addresses it is sent to, and runs without the sandbox: as root
// in a container Chromium refuses to start with it.
func newBrowser(t *testing.T, c *harness.Cluster) *browser {
	t.Helper()
	bin := chromiumBin(t)
	for _, n := range c.Nodes {
		if n.Client() == nil {
			t.Fatalf("node %s has no API client", n.Name)
		}
	}
	shots := os.Getenv("TASKD_UI_SHOTS")
	if shots == "" {
		shots = t.TempDir()
	} else if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	profile := t.TempDir()
	opts, err := harness.ChromiumOptions(bin, profile, c)
	if err != nil {
		t.Fatal(err)
	}
	b, stop := startBrowser(t, opts, profile, shots)
	t.Cleanup(stop)
	return b
}

// chromiumBin is Debian's chromium; the test is skipped (or, in CI,
// fails) without it.
func chromiumBin(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		testenv.Missing(t, "chromium (Debian package chromium): %v", err)
	}
	return bin
}

// startBrowser starts Chromium with opts; stop kills it and waits.
func startBrowser(f failer, opts []chromedp.ExecAllocatorOption, profile, shots string) (*browser, func()) {
	f.Helper()
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(f.Logf))
	stop := func() {
		cancel()
		cancelAlloc() // kills Chromium and waits for it
	}
	if err := chromedp.Do(ctx); err != nil {
		stop()
		f.Fatalf("start chromium: %v", err)
	}
	// Chromium's own temporary directory is inside the profile, which the
	// test removes: killed, Chromium leaves it behind (60 of them had
	// piled up in /tmp before).
	if m, _ := filepath.Glob(filepath.Join(profile, "org.chromium.Chromium.*")); len(m) == 0 {
		stop()
		f.Fatalf("chromium keeps its temporary files outside its profile %s", profile)
	}
	f.Logf("screenshots in %s", shots)
	return &browser{t: f, ctx: ctx, shots: shots}, stop
}

// do runs actions with a deadline.
func (b *browser) do(limit time.Duration, actions ...chromedp.Action[chromedp.Void]) error {
	ctx, cancel := context.WithTimeout(b.ctx, limit)
	defer cancel()
	return chromedp.Do(ctx, actions...)
}

func (b *browser) must(limit time.Duration, what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := b.do(limit, actions...); err != nil {
		b.t.Fatalf("browser: %s: %v", what, err)
	}
}

// eval evaluates a JavaScript expression (awaiting a promise) into a T.
func eval[T any](b *browser, expr string) (T, error) {
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
}

// waitJS waits until the expression is true, and says what it was waiting
// for when it is not within limit.
func (b *browser) waitJS(limit time.Duration, what, expr string) {
	b.t.Helper()
	var last error
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	err := harness.WaitFor(ctx, 50*time.Millisecond, func() bool {
		ok, err := eval[bool](b, "!!("+expr+")")
		last = err
		return err == nil && ok
	})
	if err != nil {
		text, _ := eval[string](b, `(document.getElementById('view') || document.body).innerText.slice(0, 2000)`)
		b.t.Fatalf("browser: %s: not within %v (%s); last error %v; the page shows:\n%s", what, limit, expr, last, text)
	}
}

// text is the text of the first element that matches sel ("" if none).
func (b *browser) text(sel string) string {
	s, _ := eval[string](b, fmt.Sprintf(`(document.querySelector(%q) || {}).textContent || ''`, sel))
	return s
}

// shot writes a PNG screenshot of the page.
func (b *browser) shot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(b.shots, name+".png"), png, 0o644); err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
}

// login opens the console on node and logs in with token.
func (b *browser) login(node *harness.Node, token string) {
	b.t.Helper()
	b.loginAt("https://"+node.API+"/ui/", token)
}

// loginAt opens the console at url and logs in with token.
func (b *browser) loginAt(url, token string) {
	b.t.Helper()
	b.must(15*time.Second, "open the console", chromedp.Navigate(url), chromedp.WaitVisible(`#token`))
	b.must(10*time.Second, "log in", chromedp.SendKeys(`#token`, token), chromedp.Click(`#login-submit`))
	b.waitJS(10*time.Second, "logged in", `!document.getElementById('login').checkVisibility() && document.getElementById('view').checkVisibility() && document.getElementById('who').textContent !== ''`)
}

// goTo shows a view (a hash route: "#/tasks").
func (b *browser) goTo(hash string) {
	b.t.Helper()
	if _, err := eval[string](b, fmt.Sprintf("location.hash = %q", hash)); err != nil {
		b.t.Fatalf("go to %s: %v", hash, err)
	}
}
