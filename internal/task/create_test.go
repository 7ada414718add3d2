package task_test

import (
	"errors"
	"testing"

	"github.com/google/uuid"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/task"
)

// TestCreateTakenIDChangesNothing: Create is one conditional write; a
// second task under an id that exists is refused as coord.ErrExists (as
// the store's Create says), and the first task is left as it was. A fresh
// id stores a record whose version the next conditional write holds.
func TestCreateTakenIDChangesNothing(t *testing.T) {
	stores(t, func(t *testing.T, kv coord.Store) {
		ctx, st := ctxT(t), newStore(t, kv)
		id := uuid.NewString()
		first, err := st.Create(ctx, task.CreateRequest{Type: "noop", ID: id, Priority: 1})
		if err != nil {
			t.Fatal(err)
		}
		_, err = st.Create(ctx, task.CreateRequest{Type: "noop", ID: id, Priority: 2})
		if !errors.Is(err, coord.ErrExists) {
			t.Fatalf("second create under id %s: %v, want coord.ErrExists", id, err)
		}
		got, err := st.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if got.Priority != 1 || got.Version() != first.Version() {
			t.Fatalf("the first task changed: priority %d version %d, want 1 and %d", got.Priority, got.Version(), first.Version())
		}
		// The version Create returned is the stored one: a write
		// conditional on it succeeds.
		if err := st.Put(ctx, kv.Txn, first); err != nil {
			t.Fatalf("write at the version Create returned: %v", err)
		}
	})
}
