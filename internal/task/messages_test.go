package task_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/task"
)

// TestRefusalsReadWell (issue 13): refusals say what is wrong in a
// sentence ("it has already cancelled" was not one), a runner that does
// not exist is a runner not found (not "task not found"), and a rate on a
// task type that has none is refused and changes nothing.
func TestRefusalsReadWell(t *testing.T) {
	stores(t, func(t *testing.T, kv coord.Store) {
		ctx, st := ctxT(t), newStore(t, kv)
		cancelled, err := st.Create(ctx, task.CreateRequest{Type: "noop"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Cancel(ctx, cancelled.ID); err != nil {
			t.Fatal(err)
		}
		_, err = st.Cancel(ctx, cancelled.ID)
		if !errors.Is(err, task.ErrState) || !strings.Contains(err.Error(), "the task was already cancelled") || strings.Contains(err.Error(), "has already cancelled") {
			t.Errorf("cancel twice: %v", err)
		}
		_, err = st.SetMarks(ctx, "nosuch", false, func(m *task.Marks) { m.Cordoned = true })
		if !errors.Is(err, task.ErrNotFound) || !errors.Is(err, task.ErrRunnerNotFound) || !strings.HasPrefix(err.Error(), "runner not found") {
			t.Errorf("cordon nosuch: %v, want runner not found", err)
		}
		sleep, err := st.Create(ctx, task.CreateRequest{Type: "sleep", Spec: json.RawMessage(`{"duration":"1h"}`)})
		if err != nil {
			t.Fatal(err)
		}
		_, err = st.SetRate(ctx, sleep.ID, 1<<20, false)
		if !errors.Is(err, task.ErrInvalid) || !strings.Contains(err.Error(), "a sleep task has no rate") || !strings.Contains(err.Error(), "only copy tasks") {
			t.Errorf("set-rate on a sleep task: %v", err)
		}
		after, err := st.Get(ctx, sleep.ID)
		if err != nil {
			t.Fatal(err)
		}
		if after.Version() != sleep.Version() || after.RateLimitSet {
			t.Errorf("refused set-rate rewrote the task (version %d -> %d, rate set %v)", sleep.Version(), after.Version(), after.RateLimitSet)
		}
		copyTask, err := st.Create(ctx, task.CreateRequest{Type: "copy", Spec: json.RawMessage(`{"source":"nbd://127.0.0.1:1/a","target":"nbd://127.0.0.1:1/b"}`)})
		if err != nil {
			t.Fatal(err)
		}
		if r, err := st.SetRate(ctx, copyTask.ID, 1<<20, false); err != nil || r.RateLimit != 1<<20 {
			t.Errorf("set-rate on a copy task: %v %v", r, err)
		}
	})
}
