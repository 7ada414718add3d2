package dispatch

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/task"
)

func runnerOf(node string, running, capacity int, types ...string) *task.Runner {
	if len(types) == 0 {
		types = []string{"sleep"}
	}
	return &task.Runner{Info: task.RunnerInfo{Node: node, Capacity: capacity, Types: types}, Live: true, Running: running, RunningByType: map[string]int{}}
}

// TestPick: the least loaded runner that accepts the task, ties by name;
// nobody when no runner accepts it.
func TestPick(t *testing.T) {
	sleep := &task.Record{Type: "sleep"}
	cases := []struct {
		name    string
		runners []*task.Runner
		edit    func(rs []*task.Runner)
		rec     *task.Record
		want    string // "" for none
	}{
		{"least loaded", []*task.Runner{runnerOf("a", 3, 8), runnerOf("b", 1, 8), runnerOf("c", 2, 8)}, nil, sleep, "b"},
		{"tie goes by name", []*task.Runner{runnerOf("c", 1, 8), runnerOf("a", 1, 8), runnerOf("b", 1, 8)}, nil, sleep, "a"},
		{"full runner skipped", []*task.Runner{runnerOf("a", 2, 2), runnerOf("b", 5, 8)}, nil, sleep, "b"},
		{"not live skipped", []*task.Runner{runnerOf("a", 0, 8), runnerOf("b", 4, 8)}, func(rs []*task.Runner) { rs[0].Live = false }, sleep, "b"},
		{"cordoned skipped", []*task.Runner{runnerOf("a", 0, 8), runnerOf("b", 4, 8)}, func(rs []*task.Runner) { rs[0].Marks.Cordoned = true }, sleep, "b"},
		{"draining skipped", []*task.Runner{runnerOf("a", 0, 8), runnerOf("b", 4, 8)}, func(rs []*task.Runner) { rs[0].Marks.Draining = true }, sleep, "b"},
		{"type it does not run", []*task.Runner{runnerOf("a", 0, 8, "noop"), runnerOf("b", 4, 8)}, nil, sleep, "b"},
		{"type capacity", []*task.Runner{runnerOf("a", 1, 8), runnerOf("b", 4, 8)}, func(rs []*task.Runner) {
			rs[0].Info.TypeCapacity = map[string]int{"sleep": 1}
			rs[0].RunningByType["sleep"] = 1
		}, sleep, "b"},
		{"node constraint beats load", []*task.Runner{runnerOf("a", 0, 8), runnerOf("b", 4, 8)}, nil, &task.Record{Type: "sleep", Node: "b"}, "b"},
		{"constraint to a node without a runner", []*task.Runner{runnerOf("a", 0, 8)}, nil, &task.Record{Type: "sleep", Node: "z"}, ""},
		{"nobody accepts", []*task.Runner{runnerOf("a", 8, 8), runnerOf("b", 0, 8, "noop")}, nil, sleep, ""},
		{"no runners", nil, nil, sleep, ""},
		{"a retry goes to another runner than the one it failed on", []*task.Runner{runnerOf("a", 0, 8), runnerOf("b", 4, 8)}, nil, retryOf("a", "failed"), "b"},
		{"and after its runner was lost", []*task.Runner{runnerOf("a", 0, 8), runnerOf("b", 4, 8)}, nil, retryOf("a", "runner lost"), "b"},
		{"back to the same runner when no other accepts it", []*task.Runner{runnerOf("a", 0, 8), runnerOf("b", 8, 8)}, nil, retryOf("a", "failed"), "a"},
		{"a parked task may go back to its runner", []*task.Runner{runnerOf("a", 0, 8), runnerOf("b", 4, 8)}, nil, retryOf("a", "window closed"), "a"},
		{"a node constraint beats the retry's preference", []*task.Runner{runnerOf("a", 0, 8), runnerOf("b", 0, 8)}, nil,
			func() *task.Record { r := retryOf("a", "failed"); r.Node = "a"; return r }(), "a"},
		{"a starved runner only when no other takes the task", []*task.Runner{runnerOf("a", 0, 8), runnerOf("b", 6, 8)}, func(rs []*task.Runner) { rs[0].Starved = true }, sleep, "b"},
		{"a starved runner when every other is full", []*task.Runner{runnerOf("a", 0, 8), runnerOf("b", 8, 8)}, func(rs []*task.Runner) { rs[0].Starved = true }, sleep, "a"},
		{"the least loaded of two starved runners", []*task.Runner{runnerOf("a", 3, 8), runnerOf("b", 1, 8)}, func(rs []*task.Runner) { rs[0].Starved, rs[1].Starved = true, true }, sleep, "b"},
		{"a node constraint beats starvation", []*task.Runner{runnerOf("a", 0, 8), runnerOf("b", 0, 8)}, func(rs []*task.Runner) { rs[0].Starved = true }, &task.Record{Type: "sleep", Node: "a"}, "a"},
		{"a retry avoids the runner it failed on before a starved one", []*task.Runner{runnerOf("a", 0, 8), runnerOf("b", 0, 8)}, func(rs []*task.Runner) { rs[0].Starved = true }, retryOf("b", "failed"), "a"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.edit != nil {
				tc.edit(tc.runners)
			}
			m := map[string]*task.Runner{}
			for _, rn := range tc.runners {
				m[rn.Info.Node] = rn
			}
			// A map's order varies from run to run: pick many times.
			for range 20 {
				got := ""
				if rn := pick(m, tc.rec); rn != nil {
					got = rn.Info.Node
				}
				if got != tc.want {
					t.Fatalf("pick: %q, want %q", got, tc.want)
				}
			}
		})
	}
}

// TestDispatchOrder: higher priority first, then the older task, then
// the smaller id; whatever order the tasks come in.
func TestDispatchOrder(t *testing.T) {
	t0 := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	rec := func(id string, prio int, age time.Duration) *task.Record {
		return &task.Record{ID: id, Priority: prio, Created: t0.Add(-age)}
	}
	cases := []struct {
		name string
		in   []*task.Record
		want string
	}{
		{"priority first", []*task.Record{rec("a", 0, 3*time.Hour), rec("b", 5, 0), rec("c", 1, time.Hour)}, "b c a"},
		{"older first within a priority", []*task.Record{rec("a", 2, time.Minute), rec("b", 2, time.Hour), rec("c", 2, time.Second)}, "b a c"},
		{"id breaks a tie of priority and time", []*task.Record{rec("t-9", 1, 0), rec("t-1", 1, 0), rec("t-5", 1, 0)}, "t-1 t-5 t-9"},
		{"negative priority last", []*task.Record{rec("a", -1, time.Hour), rec("b", 0, 0)}, "b a"},
		{"all three keys", []*task.Record{rec("d", 0, 0), rec("c", 3, 0), rec("b", 3, time.Second), rec("a", 3, 0)}, "b a c d"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for i := range len(tc.in) {
				// Every rotation of the input sorts the same.
				in := append(slices.Clone(tc.in[i:]), tc.in[:i]...)
				slices.Reverse(in[:len(in)/2])
				slices.SortFunc(in, dispatchOrder)
				ids := make([]string, len(in))
				for j, r := range in {
					ids[j] = r.ID
				}
				if got := strings.Join(ids, " "); got != tc.want {
					t.Fatalf("order %q, want %q", got, tc.want)
				}
			}
		})
	}
}

// retryOf is a waiting sleep task whose last attempt ran on runner and
// ended with outcome.
func retryOf(runner, outcome string) *task.Record {
	return &task.Record{Type: "sleep", Attempt: 1, History: []task.Attempt{{N: 1, Runner: runner, Outcome: outcome}}}
}
