package task_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/tasktype"
	"github.com/taskd/taskd/internal/testenv"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// stores runs f against a real embedded etcd and a real ZooKeeper.
func stores(t *testing.T, f func(t *testing.T, kv coord.Store)) {
	t.Run("etcd", func(t *testing.T) {
		f(t, testenv.StartEtcd(t).Open(t))
	})
	t.Run("zookeeper", func(t *testing.T) {
		f(t, testenv.OpenZK(t, testenv.StartEnsemble(t, 1), "/t"))
	})
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newStore(t *testing.T, kv coord.Store) *task.Store {
	st, err := task.NewStore(kv, "/taskd", tasktype.Builtin(tasktype.Copy{}, nil, nil), "Europe/Berlin", nil)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestBadInputChangesNothing: every invalid request is refused with
// ErrInvalid (or ErrNotFound / ErrState) and leaves the store as it was.
func TestBadInputChangesNothing(t *testing.T) {
	stores(t, func(t *testing.T, kv coord.Store) {
		ctx, st := ctxT(t), newStore(t, kv)
		done, err := st.Create(ctx, task.CreateRequest{Type: "noop"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Cancel(ctx, done.ID); err != nil {
			t.Fatal(err)
		}
		live, err := st.Create(ctx, task.CreateRequest{Type: "sleep", Spec: json.RawMessage(`{"duration":"1h"}`)})
		if err != nil {
			t.Fatal(err)
		}
		before, err := st.List(ctx, task.Filter{})
		if err != nil {
			t.Fatal(err)
		}
		neg := -1
		cases := []struct {
			name string
			want error
			do   func() error
		}{
			{"unknown type", task.ErrInvalid, func() error { _, err := st.Create(ctx, task.CreateRequest{Type: "nosuch"}); return err }},
			{"invalid spec", task.ErrInvalid, func() error {
				_, err := st.Create(ctx, task.CreateRequest{Type: "sleep", Spec: json.RawMessage(`{"duration":"-1s"}`)})
				return err
			}},
			{"unknown spec field", task.ErrInvalid, func() error {
				_, err := st.Create(ctx, task.CreateRequest{Type: "sleep", Spec: json.RawMessage(`{"duration":"1s","durration":"2s"}`)})
				return err
			}},
			{"not JSON", task.ErrInvalid, func() error {
				_, err := st.Create(ctx, task.CreateRequest{Type: "noop", Spec: json.RawMessage(`{`)})
				return err
			}},
			{"window 25:00", task.ErrInvalid, func() error {
				_, err := st.Create(ctx, task.CreateRequest{Type: "noop", Window: "25:00-01:00"})
				return err
			}},
			{"empty window", task.ErrInvalid, func() error {
				_, err := st.Create(ctx, task.CreateRequest{Type: "noop", Window: "08:00-08:00"})
				return err
			}},
			{"bad zone", task.ErrInvalid, func() error {
				_, err := st.Create(ctx, task.CreateRequest{Type: "noop", Window: "08:00-09:00", Zone: "Mars/Olympus"})
				return err
			}},
			{"negative retries", task.ErrInvalid, func() error {
				_, err := st.Create(ctx, task.CreateRequest{Type: "noop", MaxRetries: &neg})
				return err
			}},
			{"huge spec", task.ErrInvalid, func() error {
				big := `{"duration":"1s","pad":"` + strings.Repeat("x", task.MaxSpecBytes) + `"}`
				_, err := st.Create(ctx, task.CreateRequest{Type: "sleep", Spec: json.RawMessage(big)})
				return err
			}},
			{"bad node", task.ErrInvalid, func() error { _, err := st.Create(ctx, task.CreateRequest{Type: "noop", Node: "a b"}); return err }},
			{"cancel finished", task.ErrState, func() error { _, err := st.Cancel(ctx, done.ID); return err }},
			{"pause finished", task.ErrState, func() error { _, err := st.Pause(ctx, done.ID); return err }},
			{"window of finished", task.ErrState, func() error { _, err := st.SetWindow(ctx, done.ID, "01:00-02:00", ""); return err }},
			{"unknown id", task.ErrNotFound, func() error { _, err := st.Cancel(ctx, "00000000-0000-4000-8000-000000000000"); return err }},
			{"malformed id", task.ErrInvalid, func() error { _, err := st.Get(ctx, "../../etc"); return err }},
			{"bad window on live", task.ErrInvalid, func() error { _, err := st.SetWindow(ctx, live.ID, "24:00-01:00", ""); return err }},
			{"bad status", task.ErrInvalid, func() error { _, err := st.List(ctx, task.Filter{Status: "sleeping"}); return err }},
		}
		for _, c := range cases {
			if err := c.do(); !errors.Is(err, c.want) {
				t.Errorf("%s: err %v, want %v", c.name, err, c.want)
			}
		}
		after, err := st.List(ctx, task.Filter{})
		if err != nil {
			t.Fatal(err)
		}
		if len(after) != len(before) {
			t.Fatalf("bad input changed the number of tasks: %d -> %d", len(before), len(after))
		}
		for i := range after {
			if after[i].Version() != before[i].Version() {
				t.Errorf("bad input rewrote task %s", after[i].ID)
			}
		}
		// Pausing twice is idempotent: the second pause writes nothing.
		p1, err := st.Pause(ctx, live.ID)
		if err != nil || p1.State != task.Paused {
			t.Fatalf("pause: %v %v", p1, err)
		}
		p2, err := st.Pause(ctx, live.ID)
		if err != nil || p2.Version() != p1.Version() {
			t.Fatalf("second pause: version %d -> %d, %v", p1.Version(), p2.Version(), err)
		}
	})
}

// TestStaleRunnerWriteRejected: once a runner's session has ended, the
// store refuses its writes even though the record still names it.
func TestStaleRunnerWriteRejected(t *testing.T) {
	stores(t, func(t *testing.T, kv coord.Store) {
		ctx, st := ctxT(t), newStore(t, kv)
		sess, err := kv.NewSession(ctx, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		info := task.RunnerInfo{Node: "n1", Session: sess.ID(), Capacity: 1, Types: []string{"sleep"}}
		fence, err := st.Register(ctx, sess, info)
		if err != nil {
			t.Fatal(err)
		}
		r, err := st.Create(ctx, task.CreateRequest{Type: "sleep", Spec: json.RawMessage(`{"duration":"1h"}`)})
		if err != nil {
			t.Fatal(err)
		}
		r.Assign(info, time.Now())
		if err := st.Put(ctx, kv.Txn, r); err != nil {
			t.Fatal(err)
		}
		// A live runner's fenced checkpoint is accepted.
		r.Checkpoint = []byte("1")
		if err := st.Put(ctx, kv.Txn, r, fence); err != nil {
			t.Fatalf("fenced write of a live runner: %v", err)
		}
		if err := sess.Close(ctx); err != nil {
			t.Fatal(err)
		}
		r.Checkpoint = []byte("2")
		if err := st.Put(ctx, kv.Txn, r, fence); !errors.Is(err, coord.ErrConflict) {
			t.Fatalf("write after the session ended: %v, want a conflict", err)
		}
		got, err := st.Get(ctx, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		if string(got.Checkpoint) != "1" {
			t.Fatalf("checkpoint %q after a rejected write, want \"1\"", got.Checkpoint)
		}
		// A new session of the same node does not revive the old fence.
		sess2, err := kv.NewSession(ctx, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer sess2.Close(ctx)
		if _, err := st.Register(ctx, sess2, task.RunnerInfo{Node: "n1", Session: sess2.ID(), Capacity: 1}); err != nil {
			t.Fatal(err)
		}
		if err := st.Put(ctx, kv.Txn, got, fence); !errors.Is(err, coord.ErrConflict) {
			t.Fatalf("old session's fence accepted after the node re-registered: %v", err)
		}
	})
}

// TestEndStaleRunner: a node's new session ends the runner records its
// previous session left while that session is still alive in the store
// (a process killed and restarted within the session timeout): the new
// session registers at once, the old session's fenced writes fail, and
// the runner key names the new session (so the leader gives the old
// one's tasks back). Another node's runner, and a runner key of the
// session itself, are left alone.
func TestEndStaleRunner(t *testing.T) {
	stores(t, func(t *testing.T, kv coord.Store) {
		ctx, st := ctxT(t), newStore(t, kv)
		old, err := kv.NewSession(ctx, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer old.Close(ctx)
		other, err := kv.NewSession(ctx, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close(ctx)
		fence, err := st.Register(ctx, old, task.RunnerInfo{Node: "n1", Session: old.ID(), Capacity: 1, Types: []string{"sleep"}})
		if err != nil {
			t.Fatal(err)
		}
		fence2, err := st.Register(ctx, other, task.RunnerInfo{Node: "n2", Session: other.ID(), Capacity: 1, Types: []string{"sleep"}})
		if err != nil {
			t.Fatal(err)
		}
		r, err := st.Create(ctx, task.CreateRequest{Type: "sleep", Spec: json.RawMessage(`{"duration":"1h"}`)})
		if err != nil {
			t.Fatal(err)
		}
		r.Assign(task.RunnerInfo{Node: "n1", Session: old.ID()}, time.Now())
		if err := st.Put(ctx, kv.Txn, r, fence); err != nil {
			t.Fatal(err)
		}

		// The old session's own records are not stale to it.
		if ended, err := st.EndStaleRunner(ctx, old, "n1"); err != nil || ended != "" {
			t.Fatalf("EndStaleRunner on the runner's own session: %q, %v; want nothing ended", ended, err)
		}
		cur, err := kv.NewSession(ctx, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer cur.Close(ctx)
		info := task.RunnerInfo{Node: "n1", Session: cur.ID(), Capacity: 1, Types: []string{"sleep"}}
		if _, err := st.Register(ctx, cur, info); !errors.Is(err, coord.ErrConflict) {
			t.Fatalf("register over a live previous session: %v, want a conflict", err)
		}
		ended, err := st.EndStaleRunner(ctx, cur, "n1")
		if err != nil || ended != old.ID() {
			t.Fatalf("EndStaleRunner: %q, %v; want the old session %s ended", ended, err, old.ID())
		}
		if _, err := st.Register(ctx, cur, info); err != nil {
			t.Fatalf("register after the previous session's records ended: %v", err)
		}
		r.Checkpoint = []byte("late")
		if err := st.Put(ctx, kv.Txn, r, fence); !errors.Is(err, coord.ErrConflict) {
			t.Fatalf("the ended session's fenced write: %v, want a conflict", err)
		}
		runners, err := st.Runners(ctx)
		if err != nil {
			t.Fatal(err)
		}
		live := map[string]string{}
		for _, rn := range runners {
			if rn.Live {
				live[rn.Info.Node] = rn.Info.Session
			}
		}
		if live["n1"] != cur.ID() || live["n2"] != other.ID() {
			t.Fatalf("live runners %v; want n1 on %s and n2 untouched on %s", live, cur.ID(), other.ID())
		}
		// n2's fence still holds: its fenced write is accepted.
		r2, err := st.Create(ctx, task.CreateRequest{Type: "sleep", Spec: json.RawMessage(`{"duration":"1h"}`)})
		if err != nil {
			t.Fatal(err)
		}
		r2.Assign(task.RunnerInfo{Node: "n2", Session: other.ID()}, time.Now())
		if err := st.Put(ctx, kv.Txn, r2, fence2); err != nil {
			t.Fatalf("n2's fenced write after n1's old records ended: %v", err)
		}
		// Nothing is stale now: a second call ends nothing.
		if ended, err := st.EndStaleRunner(ctx, cur, "n1"); err != nil || ended != "" {
			t.Fatalf("EndStaleRunner again: %q, %v; want nothing ended", ended, err)
		}
		// A name that is not a valid node changes nothing.
		if _, err := st.EndStaleRunner(ctx, cur, "../n2"); err == nil {
			t.Fatalf("EndStaleRunner of an invalid name: no error")
		}
	})
}
