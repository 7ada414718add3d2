package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/testenv"
)

// TestCopyTask: a copy task between NBD exports resumes from its checkpoint
// on another runner after kill -9 of its runner, and the target ends equal
// to the source. `taskctl copy --wait` copies local files inside the volume
// root and refuses a path outside it.
func TestCopyTask(t *testing.T) {
	testenv.Need(t, "qemu-utils", "qemu-nbd")
	root := t.TempDir()
	backendsWith(t, harness.Options{Extra: []string{"--volume-root", root, "--nbd-allow-host", "127.0.0.1"}}, func(t *testing.T, c *harness.Cluster) {
		testCopyTask(t, c, root)
	})
}

// testCopyTask is TestCopyTask on one cluster whose --volume-root is
// volRoot; each run works in a directory of its own below it.
func testCopyTask(t *testing.T, c *harness.Cluster, volRoot string) {
	root, err := os.MkdirTemp(volRoot, "run-")
	if err != nil {
		t.Fatal(err)
	}
	leader := ready(t, c)
	cordon(t, leader, leader.Name)

	data := make([]byte, 48<<20)
	if _, err := rand.Read(data[:24<<20]); err != nil { // half data, half zeros
		t.Fatal(err)
	}
	src, dst := filepath.Join(root, "src.img"), filepath.Join(root, "dst.img")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(dst, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	srcNBD := testenv.StartQemuNBDTCP(t, "src", src, "-f", "raw", "-r")
	dstNBD := testenv.StartQemuNBDTCP(t, "dst", dst, "-f", "raw")
	spec, _ := json.Marshal(map[string]any{"source": srcNBD.URI(), "target": dstNBD.URI(),
		"extent_size": 4 << 20, "rate": 8 << 20, "verify": true})
	r, err := leader.Client().Tasks.CreateTask(ctxFor(t, 5*time.Second), connect.NewRequest(&taskdv1.CreateTaskRequest{Type: "copy", Spec: string(spec)}))
	if err != nil {
		t.Fatal(err)
	}
	id := r.Msg.Task.Id
	tk := waitTask(t, c, id, 30*time.Second, "a checkpoint at a third", func(tk *taskdv1.Task) bool {
		return tk.State == "running" && tk.HasCheckpoint && tk.Progress.GetDone() >= int64(len(data))/3
	})
	victim := c.Node(tk.Runner)
	victim.Kill()
	tk = waitTask(t, c, id, 60*time.Second, "success", func(tk *taskdv1.Task) bool { return tk.State == "succeeded" || tk.State == "failed" })
	if tk.State != "succeeded" || tk.Attempt != 2 || !tk.History[1].ResumedFromCheckpoint || tk.History[1].Runner == victim.Name {
		t.Fatalf("copy task: %s attempt %d history %v; want success on attempt 2 resumed elsewhere", tk.State, tk.Attempt, tk.History)
	}
	dstNBD.Stop() // flushes the image
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("target differs from the source after the resumed copy")
	}
	t.Logf("killed %s at %d of %d bytes; attempt 2 on %s finished the copy", victim.Name, tk.History[0].ProgressDone, len(data), tk.History[1].Runner)

	// taskctl copy of local files, on the node it talks to.
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	target := ready(t, c) // every node ready again; the leader answers
	env := target.CtlEnv()
	if code, out := runTaskctl(t, env, "runner", "uncordon", target.Name); code != 0 {
		t.Fatalf("uncordon: %d %s", code, out)
	}
	dst2 := filepath.Join(root, "copy.img")
	code, out := runTaskctl(t, env, "copy", "file://"+src, "file://"+dst2, "--verify", "--wait")
	if code != 0 {
		t.Fatalf("taskctl copy --wait: exit %d\n%s", code, out)
	}
	if got, err := os.ReadFile(dst2); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("local copy differs from the source (%v)", err)
	}
	outside := filepath.Join(t.TempDir(), "x.img")
	code, out = runTaskctl(t, env, "copy", "file://"+src, "file://"+outside, "--wait")
	if code != 2 || !strings.Contains(out, "root") {
		t.Errorf("copy outside the volume root: exit %d %q; want 2 (refused when created) and a message about the root", code, out)
	}
	if _, err := os.Stat(outside); !os.IsNotExist(err) {
		t.Errorf("a refused copy created %s", outside)
	}
	// No --nbd-socket-dir on these nodes: a task's nbd+unix endpoint is
	// refused when the task is created, and the message names the flag.
	refusedDst := filepath.Join(root, "never.img")
	code, out = runTaskctl(t, env, "copy", "nbd+unix:///disk?socket="+filepath.Join(root, "x.sock"), "file://"+refusedDst, "--wait")
	if code != 2 || !strings.Contains(out, "--nbd-socket-dir") {
		t.Errorf("copy from an nbd+unix socket on a node without --nbd-socket-dir: exit %d %q; want 2 naming the flag", code, out)
	}
	if _, err := os.Stat(refusedDst); !os.IsNotExist(err) {
		t.Errorf("a refused copy created %s", refusedDst)
	}
	// Buffers above the per-copy cap are refused when the task is created.
	_, err = target.Client().Tasks.CreateTask(ctxFor(t, 5*time.Second), connect.NewRequest(&taskdv1.CreateTaskRequest{Type: "copy",
		Spec: `{"source":"nbd://127.0.0.1:1/a","target":"nbd://127.0.0.1:1/b","workers":1024,"request_size":67108864}`}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "256 MiB") {
		t.Errorf("copy task with 64 GiB of buffers: err = %v, want InvalidArgument naming the 256 MiB cap", err)
	}
	code, out = runTaskctl(t, env, "copy", "file://"+src, "file://"+src)
	if code != 2 {
		t.Errorf("copy onto itself: exit %d %q; want 2", code, out)
	}

	// The rate of a running copy changes at once: 48 MiB at 1 MiB/s takes
	// 48 s; raised to unlimited after it started, the copy ends long
	// before the old rate could have finished it.
	dst3 := filepath.Join(root, "rate.img")
	code, out = runTaskctl(t, env, "copy", "file://"+src, "file://"+dst3, "--rate", "1M")
	if code != 0 {
		t.Fatalf("taskctl copy --rate 1M: exit %d %s", code, out)
	}
	id3 := strings.TrimSpace(out)
	tk = waitTask(t, c, id3, 30*time.Second, "copy running with progress", func(tk *taskdv1.Task) bool {
		return tk.State == "running" && tk.Progress.GetDone() > 0
	})
	doneAt := tk.Progress.GetDone()
	if doneAt > int64(len(data))/4 {
		t.Fatalf("at 1 MiB/s the copy already did %d of %d bytes; the rate was not applied", doneAt, len(data))
	}
	changed := time.Now()
	if code, out := runTaskctl(t, env, "task", "set-rate", id3, "0"); code != 0 || !strings.Contains(out, "unlimited") {
		t.Fatalf("task set-rate 0: exit %d %s", code, out)
	}
	tk = waitTask(t, c, id3, 60*time.Second, "rate-changed copy ending", func(tk *taskdv1.Task) bool { return tk.State == "succeeded" || tk.State == "failed" })
	took := time.Since(changed)
	if tk.State != "succeeded" {
		t.Fatalf("rate-changed copy: %s", tk.State)
	}
	if took > 20*time.Second {
		t.Errorf("the copy took %v after the rate was lifted; at the old 1 MiB/s the rest needs over 36 s, so the change was not applied", took)
	}
	if got, err := os.ReadFile(dst3); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("rate-changed copy differs from the source (%v)", err)
	}
	t.Logf("rate lifted at %d of %d bytes; the copy ended %v later", doneAt, len(data), took.Round(time.Millisecond))
	// Bad input changes nothing.
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"task", "set-rate", id3, "1M"}, "succeeded"},
		{[]string{"task", "set-rate", "00000000-0000-4000-8000-000000000000", "1M"}, "not found"},
		{[]string{"task", "set-rate", id3, "lots"}, "rate"},
		{[]string{"task", "set-rate", "--", id3, "-5"}, "rate"},
		{[]string{"task", "set-rate", id3, "1M", "--clear"}, "--clear"},
	} {
		if code, out := runTaskctl(t, env, bad.args...); code == 0 || !strings.Contains(out, bad.want) {
			t.Errorf("taskctl %s: exit %d %q; want a failure mentioning %q", strings.Join(bad.args, " "), code, out, bad.want)
		}
	}

	// Issue 13 bug 2, as the operator met it: a copy slowed to a crawl
	// (set-rate 1: each 1 MiB read then reserves about 12 days) stayed
	// frozen after set-rate 0, because its reads slept out the delay
	// reserved at the old rate. Now lifting the rate frees it at once.
	dst4 := filepath.Join(root, "crawl.img")
	code, out = runTaskctl(t, env, "copy", "file://"+src, "file://"+dst4, "--rate", "1M")
	if code != 0 {
		t.Fatalf("taskctl copy --rate 1M: exit %d %s", code, out)
	}
	id4 := strings.TrimSpace(out)
	waitTask(t, c, id4, 30*time.Second, "copy running with progress", func(tk *taskdv1.Task) bool {
		return tk.State == "running" && tk.Progress.GetDone() > 0
	})
	if code, out := runTaskctl(t, env, "task", "set-rate", id4, "1"); code != 0 {
		t.Fatalf("task set-rate 1: exit %d %s", code, out)
	}
	// Stalled: the smoothed rate (1 MiB/s before) has fallen below 64 KiB/s.
	tk = waitTask(t, c, id4, 30*time.Second, "copy stalled at 1 B/s", func(tk *taskdv1.Task) bool {
		return tk.State == "running" && tk.Progress.GetRate() < 64<<10
	})
	if tk.Progress.GetEtaSeconds() < 0 {
		t.Errorf("stalled copy: eta_seconds %v is negative", tk.Progress.GetEtaSeconds())
	}
	stalledAt := tk.Progress.GetDone()
	changed = time.Now()
	if code, out := runTaskctl(t, env, "task", "set-rate", id4, "0"); code != 0 {
		t.Fatalf("task set-rate 0: exit %d %s", code, out)
	}
	tk = waitTask(t, c, id4, 30*time.Second, "the stalled copy ending once the rate is lifted", func(tk *taskdv1.Task) bool {
		return tk.State == "succeeded" || tk.State == "failed"
	})
	if tk.State != "succeeded" {
		t.Fatalf("copy after set-rate 0: %s", tk.State)
	}
	if got, err := os.ReadFile(dst4); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("copy freed by set-rate 0 differs from the source (%v)", err)
	}
	t.Logf("stalled at %d of %d bytes; set-rate 0 freed it, done %v later (attempt %d)", stalledAt, len(data), time.Since(changed).Round(time.Millisecond), tk.Attempt)
	if tk.Attempt != 1 {
		t.Errorf("the copy needed attempt %d: %v", tk.Attempt, tk.History)
	}
	for _, n := range c.Nodes {
		for _, l := range strings.Split(n.Log(), "\n") {
			if strings.Contains(l, id4) && (strings.Contains(l, "rate") || strings.Contains(l, "attempt")) {
				t.Logf("%s: %s", n.Name, l)
			}
		}
	}
}
