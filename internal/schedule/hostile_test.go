package schedule_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/schedule"
	"github.com/taskd/taskd/internal/testenv"
)

// hostileNames are schedule names a crafted request sends to reach other
// keys: traversal, separators, control characters, sizes.
var hostileNames = []string{
	"", ".", "..", "../defs/keep", "../../tasks/active/x", "../../election/epoch", "keep/..", "a/b", "/abs",
	"keep\x00", "a\nb", "a@b", "keep ", strings.Repeat("k", 64), strings.Repeat("k", 1<<16), "ｋeep",
}

// TestHostileNamesChangeNothing plays a client that crafts schedule names
// and trigger ids: every call is refused as invalid and no key under the
// root changes.
func TestHostileNamesChangeNothing(t *testing.T) {
	for _, b := range testenv.Backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			root, kv, _, scs := openStores(t, b)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, err := scs.Create(ctx, schedule.CreateRequest{Name: "keep", Spec: schedule.Spec{Every: "1h"}, Template: schedule.Template{Type: "noop"}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := kv.Create(ctx, root+"/election/epoch", []byte(`{"epoch":1}`)); err != nil {
				t.Fatal(err)
			}
			before := snapshot(ctx, t, kv, root)
			id := "0f8fad5b-d9cb-469f-a165-70867728950e"
			calls := map[string]func(name string) error{
				"create": func(n string) error {
					_, err := scs.Create(ctx, schedule.CreateRequest{Name: n, Spec: schedule.Spec{Every: "1h"}, Template: schedule.Template{Type: "noop"}})
					return err
				},
				"get":     func(n string) error { _, _, err := scs.Get(ctx, n); return err },
				"pause":   func(n string) error { _, err := scs.Pause(ctx, n, "x"); return err },
				"resume":  func(n string) error { _, err := scs.Resume(ctx, n); return err },
				"delete":  func(n string) error { return scs.Delete(ctx, n) },
				"trigger": func(n string) error { _, err := scs.Trigger(ctx, n, id); return err },
			}
			for op, call := range calls {
				for _, n := range hostileNames {
					if err := call(n); !errors.Is(err, schedule.ErrInvalid) {
						t.Errorf("%s %q: got %v, want ErrInvalid", op, n, err)
					}
				}
			}
			for _, bad := range []string{"", "../x", id + "/..", strings.ToUpper(id), "x\x00", "{" + id + "}"} {
				if _, err := scs.Trigger(ctx, "keep", bad); !errors.Is(err, schedule.ErrInvalid) {
					t.Errorf("trigger id %q: got %v, want ErrInvalid", bad, err)
				}
			}
			// A bad note is refused before anything is written.
			if _, err := scs.Pause(ctx, "keep", "line\nforged"); !errors.Is(err, schedule.ErrInvalid) {
				t.Errorf("note with a newline: %v", err)
			}
			after := snapshot(ctx, t, kv, root)
			if !slices.Equal(before, after) {
				t.Fatalf("keys changed:\nbefore %v\nafter  %v", before, after)
			}
		})
	}
}

// snapshot lists every key (and version) in the directories a crafted
// name could reach.
func snapshot(ctx context.Context, t *testing.T, kv coord.Store, root string) []string {
	t.Helper()
	var out []string
	for _, dir := range []string{root, root + "/schedules", root + "/schedules/defs", root + "/schedules/state",
		root + "/schedules/triggers", root + "/tasks", root + "/tasks/active", root + "/election"} {
		kvs, err := kv.List(ctx, dir)
		if err != nil && !errors.Is(err, coord.ErrNotFound) {
			t.Fatal(err)
		}
		for _, e := range kvs {
			out = append(out, fmt.Sprintf("%s@%d", e.Key, e.Version))
		}
	}
	return out
}
