package volume_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/nbd"
	"github.com/taskd/taskd/internal/testenv"
	"github.com/taskd/taskd/internal/volume"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// countingListener accepts and drops connections on network/addr, counting
// them: it stands for a socket or host a task must never reach.
func countingListener(t *testing.T, network, addr string) (net.Listener, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln, &n
}

func shortTemp(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "vc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// TestNBDSocketConfinement: a task's nbd+unix socket must be a socket under
// an --nbd-socket-dir, reached without symlinks; with no such directory,
// nbd+unix endpoints are refused, naming the flag. Refused sockets receive
// no connection. The operator's own command (not confined) may use any.
func TestNBDSocketConfinement(t *testing.T) {
	testenv.Need(t, "nbdkit", "nbdkit")
	base := shortTemp(t)
	allowed, elsewhere := filepath.Join(base, "ok"), filepath.Join(base, "no")
	for _, d := range []string{allowed, elsewhere} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := harness.StartNbdkit(allowed, "k", "memory", "size=3M")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	outsideSock := filepath.Join(elsewhere, "v.sock")
	_, reached := countingListener(t, "unix", outsideSock)
	if err := os.Symlink(outsideSock, filepath.Join(allowed, "link.sock")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(elsewhere, filepath.Join(allowed, "linkdir")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(allowed, "plain"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	uri := func(sock string) string { return "nbd+unix:///disk?socket=" + sock }
	confined := volume.Options{Confined: true, NBDSocketDirs: []string{allowed}}

	cases := []struct {
		name string
		sock string
		opts volume.Options
		want error
		says string
	}{
		{"no --nbd-socket-dir", srv.Socket, volume.Options{Confined: true}, volume.ErrNotAllowed, "--nbd-socket-dir"},
		{"socket outside the dirs", outsideSock, confined, volume.ErrNotAllowed, "not under any --nbd-socket-dir"},
		{"dot-dot out of the dir", allowed + "/../no/v.sock", confined, volume.ErrNotAllowed, "not under any"},
		{"symlink to a socket outside", filepath.Join(allowed, "link.sock"), confined, volume.ErrNotAllowed, "symlink"},
		{"symlinked directory", filepath.Join(allowed, "linkdir", "v.sock"), confined, volume.ErrNotAllowed, "symlink"},
		{"not a socket", filepath.Join(allowed, "plain"), confined, volume.ErrInvalid, "not a socket"},
		{"missing socket (retryable)", filepath.Join(allowed, "gone.sock"), confined, nbd.ErrUnreachable, "does not exist"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v, err := volume.Open(ctxT(t), uri(tc.sock), tc.opts)
			if err == nil {
				v.Close()
				t.Fatal("opened")
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("err = %v, want %v saying %q", err, tc.want, tc.says)
			}
		})
	}
	if n := reached.Load(); n > 0 {
		t.Fatalf("the socket outside received %d connections", n)
	}
	v, err := volume.Open(ctxT(t), uri(srv.Socket), confined)
	if err != nil {
		t.Fatalf("socket under --nbd-socket-dir: %v", err)
	}
	if v.Size() != 3<<20 {
		t.Fatalf("size %d through the confined dialer, want 3 MiB", v.Size())
	}
	v.Close()
	// The local command is the operator's own: no confinement.
	v, err = volume.Open(ctxT(t), uri(outsideSock), volume.Options{})
	if err == nil {
		v.Close()
	}
	if reached.Load() == 0 {
		t.Fatalf("unconfined open did not reach the socket: %v", err)
	}
}

// TestNBDHostAllowlist: a task's nbd:// host must be allowed by name, by
// address or by prefix; with no --nbd-allow-host, nbd:// is refused naming
// the flag. Refused hosts receive no connection.
func TestNBDHostAllowlist(t *testing.T) {
	testenv.Need(t, "qemu-utils", "qemu-nbd")
	img := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := testenv.StartQemuNBDTCP(t, "q", img, "-f", "raw", "-r")
	_, port, _ := net.SplitHostPort(srv.Addr)
	// A listener on another loopback address stands for a host no task
	// may reach.
	forbidden, reached := countingListener(t, "tcp", "127.0.0.2:0")
	_, fport, _ := net.SplitHostPort(forbidden.Addr().String())

	cases := []struct {
		name, uri string
		allow     []string
		ok        bool
		says      string
	}{
		{"no --nbd-allow-host", srv.URI(), nil, false, "--nbd-allow-host"},
		{"address allowed", srv.URI(), []string{"127.0.0.1"}, true, ""},
		{"prefix allowed", srv.URI(), []string{"10.0.0.0/8", "127.0.0.0/30"}, true, ""},
		{"name allowed", fmt.Sprintf("nbd://localhost:%s/disk", port), []string{"localhost"}, true, ""},
		{"name resolved into an allowed prefix", fmt.Sprintf("nbd://localhost:%s/disk", port), []string{"127.0.0.1/32"}, true, ""},
		{"address outside the prefixes", fmt.Sprintf("nbd://127.0.0.2:%s/disk", fport), []string{"127.0.0.1", "10.0.0.0/8"}, false, "not in --nbd-allow-host"},
		{"address when only a name is allowed", fmt.Sprintf("nbd://127.0.0.2:%s/disk", fport), []string{"localhost"}, false, "not in --nbd-allow-host"},
		{"name resolving outside the prefixes", fmt.Sprintf("nbd://localhost:%s/disk", fport), []string{"10.0.0.0/8"}, false, "not in --nbd-allow-host"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v, err := volume.Open(ctxT(t), tc.uri, volume.Options{Confined: true, NBDAllowHosts: tc.allow})
			if tc.ok {
				if err != nil {
					t.Fatalf("allowed host refused: %v", err)
				}
				v.Close()
				return
			}
			if err == nil {
				v.Close()
				t.Fatal("opened")
			}
			if !errors.Is(err, volume.ErrNotAllowed) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("err = %v, want ErrNotAllowed saying %q", err, tc.says)
			}
		})
	}
	if n := reached.Load(); n > 0 {
		t.Fatalf("a host outside --nbd-allow-host received %d connections", n)
	}
}

func TestParseAllowHosts(t *testing.T) {
	for _, good := range [][]string{nil, {"10.0.0.0/24", "fd00::/64", "10.1.2.3", "::1", "nbd1.storage.example", "NBD2.example."}} {
		if err := volume.ParseAllowHosts(good); err != nil {
			t.Errorf("%q: %v", good, err)
		}
	}
	for _, bad := range []string{"", "10.0.0.0/33", "a b", "-x.example", "host:10809", "nbd://h", "x..y", "*"} {
		if err := volume.ParseAllowHosts([]string{bad}); err == nil || !strings.Contains(err.Error(), "--nbd-allow-host") {
			t.Errorf("%q accepted (err %v)", bad, err)
		}
	}
}

// TestRemoveCreatedOnlyRemovesWhatItCreated: once the name of a created
// target holds another file, removal leaves that file alone.
func TestRemoveCreatedOnlyRemovesWhatItCreated(t *testing.T) {
	root := t.TempDir()
	p := filepath.Join(root, "new")
	opts := volume.Options{Confined: true, Roots: []string{root}, Write: true, CreateSize: 1 << 20}
	v, err := volume.Open(ctxT(t), "file://"+p, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if err := os.Rename(p, p+".moved"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("someone else's"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := volume.RemoveCreated(v); !errors.Is(err, volume.ErrReplaced) {
		t.Fatalf("err = %v, want ErrReplaced", err)
	}
	if b, err := os.ReadFile(p); err != nil || string(b) != "someone else's" {
		t.Fatalf("the file now at the name was touched: %q, %v", b, err)
	}
	// Put back, it is removed.
	if err := os.Rename(p+".moved", p); err != nil {
		t.Fatal(err)
	}
	if err := volume.RemoveCreated(v); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("created target still there: %v", err)
	}
}

func TestConfinedFileNeedsARoot(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := volume.Open(ctxT(t), "file://"+p, volume.Options{Confined: true})
	if !errors.Is(err, volume.ErrOutsideRoots) || !strings.Contains(err.Error(), "--volume-root") {
		t.Fatalf("err = %v, want ErrOutsideRoots naming --volume-root", err)
	}
}
