package task_test

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/task"
)

const validID = "0f8fad5b-d9cb-469f-a165-70867728950e"

func record(t *testing.T, edit func(r *task.Record)) []byte {
	t.Helper()
	r := task.Record{ID: validID, Type: "sleep", Spec: json.RawMessage(`{"duration":"1h"}`), State: task.Running,
		Attempt: 1, Runner: "n1", RunnerSession: "lease-1f", Created: time.Now()}
	edit(&r)
	b, err := json.Marshal(&r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDecodeRefusesCraftedRecords: a record written around taskd whose id
// or names would build keys elsewhere is refused when decoded.
func TestDecodeRefusesCraftedRecords(t *testing.T) {
	key := "/taskd/tasks/active/" + validID
	if r, err := task.Decode(key, record(t, func(*task.Record) {}), 3); err != nil || r.ID != validID || r.Version() != 3 {
		t.Fatalf("a valid record: %v %v", r, err)
	}
	cases := map[string]struct {
		key  string
		edit func(r *task.Record)
	}{
		"id with traversal":      {key, func(r *task.Record) { r.ID = "../../election/epoch" }},
		"id of another key":      {key, func(r *task.Record) { r.ID = "00000000-0000-4000-8000-000000000000" }},
		"empty id":               {key, func(r *task.Record) { r.ID = "" }},
		"upper-case id":          {"/taskd/tasks/active/0F8FAD5B-D9CB-469F-A165-70867728950E", func(r *task.Record) { r.ID = "0F8FAD5B-D9CB-469F-A165-70867728950E" }},
		"key with traversal":     {"/taskd/tasks/active/../../election/epoch", func(r *task.Record) { r.ID = "../../election/epoch" }},
		"runner with traversal":  {key, func(r *task.Record) { r.Runner = "../../election" }},
		"node with a slash":      {key, func(r *task.Record) { r.Node = "n1/../n2" }},
		"session with traversal": {key, func(r *task.Record) { r.RunnerSession = "../x" }},
		"type with a slash":      {key, func(r *task.Record) { r.Type = "sleep/../copy" }},
	}
	for name, c := range cases {
		if _, err := task.Decode(c.key, record(t, c.edit), 1); !errors.Is(err, task.ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", name, err)
		}
	}
}

// TestCraftedRecordsAreNotTasks: records written straight into the store
// with a crafted id are not listed and not read as tasks, and a crafted
// runner record is not a runner; genuine records still are.
func TestCraftedRecordsAreNotTasks(t *testing.T) {
	stores(t, func(t *testing.T, kv coord.Store) {
		ctx, st := ctxT(t), newStore(t, kv)
		real, err := st.Create(ctx, task.CreateRequest{Type: "noop"})
		if err != nil {
			t.Fatal(err)
		}
		lay := st.Layout()
		crafted := map[string][]byte{
			lay.ActiveDir() + "/" + validID:        record(t, func(r *task.Record) { r.ID = "../../election/epoch"; r.Runner = "" }),
			lay.ActiveDir() + "/not-a-task-id":     record(t, func(r *task.Record) { r.ID = "not-a-task-id" }),
			lay.RunnersDir() + "/n9":               []byte(`{"node":"../n1","session":"lease-1","capacity":1}`),
			lay.RunnersDir() + "/n8":               []byte(`{"node":"n8","session":"../../x","capacity":1}`),
			lay.RunnerConfigDir() + "/-not-a-name": []byte(`{"cordoned":true}`),
		}
		written := map[string]int64{}
		for k, v := range crafted {
			got, err := kv.Create(ctx, k, v)
			if err != nil {
				t.Fatalf("write %s: %v", k, err)
			}
			written[k] = got.Version
		}
		list, err := st.List(ctx, task.Filter{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 1 || list[0].ID != real.ID {
			t.Errorf("list shows %d tasks (%v), want only %s", len(list), ids(list), real.ID)
		}
		if _, err := st.Get(ctx, validID); !errors.Is(err, task.ErrInvalid) {
			t.Errorf("get of a crafted record: %v, want ErrInvalid", err)
		}
		if _, err := st.Cancel(ctx, validID); !errors.Is(err, task.ErrInvalid) {
			t.Errorf("cancel of a crafted record: %v, want ErrInvalid", err)
		}
		runners, err := st.Runners(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(runners) != 0 {
			t.Errorf("crafted runner records were taken as runners: %+v", runners)
		}
		// Nothing taskd wrote moved: the crafted records are as written.
		for k, v := range crafted {
			got, err := kv.Get(ctx, k)
			if err != nil || string(got.Value) != string(v) || got.Version != written[k] {
				t.Errorf("crafted %s changed: %v %q", k, err, got.Value)
			}
		}
	})
}

// TestBuildersRefuseBadNames: store operations given a name that would
// leave its directory are refused before anything is written.
func TestBuildersRefuseBadNames(t *testing.T) {
	stores(t, func(t *testing.T, kv coord.Store) {
		ctx, st := ctxT(t), newStore(t, kv)
		for _, bad := range []string{"../runners/n1", "..", "n1/x", "", "n1\x00"} {
			if _, err := st.SetMarks(ctx, bad, true, func(m *task.Marks) { m.Cordoned = true }); !errors.Is(err, task.ErrInvalid) {
				t.Errorf("SetMarks(%q): %v, want ErrInvalid", bad, err)
			}
			if _, err := st.Create(ctx, task.CreateRequest{Type: bad}); !errors.Is(err, task.ErrInvalid) {
				t.Errorf("Create(type %q): %v, want ErrInvalid", bad, err)
			}
			if bad == "" {
				continue // no node is a valid request
			}
			if _, err := st.Create(ctx, task.CreateRequest{Type: "noop", Node: bad}); !errors.Is(err, task.ErrInvalid) {
				t.Errorf("Create(node %q): %v, want ErrInvalid", bad, err)
			}
		}
		list, err := st.List(ctx, task.Filter{})
		if err != nil {
			t.Fatal(err)
		}
		marks, err := kv.List(ctx, st.Layout().RunnerConfigDir())
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 0 || len(marks) != 0 {
			t.Errorf("refused requests wrote %d tasks and %d marks", len(list), len(marks))
		}
		if !errors.Is(keys.ErrInvalid, task.ErrInvalid) {
			t.Error("task.ErrInvalid is not keys.ErrInvalid")
		}
	})
}

func ids(rs []*task.Record) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.ID)
	}
	return out
}
