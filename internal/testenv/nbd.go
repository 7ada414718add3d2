package testenv

import (
	"os"
	"os/exec"
	"testing"

	"github.com/taskd/taskd/internal/harness"
)

// Need fails or skips the test (see Missing) unless every command is on PATH.
func Need(t testing.TB, pkg string, commands ...string) {
	t.Helper()
	for _, c := range commands {
		if _, err := exec.LookPath(c); err != nil {
			Missing(t, "%s not installed (Debian package %s)", c, pkg)
		}
	}
}

// StartQemuNBD serves image with qemu-nbd for the test; cleanup stops it.
func StartQemuNBD(t testing.TB, name, image string, args ...string) *harness.NBDServer {
	t.Helper()
	Need(t, "qemu-utils", "qemu-nbd")
	s, err := harness.StartQemuNBD(shortDir(t), name, image, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// StartQemuNBDTCP serves image with qemu-nbd on a free loopback port.
func StartQemuNBDTCP(t testing.TB, name, image string, args ...string) *harness.NBDServer {
	t.Helper()
	Need(t, "qemu-utils", "qemu-nbd")
	s, err := harness.StartQemuNBDTCP(shortDir(t), name, image, FreePorts(t, 1)[0], args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// StartNbdkit runs nbdkit with a plugin for the test; cleanup stops it.
func StartNbdkit(t testing.TB, name string, plugin ...string) *harness.NBDServer {
	t.Helper()
	Need(t, "nbdkit", "nbdkit")
	s, err := harness.StartNbdkit(shortDir(t), name, plugin...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// shortDir is a temporary directory with a short path: a unix socket path
// must fit in 108 bytes, and t.TempDir embeds the test's name.
func shortDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nbd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
