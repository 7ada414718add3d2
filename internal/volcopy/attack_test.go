package volcopy_test

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/testenv"
	"github.com/taskd/taskd/internal/volcopy"
	"github.com/taskd/taskd/internal/volume"
)

// The attacker is this test binary re-executed as uid 65534: it swaps two
// names in a directory it owns (a directory and a symlink to a directory
// outside the root) with RENAME_EXCHANGE, as fast as it can, until the stop
// file appears, for at most a bounded count and time.
const attackerEnv = "TASKD_COPY_ATTACKER"

// plantEnv runs this test binary as a one-shot attacker (as uid 65534, see
// manifest_attack_test.go): each line of its value is an operation on files
// the attacker may touch: "cp FROM TO", "ln TARGET LINK", "mv A B".
const plantEnv = "TASKD_COPY_PLANT"

func TestMain(m *testing.M) {
	if os.Getenv(attackerEnv) != "" {
		os.Exit(attacker(os.Getenv("SWAP_A"), os.Getenv("SWAP_B"), os.Getenv("SWAP_STOP")))
	}
	if ops := os.Getenv(plantEnv); ops != "" {
		os.Exit(plant(ops))
	}
	os.Exit(m.Run())
}

func plant(ops string) int {
	for _, line := range strings.Split(ops, "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			fmt.Fprintf(os.Stderr, "plant: bad operation %q\n", line)
			return 2
		}
		var err error
		switch f[0] {
		case "cp":
			var b []byte
			if b, err = os.ReadFile(f[1]); err == nil {
				err = os.WriteFile(f[2], b, 0o644)
			}
		case "ln":
			err = os.Symlink(f[1], f[2])
		case "mv":
			err = os.Rename(f[1], f[2])
		default:
			err = fmt.Errorf("unknown operation %q", f[0])
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "plant:", err)
			return 1
		}
	}
	return 0
}

func attacker(a, b, stop string) int {
	deadline := time.Now().Add(2 * time.Minute)
	for i := 0; i < 50_000_000; i++ {
		if i%64 == 0 {
			if _, err := os.Lstat(stop); err == nil || time.Now().After(deadline) {
				return 0
			}
		}
		if err := unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE); err != nil {
			fmt.Fprintln(os.Stderr, "attacker:", err)
			return 1
		}
	}
	return 0
}

// startAttacker runs the swapping loop as uid 65534 and returns a stop
// function that ends it and waits for it.
func startAttacker(t *testing.T, a, b string) (stop func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the attacker test needs root (it drops to uid 65534 for the attacker)")
	}
	// The test binary sits in a directory only root may enter; the
	// attacker runs a copy of it from a world-readable one.
	binDir, err := os.MkdirTemp("", "attacker")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(binDir) })
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(binDir, "attacker")
	copyFile(t, exe, bin, 0o755)
	if err := os.Chmod(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	stopFile := filepath.Join(binDir, "stop")
	cmd := exec.Command(bin)
	cmd.Env = []string{attackerEnv + "=1", "SWAP_A=" + a, "SWAP_B=" + b, "SWAP_STOP=" + stopFile}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		os.WriteFile(stopFile, nil, 0o644)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("attacker: %v", err)
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Error("attacker did not stop")
		}
	}
	t.Cleanup(stop)
	return stop
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_EXCL, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// fileState is what must not change about a file outside the root.
type fileState struct {
	ino     uint64
	content string
}

func outsideState(t *testing.T, dir string) map[string]fileState {
	t.Helper()
	out := map[string]fileState{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = fileState{ino: st.Ino, content: string(b)}
	}
	return out
}

// watchOutside reports every change in dir, and every file in it closed
// after being opened for writing (inotify IN_CLOSE_WRITE).
func watchOutside(t *testing.T, dir string) (events func() []string) {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	const mask = unix.IN_CLOSE_WRITE | unix.IN_MODIFY | unix.IN_CREATE | unix.IN_DELETE | unix.IN_ATTRIB |
		unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF
	if _, err := unix.InotifyAddWatch(fd, dir, mask); err != nil {
		t.Fatal(err)
	}
	return func() []string {
		var out []string
		buf := make([]byte, 64<<10)
		for {
			n, err := unix.Read(fd, buf)
			if err != nil || n <= 0 {
				return out
			}
			for p := buf[:n]; len(p) >= unix.SizeofInotifyEvent; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&p[0]))
				name := string(p[unix.SizeofInotifyEvent : unix.SizeofInotifyEvent+int(ev.Len)])
				out = append(out, fmt.Sprintf("mask %#x %q", ev.Mask, trimNUL(name)))
				p = p[unix.SizeofInotifyEvent+int(ev.Len):]
			}
		}
	}
}

func trimNUL(s string) string {
	for i := range len(s) {
		if s[i] == 0 {
			return s[:i]
		}
	}
	return s
}

