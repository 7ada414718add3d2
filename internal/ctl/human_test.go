package ctl

import (
	"bytes"
	"strings"
	"testing"

	"github.com/taskd/taskd/api/taskdv1"
)

// TestProgressForPeople (issue 13): sizes, rates and times in one unit
// family (IEC), sleep progress with units, and the percentage once.
func TestProgressForPeople(t *testing.T) {
	const gib = 1 << 30
	for _, tc := range []struct {
		name string
		t    *taskdv1.Task
		line string
	}{
		{"running copy", &taskdv1.Task{Type: "copy", State: "running", Progress: &taskdv1.TaskProgress{Done: 2 * gib, Total: 4 * gib, Rate: 180 << 20, EtaSeconds: 12.4}},
			"50.0% 2.0 GiB / 4.0 GiB, 180 MiB/s, eta 12s"},
		{"stalled copy", &taskdv1.Task{Type: "copy", State: "running", Progress: &taskdv1.TaskProgress{Done: 512 << 20, Total: gib}},
			"50.0% 512 MiB / 1.0 GiB, 0 B/s, eta unknown"},
		{"finished copy", &taskdv1.Task{Type: "copy", State: "succeeded", Progress: &taskdv1.TaskProgress{Done: gib, Total: gib, Rate: 1 << 20}},
			"100.0% 1.0 GiB / 1.0 GiB"},
		{"paused copy", &taskdv1.Task{Type: "copy", State: "paused", Progress: &taskdv1.TaskProgress{Done: 1536, Total: 4096}},
			"37.5% 1.5 KiB / 4.0 KiB"},
		{"sleep", &taskdv1.Task{Type: "sleep", State: "running", Progress: &taskdv1.TaskProgress{Done: 3000, Total: 10000}},
			"30.0% 3s / 10s"},
		{"other type", &taskdv1.Task{Type: "noop", State: "running", Progress: &taskdv1.TaskProgress{Done: 3, Total: 4}},
			"75.0% 3 / 4"},
		{"no progress", &taskdv1.Task{Type: "copy", State: "waiting"}, "-"},
	} {
		if got := progressLine(tc.t); got != tc.line {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.line)
		}
		if strings.Contains(progressLine(tc.t), "MB") {
			t.Errorf("%s: SI unit in %q", tc.name, progressLine(tc.t))
		}
	}
}

// TestWaitLineShowsPercentOnce: a line per change has the percentage once;
// the bar's description has none (the bar draws it).
func TestWaitLineShowsPercentOnce(t *testing.T) {
	tk := &taskdv1.Task{Id: "t1", Type: "copy", State: "running", Attempt: 1, Runner: "n1",
		Progress: &taskdv1.TaskProgress{Done: 1 << 30, Total: 4 << 30, Rate: 100 << 20, EtaSeconds: 30}}
	if got, want := describe(tk, true), "running attempt 1 25.0% 1.0 GiB / 4.0 GiB, 100 MiB/s, eta 30s on n1"; got != want {
		t.Errorf("line: %q, want %q", got, want)
	}
	if got := describe(tk, false); strings.Contains(got, "%") {
		t.Errorf("bar description %q repeats the percentage", got)
	}
}

// TestWaitBarEndsItsLine: the bar's last line ends with a newline before
// the result is printed, also when the task failed half way (the bar is not
// moved to 100% then).
func TestWaitBarEndsItsLine(t *testing.T) {
	for _, final := range []string{"succeeded", "failed"} {
		var w bytes.Buffer
		d := newWaitDisplay(&w, false, true)
		d.update(&taskdv1.Task{Type: "sleep", State: "running", Attempt: 1, Progress: &taskdv1.TaskProgress{Done: 500, Total: 1000}})
		done := int64(1000)
		if final == "failed" {
			done = 700
		}
		d.update(&taskdv1.Task{Type: "sleep", State: final, Attempt: 1, Progress: &taskdv1.TaskProgress{Done: done, Total: 1000}})
		d.done()
		out := w.String()
		if !strings.HasSuffix(out, "\n") {
			t.Errorf("%s: bar output %q does not end its line", final, out)
		}
		if final == "failed" && strings.Contains(out, "100%") {
			t.Errorf("failed task drawn at 100%%: %q", out)
		}
		if strings.Count(out, "\n") != 1 {
			t.Errorf("%s: %d newlines in %q, want one, at the end", final, strings.Count(out, "\n"), out)
		}
	}
}
