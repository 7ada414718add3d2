package task_test

import (
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/tasktype"
)

// TestCreateOnce plays a client that retries a creation (after a timeout,
// from several goroutines at once, with the key reused for another
// request) on both stores: one key makes one task within the window.
func TestCreateOnce(t *testing.T) {
	stores(t, func(t *testing.T, kv coord.Store) {
		ctx := ctxT(t)
		var skew atomic.Int64
		now := func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
		st, err := task.NewStore(kv, "/taskd", tasktype.Builtin(tasktype.Copy{}, nil, nil), "UTC", now)
		if err != nil {
			t.Fatal(err)
		}
		count := func() int {
			t.Helper()
			rs, err := st.List(ctx, task.Filter{Status: "all"})
			if err != nil {
				t.Fatal(err)
			}
			return len(rs)
		}
		req := task.CreateRequest{Type: "sleep", Spec: json.RawMessage(`{"duration": "1h"}`), IdempotencyKey: "copy/vol-7/2026-11-26"}
		first, existing, err := st.CreateOnce(ctx, req)
		if err != nil || existing {
			t.Fatalf("first call: existing %v, err %v", existing, err)
		}
		again := req
		again.Spec = json.RawMessage(`{"duration":"1h"}`) // the same request, other whitespace
		r, existing, err := st.CreateOnce(ctx, again)
		if err != nil || !existing || r.ID != first.ID {
			t.Fatalf("retry: got %v existing %v err %v, want task %s", r, existing, err, first.ID)
		}
		if r.IdempotencyKey != req.IdempotencyKey {
			t.Fatalf("record key %q", r.IdempotencyKey)
		}
		other := req
		other.Spec = json.RawMessage(`{"duration":"2h"}`)
		if _, _, err := st.CreateOnce(ctx, other); !errors.Is(err, task.ErrKeyReused) {
			t.Fatalf("key reused for another request: err %v, want ErrKeyReused", err)
		}
		for _, k := range []string{"a b", "ключ", "x\ny", string(make([]byte, 201))} {
			b := req
			b.IdempotencyKey = k
			if _, _, err := st.CreateOnce(ctx, b); !errors.Is(err, task.ErrInvalid) {
				t.Fatalf("key %q: err %v, want ErrInvalid", k, err)
			}
		}
		if n := count(); n != 1 {
			t.Fatalf("%d tasks after retries, reuse and bad keys, want 1", n)
		}

		// Eight clients race with a new key: one task, seven answers with it.
		race := req
		race.IdempotencyKey = "race"
		var mu sync.Mutex
		ids, made := map[string]bool{}, 0
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, existing, err := st.CreateOnce(ctx, race)
				if err != nil {
					t.Errorf("racing create: %v", err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				ids[r.ID] = true
				if !existing {
					made++
				}
			}()
		}
		wg.Wait()
		if len(ids) != 1 || made != 1 {
			t.Fatalf("racing creates: ids %v, %d made, want one id made once", ids, made)
		}
		if n := count(); n != 2 {
			t.Fatalf("%d tasks after the race, want 2", n)
		}

		// After the window the key makes a new task, and answers with it.
		skew.Store(int64(task.IdempotencyWindow + time.Minute))
		later, existing, err := st.CreateOnce(ctx, req)
		if err != nil || existing || later.ID == first.ID {
			t.Fatalf("after the window: %v existing %v err %v, want a new task", later, existing, err)
		}
		if r, existing, err := st.CreateOnce(ctx, req); err != nil || !existing || r.ID != later.ID {
			t.Fatalf("retry after the window: %v existing %v err %v, want %s", r, existing, err, later.ID)
		}

		// The sweep deletes expired records only.
		skew.Store(int64(task.IdempotencyWindow + 2*time.Minute))
		n, err := st.SweepIdempotency(ctx)
		if err != nil || n != 1 {
			t.Fatalf("sweep: %d deleted, err %v; want 1 (the race key's)", n, err)
		}
		if r, existing, err := st.CreateOnce(ctx, req); err != nil || !existing || r.ID != later.ID {
			t.Fatalf("after the sweep: %v existing %v err %v, want %s kept", r, existing, err, later.ID)
		}
		if n := count(); n != 3 {
			t.Fatalf("%d tasks, want 3", n)
		}
	})
}