// TestCleanupRaceCannotLeaveTheRoot plays finding 5: copies into root/shared/d
// fail after creating their target, while an unprivileged user who owns
// root/shared swaps d for a symlink to a directory outside the root and
// back, as fast as it can. The old code removed the failed target by path
// and so deleted the file of the same name outside the root. Now nothing
// outside is created, changed, deleted or opened for writing (inotify),
// its files keep their inode numbers and bytes, and no target is left
// behind inside.
func TestCleanupRaceCannotLeaveTheRoot(t *testing.T) {
	base, err := os.MkdirTemp("", "race")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
	shared := filepath.Join(root, "shared")
	for _, d := range []string{root, outside, shared, filepath.Join(shared, "d")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{base, root, outside} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(shared, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(shared, "d"), 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(shared, "s")); err != nil {
		t.Fatal(err)
	}
	// Root-owned files outside, one named like the copies' target.
	for name, content := range map[string]string{"victim": "root's precious bytes\n", "crontab": "* * * * * root true\n"} {
		if err := os.WriteFile(filepath.Join(outside, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	rng := rand.New(rand.NewPCG(7, 7))
	src := writeImage(t, filepath.Join(root, "src"), 256<<10, rng)
	before := outsideState(t, outside)
	events := watchOutside(t, outside)

	stop := startAttacker(t, filepath.Join(shared, "d"), filepath.Join(shared, "s"))
	// A spec that passes every check before the target is created and
	// fails the one after (the request size is not a block multiple).
	spec := volcopy.Spec{Source: fileURI(src.path), Target: fileURI(filepath.Join(shared, "d", "victim")), RequestSize: 1000}
	env := volume.Options{Confined: true, Roots: []string{root}}
	const attempts, budget = 3000, 30 * time.Second
	var created, refused int
	start := time.Now()
	for i := 0; i < attempts && time.Since(start) < budget; i++ {
		job, err := volcopy.Prepare(ctxT(t), spec, env, volcopy.Options{})
		if err == nil {
			job.Close()
			t.Fatal("a copy with a bad request size was accepted")
		}
		switch {
		case errors.Is(err, volume.ErrOutsideRoots):
			refused++ // d was the symlink when the open resolved it
		case errors.Is(err, volcopy.ErrInvalid) && !errors.Is(err, volume.ErrOutsideRoots):
			created++ // created in the real d, then removed
		default:
			t.Fatalf("attempt %d: unexpected error %v", i, err)
		}
		if i%100 == 0 {
			if after := outsideState(t, outside); !sameState(before, after) {
				t.Fatalf("attempt %d changed the directory outside the root: %v -> %v", i, before, after)
			}
		}
	}
	stop()
	t.Logf("%d attempts in %v: %d created and removed their target, %d refused a symlinked directory",
		created+refused, time.Since(start).Round(time.Millisecond), created, refused)
	if after := outsideState(t, outside); !sameState(before, after) {
		t.Fatalf("the directory outside the root changed: %v -> %v", before, after)
	}
	if ev := events(); len(ev) > 0 {
		t.Fatalf("files outside the root were created, changed or opened for writing: %v", ev)
	}
	// The race was really run both ways.
	if created == 0 || refused == 0 {
		t.Fatalf("the attack was not exercised: %d created, %d refused", created, refused)
	}
	// Nothing left behind in the real directory, wherever it is now.
	for _, name := range []string{"d", "s"} {
		p := filepath.Join(shared, name)
		if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
			if _, err := os.Lstat(filepath.Join(p, "victim")); err == nil {
				t.Fatalf("a failed copy left %s behind", filepath.Join(p, "victim"))
			}
		}
	}
}

func sameState(a, b map[string]fileState) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestSocketRaceCannotLeaveTheSocketDir plays finding 9 with a race: an
// unprivileged user who owns a directory inside --nbd-socket-dir swaps the
// directory holding a real NBD server's socket for a symlink to a directory
// outside, where another (root-owned) socket listens. Opening the endpoint
// either reaches the real server or is refused; the socket outside never
// receives a connection.
func TestSocketRaceCannotLeaveTheSocketDir(t *testing.T) {
	testenv.Need(t, "nbdkit", "nbdkit")
	base, err := os.MkdirTemp("", "sr") // short: socket paths fit 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	sockDir, outside := filepath.Join(base, "sock"), filepath.Join(base, "out")
	shared := filepath.Join(sockDir, "sh")
	d := filepath.Join(shared, "d")
	for _, dir := range []string{sockDir, outside, shared, d} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(shared, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(shared, "s")); err != nil {
		t.Fatal(err)
	}
	srv, err := harness.StartNbdkit(d, "k", "memory", "size=1M")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	// The socket outside, with the same name as the real one.
	victim, err := net.Listen("unix", filepath.Join(outside, "k.sock"))
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int64
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		for {
			c, err := victim.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { victim.Close(); <-acceptDone })

	stop := startAttacker(t, d, filepath.Join(shared, "s"))
	uri := "nbd+unix:///disk?socket=" + filepath.Join(d, "k.sock")
	env := volume.Options{Confined: true, NBDSocketDirs: []string{sockDir}}
	const attempts, budget = 1000, 30 * time.Second
	var opened, refused int
	start := time.Now()
	for i := 0; i < attempts && time.Since(start) < budget; i++ {
		v, err := volume.Open(ctxT(t), uri, env)
		switch {
		case err == nil:
			opened++
			v.Close()
		case errors.Is(err, volume.ErrNotAllowed):
			refused++
		default:
			t.Fatalf("attempt %d: unexpected error %v", i, err)
		}
	}
	stop()
	t.Logf("%d attempts in %v: %d reached the real server, %d refused a symlinked directory",
		opened+refused, time.Since(start).Round(time.Millisecond), opened, refused)
	if n := accepted.Load(); n > 0 {
		t.Fatalf("the socket outside --nbd-socket-dir received %d connections", n)
	}
	if opened == 0 || refused == 0 {
		t.Fatalf("the attack was not exercised: %d opened, %d refused", opened, refused)
	}
}
