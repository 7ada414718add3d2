package e2e

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/volcopy"
)

// kill -9 `taskd volume copy` at about half way, rerun the same command: it
// resumes from the checkpoint file and the result is identical.
func TestVolumeCopyKilledResumes(t *testing.T) {
	dir := t.TempDir()
	src, dst, cp := filepath.Join(dir, "src"), filepath.Join(dir, "dst"), filepath.Join(dir, "cp")
	data := make([]byte, 64<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"volume", "copy", src, dst, "--checkpoint", cp, "--extent-size", "4M", "--progress", "none"}
	// Slow enough (32 MiB/s, about 2 s) to be killed midway.
	p, err := harness.StartProc(filepath.Join(dir, "copy1.log"), taskdBin, append(args, "--rate", "32M")...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Signal(syscall.SIGKILL); p.Wait() })
	var at int64
	err = harness.WaitFor(ctxFor(t, 30*time.Second), 5*time.Millisecond, func() bool {
		b, err := os.ReadFile(cp)
		if err != nil {
			return false
		}
		info, err := volcopy.DescribeCheckpoint(b)
		at = info.Next
		return err == nil && info.Next >= 32<<20
	})
	if err != nil {
		t.Fatalf("no checkpoint past half way: %v (process exited: %v)", err, p.Exited())
	}
	p.Signal(syscall.SIGKILL)
	p.Wait()
	if at >= int64(len(data)) {
		t.Fatal("copy finished before the kill; the test proves nothing")
	}

	code, out := runTaskd(t, time.Minute, args...)
	if code != 0 {
		t.Fatalf("resumed copy: exit %d\n%s", code, out)
	}
	if !bytes.Contains([]byte(out), []byte("resuming from checkpoint")) {
		t.Fatalf("second run did not resume:\n%s", out)
	}
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("resumed copy differs from the source")
	}
	if _, err := os.Stat(cp); !os.IsNotExist(err) {
		t.Fatalf("checkpoint file left after success: %v", err)
	}
	t.Logf("killed with checkpoint at %d MiB of %d", at>>20, len(data)>>20)
}

// SIGTERM stops a copy with exit code 4 and keeps the checkpoint.
func TestVolumeCopyInterruptExitCode(t *testing.T) {
	dir := t.TempDir()
	src, cp := filepath.Join(dir, "src"), filepath.Join(dir, "cp")
	data := make([]byte, 16<<20)
	rand.Read(data)
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := harness.StartProc(filepath.Join(dir, "copy.log"), taskdBin, "volume", "copy", src, filepath.Join(dir, "dst"),
		"--checkpoint", cp, "--extent-size", "1M", "--rate", "4M", "--progress", "none")
	if err != nil {
		t.Fatal(err)
	}
	waitCheckpoint(t, p, cp)
	p.Signal(syscall.SIGTERM)
	p.Wait()
	if p.ExitCode() != 4 {
		t.Fatalf("exit code %d after SIGTERM, want 4", p.ExitCode())
	}
	if _, err := os.Stat(cp); err != nil {
		t.Fatalf("checkpoint gone after interrupt: %v", err)
	}
}

func TestVolumeCopyBadInputExitCodes(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	small := filepath.Join(dir, "small")
	if err := os.WriteFile(small, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"volume", "copy", filepath.Join(dir, "missing"), filepath.Join(dir, "d")}, "no such file"},
		{[]string{"volume", "copy", src, small}, "smaller than the source"},
		{[]string{"volume", "copy", src, src}, "same volume"},
		{[]string{"volume", "copy", src}, "needs SRC and DST"},
		{[]string{"volume", "copy", src, filepath.Join(dir, "d"), "--rate", "fast"}, "not a byte count"},
	} {
		code, out := runTaskd(t, 20*time.Second, tc.args...)
		if code != 2 || !bytes.Contains([]byte(out), []byte(tc.want)) {
			t.Errorf("%v: exit %d, output %q; want exit 2 saying %q", tc.args, code, out, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "d")); !os.IsNotExist(err) {
		t.Fatal("a refused copy created its target")
	}
	if b, _ := os.ReadFile(small); string(b) != "x" {
		t.Fatal("a refused copy changed the smaller target")
	}
}

// TestVolumeCopyRateFile: the rate of a running `taskd volume copy` changes
// at SIGHUP from --rate-file. 32 MiB at 1 MiB/s would take 32 s; lifted to
// unlimited once the first checkpoint is written, the copy ends long before.
func TestVolumeCopyRateFile(t *testing.T) {
	dir := t.TempDir()
	src, dst, cp, rf := filepath.Join(dir, "src"), filepath.Join(dir, "dst"), filepath.Join(dir, "cp"), filepath.Join(dir, "rate")
	data := make([]byte, 32<<20)
	rand.Read(data)
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rf, []byte("1M\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(dir, "copy.log")
	p, err := harness.StartProc(log, taskdBin, "volume", "copy", src, dst,
		"--checkpoint", cp, "--extent-size", "1M", "--rate-file", rf, "--progress", "none")
	if err != nil {
		t.Fatal(err)
	}
	waitCheckpoint(t, p, cp)
	// A bad rate changes nothing; the copy goes on.
	if err := os.WriteFile(rf, []byte("fast\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p.Signal(syscall.SIGHUP)
	hasLine := func(s string) bool { b, _ := os.ReadFile(log); return strings.Contains(string(b), s) }
	if err := harness.WaitFor(ctxFor(t, 10*time.Second), 10*time.Millisecond, func() bool { return hasLine("rate unchanged") }); err != nil || p.Exited() {
		t.Fatalf("a bad rate file: no 'rate unchanged' line, or the copy ended (exit %d)", p.ExitCode())
	}
	if err := os.WriteFile(rf, []byte("0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	lifted := time.Now()
	p.Signal(syscall.SIGHUP)
	select {
	case <-p.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("the copy still runs 20 s after the rate was lifted; at the old 1 MiB/s it needs about 30 s more")
	}
	if p.ExitCode() != 0 || !hasLine("rate now unlimited") {
		b, _ := os.ReadFile(log)
		t.Fatalf("exit %d, log:\n%s", p.ExitCode(), b)
	}
	got, err := os.ReadFile(dst)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("target differs from the source (%v)", err)
	}
	t.Logf("copy ended %v after the rate was lifted", time.Since(lifted).Round(time.Millisecond))
}

// waitCheckpoint waits until the running copy p has written its checkpoint
// file cp; cleanup kills p.
func waitCheckpoint(t *testing.T, p *harness.Proc, cp string) {
	t.Helper()
	t.Cleanup(func() { p.Signal(syscall.SIGKILL); p.Wait() })
	if err := harness.WaitFor(ctxFor(t, 30*time.Second), 5*time.Millisecond, func() bool {
		_, err := os.Stat(cp)
		return err == nil || p.Exited()
	}); err != nil || p.Exited() {
		t.Fatalf("no checkpoint while the copy runs (err %v, exit code %d)", err, p.ExitCode())
	}
}
