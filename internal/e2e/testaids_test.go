package e2e

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/harness"
)

// TestLedgerOnlyInTestBuilds plays finding 2: the sleep task's ledger, a
// test aid that makes taskd (root) append to any path a request names,
// exists only in binaries built with -tags testaids. A taskd built as
// `make build` builds it refuses a spec naming a ledger with
// InvalidArgument, stores nothing and creates no file; the harness's test
// build still writes it.
func TestLedgerOnlyInTestBuilds(t *testing.T) {
	t.Run("production", func(t *testing.T) {
		bin, err := harness.BuildProduction(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		c, err := harness.NewCluster(t.TempDir(), bin, 1, harness.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		if err := c.StartAll(); err != nil {
			t.Fatal(err)
		}
		n := ready(t, c)
		ctx := ctxFor(t, 30*time.Second)
		ledger := filepath.Join(t.TempDir(), "cron.d", "taskd")
		if err := os.MkdirAll(filepath.Dir(ledger), 0o755); err != nil {
			t.Fatal(err)
		}
		_, err = n.Client().Tasks.CreateTask(ctx, connect.NewRequest(&taskdv1.CreateTaskRequest{
			Type: "sleep", Spec: sleepSpec(time.Second, 100*time.Millisecond, ledger)}))
		var ce *connect.Error
		if !errors.As(err, &ce) || ce.Code() != connect.CodeInvalidArgument || !strings.Contains(ce.Message(), `unknown field "ledger"`) {
			t.Fatalf("create with a ledger on a production binary: %v, want InvalidArgument naming the unknown field", err)
		}
		list, err := n.Client().Tasks.ListTasks(ctx, connect.NewRequest(&taskdv1.ListTasksRequest{Status: "all"}))
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Msg.Tasks) != 0 {
			t.Errorf("a refused create stored %d tasks", len(list.Msg.Tasks))
		}
		if _, err := os.Stat(ledger); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the ledger path exists after a refused create: %v", err)
		}
	})
	t.Run("testaids", func(t *testing.T) {
		c := newCluster(t, 1, harness.Options{})
		n := ready(t, c)
		ledger := filepath.Join(t.TempDir(), "ledger")
		id := create(t, n, "sleep", sleepSpec(300*time.Millisecond, 100*time.Millisecond, ledger))
		waitTask(t, c, id, 20*time.Second, "success", func(tk *taskdv1.Task) bool { return tk.State == "succeeded" })
		if lines := readLedger(t, ledger)[id]; len(lines) != 3 {
			t.Errorf("the test build wrote %d ledger lines, want 3", len(lines))
		}
	})
}
