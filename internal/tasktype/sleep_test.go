package tasktype_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"sync"
	"testing"

	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/tasktype"
)

// reporter is a task.Reporter that records checkpoints: the sleep task's
// own logic, with no store below it.
type reporter struct {
	mu          sync.Mutex
	checkpoints int
}

func (r *reporter) Checkpoint([]byte, task.Progress) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.checkpoints++
	return nil
}
func (r *reporter) Progress(task.Progress) {}
func (r *reporter) Active() bool           { return true }
func (r *reporter) Attempt() int           { return 1 }
func (r *reporter) TaskID() string         { return "0f8fad5b-d9cb-469f-a165-70867728950e" }
func (r *reporter) RateLimit() (int64, bool, <-chan struct{}) {
	return 0, false, nil
}

// ledgerSpec is a short sleep that names a ledger file in dir.
func ledgerSpec(t *testing.T) (json.RawMessage, string) {
	t.Helper()
	ledger := filepath.Join(t.TempDir(), "ledger")
	spec, err := json.Marshal(map[string]string{"duration": "30ms", "checkpoint_interval": "10ms", "ledger": ledger})
	if err != nil {
		t.Fatal(err)
	}
	return spec, ledger
}

func sleepType(t *testing.T) task.Type {
	t.Helper()
	typ, err := tasktype.Builtin(tasktype.Copy{}, nil, nil).Lookup("sleep")
	if err != nil {
		t.Fatal(err)
	}
	return typ
}

func TestSleepWithoutLedger(t *testing.T) {
	typ := sleepType(t)
	spec := json.RawMessage(`{"duration":"30ms","checkpoint_interval":"10ms"}`)
	if err := typ.Validate(spec); err != nil {
		t.Fatal(err)
	}
	r := &reporter{}
	if err := typ.Run(context.Background(), spec, nil, r); err != nil {
		t.Fatal(err)
	}
	if r.checkpoints != 3 {
		t.Errorf("%d checkpoints, want 3", r.checkpoints)
	}
}
