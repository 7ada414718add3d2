package dispatch_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/tasktype"
	"github.com/taskd/taskd/internal/testenv"
)

// probe is a task type that records every attempt it runs, and leaves a
// file per attempt in dir: what a task that writes files (the sleep
// ledger, a copy) would do for a record an attacker crafted.
type probe struct {
	dir string
	mu  sync.Mutex
	ran []string // task ids, in the order run
}

func (p *probe) Validate(json.RawMessage) error { return nil }

func (p *probe) Run(_ context.Context, _ json.RawMessage, _ []byte, r task.Reporter) error {
	p.mu.Lock()
	p.ran = append(p.ran, r.TaskID())
	n := len(p.ran)
	p.mu.Unlock()
	return os.WriteFile(filepath.Join(p.dir, fmt.Sprintf("attempt-%d", n)), []byte(r.TaskID()), 0o600)
}

func (p *probe) runs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.ran...)
}

// TestCraftedRecordsNotActedOn plays records written straight into the
// store (as through the open store of finding 1) whose ids contain "../":
//   - an unfinished record at a valid key whose id names the election's
//     epoch key, running on a runner that does not exist: the old
//     dispatcher gave it back and so wrote a task record over the epoch
//     (its version lined up), fencing every leader;
//   - assignments to this node's runner, with its live session, whose id
//     is "../" or whose key is no task id: the old runner ran them.
//
// Neither may be acted on: no attempt runs (no file is created), the epoch
// and the crafted keys are as written, and a genuine task still runs.
func TestCraftedRecordsNotActedOn(t *testing.T) {
	for _, b := range testenv.Backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			kv := b.Open(t)
			p := &probe{dir: t.TempDir()}
			types := tasktype.Builtin(tasktype.Copy{}, nil, nil)
			types["probe"] = p
			st, err := task.NewStore(kv, "/taskd", types, "UTC", nil)
			if err != nil {
				t.Fatal(err)
			}
			startMember(t, kv, st, "n1", 4)
			lay := st.Layout()
			runnerKey, err := lay.RunnerKey("n1")
			if err != nil {
				t.Fatal(err)
			}
			var info task.RunnerInfo
			var epoch coord.KV
			if err := testenv.WaitFor(ctx, 20*time.Millisecond, func() bool {
				kvr, err := kv.Get(ctx, runnerKey)
				if err != nil || json.Unmarshal(kvr.Value, &info) != nil {
					return false
				}
				var rec struct{ Epoch int64 }
				epoch, err = kv.Get(ctx, "/taskd/election/epoch")
				return err == nil && json.Unmarshal(epoch.Value, &rec) == nil && rec.Epoch > 0
			}); err != nil {
				t.Fatalf("no runner and no leader: %v", err)
			}

			// The dispatcher's bait: a running record of a runner that
			// does not exist, id "../../election/epoch", its key's version
			// brought up to the epoch key's (ZooKeeper counts versions per
			// key; etcd's are store revisions and cannot line up).
			const baitID = "0f8fad5b-d9cb-469f-a165-70867728950e"
			bait := craft(t, func(r *task.Record) { r.ID = "../../election/epoch"; r.Type = "noop" })
			baitKey := lay.ActiveDir() + "/" + baitID
			written := map[string]coord.KV{}
			kvb, err := kv.Create(ctx, baitKey, bait)
			for err == nil && kvb.Version < epoch.Version {
				kvb, err = kv.Update(ctx, baitKey, bait, kvb.Version)
			}
			if err != nil {
				t.Fatal(err)
			}
			written[baitKey] = kvb

			// The runner's bait: assignments with this runner's session.
			dir, err := lay.AssignDir("n1")
			if err != nil {
				t.Fatal(err)
			}
			own := func(r *task.Record) { r.Runner, r.RunnerSession, r.Type = "n1", info.Session, "probe" }
			for key, rec := range map[string][]byte{
				dir + "/8c7b5a1e-2f3d-4c5b-9a8e-7d6c5b4a3f2e": craft(t, func(r *task.Record) { own(r); r.ID = "../../../../tmp/evil" }),
				dir + "/not-a-task-id":                        craft(t, func(r *task.Record) { own(r); r.ID = "not-a-task-id" }),
			} {
				kvc, err := kv.Create(ctx, key, rec)
				if err != nil {
					t.Fatal(err)
				}
				written[key] = kvc
			}

			// A genuine task afterwards: when it has run, the dispatcher
			// and the runner have seen the crafted records before it.
			real, err := st.Create(ctx, task.CreateRequest{Type: "probe"})
			if err != nil {
				t.Fatal(err)
			}
			if r := waitFinal(t, st, []string{real.ID}, 60*time.Second)[real.ID]; r.State != task.Succeeded {
				t.Fatalf("the genuine task ended %s: %+v", r.State, r.Error)
			}
			if ran := p.runs(); len(ran) != 1 || ran[0] != real.ID {
				t.Errorf("attempts ran for %q; want only the genuine task %s", ran, real.ID)
			}
			files, err := os.ReadDir(p.dir)
			if err != nil || len(files) != 1 {
				t.Errorf("the attempts left %d files (%v), want 1", len(files), err)
			}
			// The epoch key holds an epoch record, never a task's. A
			// genuine election may have moved it on meanwhile (the
			// member's 2 s session lost under load); the bait's version
			// then no longer lines up, which the test says.
			now, err := kv.Get(ctx, "/taskd/election/epoch")
			if err != nil {
				t.Fatal(err)
			}
			if now.Version != epoch.Version || string(now.Value) != string(epoch.Value) {
				was, is := epochOf(epoch.Value), epochOf(now.Value)
				if was < 1 || is <= was {
					t.Errorf("epoch key %s@%d, was %s@%d: not an election's epoch record", now.Value, now.Version, epoch.Value, epoch.Version)
				} else {
					t.Logf("a new election (epoch %d -> %d) during the test: the epoch bait's version no longer lined up", was, is)
				}
			}
			for key, was := range written {
				got, err := kv.Get(ctx, key)
				if err != nil || got.Version != was.Version || string(got.Value) != string(was.Value) {
					t.Errorf("crafted %s was acted on: %v, version %d -> %d", key, err, was.Version, got.Version)
				}
			}
		})
	}
}

// craft is a running record as an attacker writes it.
func craft(t *testing.T, edit func(r *task.Record)) []byte {
	t.Helper()
	now := time.Now().UTC()
	r := task.Record{Type: "noop", Spec: json.RawMessage(`{}`), State: task.Running, Attempt: 1, MaxRetries: 3,
		Created: now, Updated: now, History: []task.Attempt{{N: 1, Runner: "ghost", Started: now}}}
	edit(&r)
	b, err := json.Marshal(&r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// epochOf is the epoch of an election's epoch record, exactly
// {"epoch":N} with nothing else; 0 for anything else (a task record).
func epochOf(b []byte) int64 {
	var m map[string]json.RawMessage
	if json.Unmarshal(b, &m) != nil || len(m) != 1 {
		return 0
	}
	var n int64
	if json.Unmarshal(m["epoch"], &n) != nil {
		return 0
	}
	return n
}
