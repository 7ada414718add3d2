package e2e

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/sdnotify"
)

// TestSystemdNotify runs taskd as systemd would (Type=notify, a watchdog)
// against a fake NOTIFY_SOCKET: READY=1 comes after the node has joined,
// WATCHDOG=1 follows, and STOPPING=1 comes on SIGTERM.
func TestSystemdNotify(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify.sock")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ports, err := harness.FreePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(taskdBin, "--name", "n1", "--data-dir", filepath.Join(dir, "data"),
		"--listen", "127.0.0.1:"+strconv.Itoa(ports[0]), "--etcd-client-url", "https://127.0.0.1:"+strconv.Itoa(ports[1]),
		"--etcd-peer-url", "https://127.0.0.1:"+strconv.Itoa(ports[2]))
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=400000")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-exited
	})

	// read returns the next datagram's fields.
	read := func(limit time.Duration) map[string]string {
		t.Helper()
		buf := make([]byte, 4096)
		if err := ln.SetReadDeadline(time.Now().Add(limit)); err != nil {
			t.Fatal(err)
		}
		n, err := ln.Read(buf)
		if err != nil {
			t.Fatalf("no notify message within %v: %v", limit, err)
		}
		m, err := sdnotify.Parse(buf[:n])
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	var sawReady, sawWatchdog bool
	for i := 0; i < 200 && !(sawReady && sawWatchdog); i++ {
		m := read(30 * time.Second)
		if m["READY"] == "1" {
			sawReady = true
			if m["STATUS"] == "" {
				t.Errorf("READY=1 without a STATUS: %v", m)
			}
		}
		if m["WATCHDOG"] == "1" {
			sawWatchdog = true
		}
	}
	if !sawReady || !sawWatchdog {
		t.Fatalf("ready %v, watchdog %v", sawReady, sawWatchdog)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if i == 200 {
			t.Fatal("no STOPPING=1 after SIGTERM")
		}
		if read(10 * time.Second)["STOPPING"] == "1" {
			break
		}
	}
}
