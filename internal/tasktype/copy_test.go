package tasktype_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/tasktype"
	"github.com/taskd/taskd/internal/testenv"
)

// copyReporter is the runner's side of an attempt, reduced to what a copy uses.
type copyReporter struct{}

func (copyReporter) Checkpoint([]byte, task.Progress) error { return nil }
func (copyReporter) Progress(task.Progress)                 {}
func (copyReporter) Active() bool                           { return true }
func (copyReporter) Attempt() int                           { return 1 }
func (copyReporter) TaskID() string                         { return "t1" }
func (copyReporter) RateLimit() (int64, bool, <-chan struct{}) {
	return 0, false, make(chan struct{})
}

func runCopy(t *testing.T, c tasktype.Copy, spec map[string]any) error {
	t.Helper()
	raw, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return c.Run(ctx, raw, nil, copyReporter{})
}

// TestCopyTaskEndpointsAreConfined: a copy task (its endpoints come from an
// API caller) may only use what the node allows, and a refusal is permanent
// and names the flag to set. Nothing is created.
func TestCopyTaskEndpointsAreConfined(t *testing.T) {
	root := t.TempDir()
	src := filepath.Join(root, "src")
	if err := os.WriteFile(src, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(root, "dst")
	cases := []struct {
		name string
		c    tasktype.Copy
		spec map[string]any
		says string
	}{
		{"file without --volume-root", tasktype.Copy{}, map[string]any{"source": "file://" + src, "target": "file://" + dst, "node": "n1"}, "--volume-root"},
		{"nbd:// without --nbd-allow-host", tasktype.Copy{Roots: []string{root}}, map[string]any{"source": "nbd://127.0.0.1:10809/disk", "target": "file://" + dst, "node": "n1"}, "--nbd-allow-host"},
		{"nbd+unix without --nbd-socket-dir", tasktype.Copy{Roots: []string{root}}, map[string]any{"source": "nbd+unix:///disk?socket=/run/x.sock", "target": "file://" + dst, "node": "n1"}, "--nbd-socket-dir"},
		{"nbd:// host not allowed", tasktype.Copy{Roots: []string{root}, NBDAllowHosts: []string{"10.0.0.0/8"}}, map[string]any{"source": "nbd://127.0.0.1:10809/disk", "target": "file://" + dst, "node": "n1"}, "not in --nbd-allow-host"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := runCopy(t, tc.c, tc.spec)
			if !task.IsPermanent(err) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("err = %v, want a permanent error naming %q", err, tc.says)
			}
			if _, err := os.Lstat(dst); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("a refused copy created its target: %v", err)
			}
		})
	}
}

// TestCopyTaskRetriesAnUnreachableServer: "connection refused" from an
// allowed NBD server is worth retrying (the server may be restarting); the
// old code failed the task for good.
func TestCopyTaskRetriesAnUnreachableServer(t *testing.T) {
	root := t.TempDir()
	port := testenv.FreePorts(t, 1)[0] // free: nothing listens there
	c := tasktype.Copy{Roots: []string{root}, NBDAllowHosts: []string{"127.0.0.1"}, NBDSocketDirs: []string{root}}
	for _, source := range []string{
		fmt.Sprintf("nbd://127.0.0.1:%d/disk", port),
		"nbd+unix:///disk?socket=" + filepath.Join(root, "not-yet.sock"),
	} {
		err := runCopy(t, c, map[string]any{"source": source, "target": "file://" + filepath.Join(root, "dst"), "node": "n1"})
		if err == nil || task.IsPermanent(err) {
			t.Fatalf("%s: err = %v, want a retryable error", source, err)
		}
	}
}

// TestCopySpecMemoryIsCapped: buffer memory per task is checked when the
// task is created (task.ErrInvalid becomes InvalidArgument in the API).
func TestCopySpecMemoryIsCapped(t *testing.T) {
	base := map[string]any{"source": "nbd://h:10809/a", "target": "nbd://h:10809/b"}
	with := func(kv ...any) json.RawMessage {
		m := map[string]any{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		b, _ := json.Marshal(m)
		return b
	}
	for _, bad := range []json.RawMessage{
		with("workers", 1024, "request_size", 64<<20),
		with("workers", 256, "request_size", 1<<20, "verify", true, "base", "nbd://h:10809/c"),
		with("workers", 300), // 300 × 1 MiB default requests
		with("workers", 5000, "request_size", 4096),
		with("request_size", 128<<20, "workers", 1),
	} {
		if err := (tasktype.Copy{}).Validate(bad); !errors.Is(err, task.ErrInvalid) {
			t.Errorf("%s: err = %v, want task.ErrInvalid", bad, err)
		}
	}
	if err := (tasktype.Copy{}).Validate(with("workers", 64, "request_size", 4<<20)); err != nil {
		t.Errorf("256 MiB of buffers refused: %v", err)
	}
}

// TestCopySpecRefusesBadIOChoices: the copy engine's I/O choices in a
// crafted task spec (an API caller's) are refused by Validate, on every
// node, before anything is opened: an unknown zero detection, and a
// manifest combined with another incremental mode.
func TestCopySpecRefusesBadIOChoices(t *testing.T) {
	for _, bad := range []struct{ spec, says string }{
		{`{"source":"nbd://h:10809/a","target":"file:///v/b","node":"n1","zero_detect":"sometimes"}`, "zero detection"},
		{`{"source":"nbd://h:10809/a","target":"file:///v/b","node":"n1","zero_detect":"ALWAYS "}`, "zero detection"},
		{`{"source":"nbd://h:10809/a","target":"file:///v/b","node":"n1","manifest":true,"base":"nbd://h:10809/c"}`, "manifest"},
		{`{"source":"nbd://h:10809/a","target":"file:///v/b","node":"n1","manifest":true,"dirty_bitmap":"b0"}`, "manifest"},
	} {
		err := (tasktype.Copy{}).Validate(json.RawMessage(bad.spec))
		if !errors.Is(err, task.ErrInvalid) || !strings.Contains(err.Error(), bad.says) {
			t.Errorf("%s: err = %v, want task.ErrInvalid naming %s", bad.spec, err, bad.says)
		}
	}
	for _, good := range []string{
		`{"source":"nbd://h:10809/a","target":"file:///v/b","node":"n1","zero_detect":"never"}`,
		`{"source":"nbd://h:10809/a","target":"file:///v/b","node":"n1","manifest":true}`,
	} {
		if err := (tasktype.Copy{}).Validate(json.RawMessage(good)); err != nil {
			t.Errorf("%s refused: %v", good, err)
		}
	}
}
