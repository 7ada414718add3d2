package sdnotify_test

import (
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/sdnotify"
)

// TestSendAndParse: a datagram sent to a fake $NOTIFY_SOCKET reads back as
// the lines sent; bad datagrams are refused.
func TestSendAndParse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify.sock")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	if err := sdnotify.FromEnv().Send(sdnotify.Ready, "STATUS=joined as n1"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	if err := ln.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err := ln.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	m, err := sdnotify.Parse(buf[:n])
	if err != nil || m["READY"] != "1" || m["STATUS"] != "joined as n1" {
		t.Fatalf("parsed %q as %v, %v", buf[:n], m, err)
	}
	for _, bad := range []string{"READY", "=1", "READY=1\nnonsense"} {
		if _, err := sdnotify.Parse([]byte(bad)); err == nil {
			t.Errorf("Parse(%q) accepted a bad datagram", bad)
		}
	}
	t.Setenv("NOTIFY_SOCKET", "")
	if err := sdnotify.FromEnv().Send(sdnotify.Ready); err != nil {
		t.Fatalf("without NOTIFY_SOCKET Send must be a no-op: %v", err)
	}
}

func TestWatchdogInterval(t *testing.T) {
	t.Setenv("WATCHDOG_USEC", "3000000")
	t.Setenv("WATCHDOG_PID", "")
	if d, ok := sdnotify.WatchdogInterval(); !ok || d != 3*time.Second {
		t.Fatalf("WatchdogInterval = %v %v", d, ok)
	}
	t.Setenv("WATCHDOG_PID", "1")
	if _, ok := sdnotify.WatchdogInterval(); ok {
		t.Fatal("a watchdog meant for another pid was taken")
	}
	t.Setenv("WATCHDOG_USEC", "x")
	if _, ok := sdnotify.WatchdogInterval(); ok {
		t.Fatal("a bad WATCHDOG_USEC was taken")
	}
}
