package harness

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestCPUCgroupReleasesChildren: a process moved into the cgroup starts a
// child there (as a starved node starts its exec tasks); Close moves the
// child out too and removes the cgroup, which a child left inside would
// keep busy (CI: "remove cgroup …: device or resource busy", and empty
// taskd-chaos-* cgroups left behind).
func TestCPUCgroupReleasesChildren(t *testing.T) {
	if os.Geteuid() != 0 || !CPUControllerAvailable() {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root and a cgroup cpu controller")
		}
		t.Skip("needs root and a cgroup cpu controller")
	}
	cg, err := NewCPUCgroup("taskd-test-"+strconv.Itoa(os.Getpid()), 50000)
	if err != nil {
		t.Fatal(err)
	}
	// Registered first, so it runs last, after the processes are gone: a
	// failed Close below must not leave the cgroup behind either.
	t.Cleanup(func() {
		if err := os.Remove(cg.Dir()); err == nil {
			t.Logf("removed %s after the test", cg.Dir())
		}
	})
	// The shell starts its child only once it reads a line: after it has
	// been moved.
	sh := exec.Command("/bin/sh", "-c", "read x; sleep 60 & echo $!; wait")
	in, err := sh.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := sh.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	var child int
	t.Cleanup(func() {
		if child > 0 { // the shell's child: killed by its PID, reaped by the shell
			if p, err := os.FindProcess(child); err == nil {
				_ = p.Kill()
			}
		}
		_ = sh.Process.Kill()
		_ = sh.Wait()
	})
	if err := cg.Move(sh.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if _, err := in.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 32)
	n, err := out.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if child, err = strconv.Atoi(strings.TrimSpace(string(buf[:n]))); err != nil {
		t.Fatalf("child pid %q: %v", buf[:n], err)
	}
	procs, err := os.ReadFile(filepath.Join(cg.Dir(), "cgroup.procs"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(" "+strings.Join(strings.Fields(string(procs)), " ")+" ", " "+strconv.Itoa(child)+" ") {
		t.Fatalf("the child %d did not start in the cgroup (it holds %q)", child, procs)
	}
	if err := cg.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if _, err := os.Stat(cg.Dir()); !os.IsNotExist(err) {
		t.Fatalf("cgroup %s still there after Close: %v", cg.Dir(), err)
	}
}
