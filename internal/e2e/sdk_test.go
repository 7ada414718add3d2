package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/harness"
)

// TestOutsideModuleBuildsTaskd: examples/gotype is a Go module of its own
// that imports the public SDK (github.com/taskd/taskd/sdk) and adds a
// task type, "countdown". The test builds it as an outsider would, starts
// the binary as a one-node cluster, runs a countdown to success and sees
// a bad countdown spec refused at creation.
func TestOutsideModuleBuildsTaskd(t *testing.T) {
	bins := t.TempDir()
	bin, ctl := filepath.Join(bins, "mytaskd"), filepath.Join(bins, "countctl")
	for out, pkg := range map[string]string{bin: ".", ctl: "./cmd/countctl"} {
		build := exec.Command("go", "build", "-o", out, pkg)
		build.Dir = filepath.Join("..", "..", "examples", "gotype")
		build.Env = append(os.Environ(), "GOFLAGS=-mod=readonly")
		if b, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build %s of the outside module: %v\n%s", pkg, err, b)
		}
	}
	c := newClusterBin(t, bin, 1, harness.Options{SessionTimeout: taskTimeout})
	leader := ready(t, c)
	id := create(t, leader, "countdown", `{"from":5,"step":"100ms"}`)
	tk := waitTask(t, c, id, 30*time.Second, "success", func(tk *taskdv1.Task) bool { return tk.State == "succeeded" })
	if tk.Progress.GetDone() != 5 || tk.Progress.GetTotal() != 5 {
		t.Errorf("countdown progress %d/%d; want 5/5", tk.Progress.GetDone(), tk.Progress.GetTotal())
	}
	// The outside module's client program (sdk.NewClient and the public
	// api/taskdv1) creates a countdown and follows it to its end.
	run := exec.Command(ctl, "-endpoint", leader.API, "-token-file", filepath.Join(leader.DataDir, "admin.token"),
		"-ca", filepath.Join(leader.DataDir, "pki", "ca.crt"), "-from", "3")
	if out, err := run.CombinedOutput(); err != nil || !strings.Contains(string(out), "succeeded") {
		t.Errorf("countctl: %v: %s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := leader.Client().Tasks.CreateTask(ctx, connect.NewRequest(&taskdv1.CreateTaskRequest{Type: "countdown", Spec: `{"from":-1}`}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Errorf("bad countdown spec: %v; want invalid_argument", err)
	}
}
