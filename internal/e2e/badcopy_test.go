package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/testenv"
)

// taskIDs lists every task id (`task list --status all -o json`).
func taskIDs(t *testing.T, env []string) []string {
	t.Helper()
	code, out := runTaskctl(t, env, "task", "list", "--status", "all", "-o", "json")
	var v struct {
		Tasks []struct {
			ID string `json:"id"`
		} `json:"tasks"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil {
		t.Fatalf("taskctl task list: exit %d\n%s", code, out)
	}
	var ids []string
	for _, tk := range v.Tasks {
		ids = append(ids, tk.ID)
	}
	return ids
}

// TestBadCopyRefusedUpFront plays the operator of issue 13 bug 5 on both
// backends: each bad `taskctl copy` (a missing source, /etc/passwd, a
// target outside the root, a symlink escaping the root, a target in a
// missing directory, a target smaller than the source, --dirty-bitmap with
// a file source, an nbd+unix socket on a node without --nbd-socket-dir)
// used to print a task id with exit 0 and fail later, leaving a junk
// record. Now each exits 2 with the reason, no record is created, and no
// file appears. Good input is still accepted, including an NBD source
// whose server is down (retryable, not bad input).
func TestBadCopyRefusedUpFront(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	src := filepath.Join(root, "src.img")
	small := filepath.Join(root, "small.img")
	escape := filepath.Join(root, "escape.img")
	if err := os.WriteFile(src, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(small, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "secret.img"), make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "secret.img"), escape); err != nil {
		t.Fatal(err)
	}
	// A port nothing listens on: the NBD server of that copy is down.
	downPort := testenv.FreePorts(t, 1)[0]
	opt := harness.Options{Extra: []string{"--volume-root", root, "--nbd-allow-host", "127.0.0.1"}}
	backendsWith(t, opt, func(t *testing.T, c *harness.Cluster) {
		ready(t, c)
		asked, other := c.Nodes[1], c.Nodes[2]
		env := asked.CtlEnv()
		before := taskIDs(t, env)
		filesBefore := dirEntries(t, root)
		for _, bad := range []struct {
			what string
			args []string
			want string
		}{
			{"missing source", []string{"file://" + filepath.Join(root, "nosuch.img"), "file://" + filepath.Join(root, "a.img")}, "no such file"},
			{"/etc/passwd as source", []string{"file:///etc/passwd", "file://" + filepath.Join(root, "b.img")}, "outside the allowed roots"},
			{"target outside the root", []string{"file://" + src, "file://" + filepath.Join(outside, "c.img")}, "outside the allowed roots"},
			{"symlink escaping the root", []string{"file://" + escape, "file://" + filepath.Join(root, "d.img")}, "resolves outside root"},
			{"target in a missing directory", []string{"file://" + src, "file://" + filepath.Join(root, "nodir", "e.img")}, "does not exist"},
			{"target smaller than the source", []string{"file://" + src, "file://" + small}, "smaller than the source"},
			{"--dirty-bitmap with a file source", []string{"file://" + src, "file://" + filepath.Join(root, "f.img"), "--dirty-bitmap", "b0"}, "--dirty-bitmap needs an NBD source"},
			{"--dirty-bitmap with a file source, for another node", []string{"file://" + src, "file://" + filepath.Join(root, "g.img"), "--dirty-bitmap", "b0", "--node", other.Name}, "--dirty-bitmap needs an NBD source"},
			{"nbd+unix socket without --nbd-socket-dir", []string{"nbd+unix:///disk?socket=" + filepath.Join(root, "x.sock"), "file://" + filepath.Join(root, "h.img")}, "--nbd-socket-dir"},
			{"--wait does not hide it", []string{"file://" + filepath.Join(root, "nosuch.img"), "file://" + filepath.Join(root, "i.img"), "--wait"}, "no such file"},
		} {
			code, out := runTaskctl(t, env, append([]string{"copy"}, bad.args...)...)
			if code != 2 || !strings.Contains(out, bad.want) {
				t.Errorf("%s: taskctl copy %s: exit %d %q; want exit 2 and %q", bad.what, strings.Join(bad.args, " "), code, out, bad.want)
			}
		}
		if after := taskIDs(t, env); !slices.Equal(after, before) {
			t.Errorf("bad copies created task records: before %v, after %v", before, after)
		}
		if after := dirEntries(t, root); !slices.Equal(after, filesBefore) {
			t.Errorf("bad copies changed the volume root: before %v, after %v", filesBefore, after)
		}

		// Good input is still accepted; the test would see a record.
		good := filepath.Join(root, "good-"+filepath.Base(t.Name())+".img")
		code, out := runTaskctl(t, env, "copy", "file://"+src, "file://"+good, "--wait")
		if code != 0 {
			t.Fatalf("good copy: exit %d %s", code, out)
		}
		// An NBD server that is down is retried, not refused.
		downURI := fmt.Sprintf("nbd://127.0.0.1:%d/disk", downPort)
		code, out = runTaskctl(t, env, "copy", downURI, "file://"+filepath.Join(root, "later.img"))
		if code != 0 {
			t.Fatalf("copy from an NBD server that is down: exit %d %s; want it accepted (retryable)", code, out)
		}
		id := strings.TrimSpace(out)
		if code, out := runTaskctl(t, env, "task", "cancel", id); code != 0 {
			t.Errorf("cancel the copy from the down NBD server: exit %d %s", code, out)
		}
		if n := len(taskIDs(t, env)) - len(before); n != 2 {
			t.Errorf("%d new task records after two good copies, want 2", n)
		}
	})
}
