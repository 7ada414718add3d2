package volcmd

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/taskd/taskd/internal/volcopy"
)

// TestHumanBytesAsHumanize: our IEC sizes are go-humanize's IBytes (the
// library the bar and the summary used before), digit for digit, at and
// around every unit boundary and rounding edge.
func TestHumanBytesAsHumanize(t *testing.T) {
	var cases []int64
	for _, base := range []int64{1, 1 << 10, 1 << 20, 1 << 30, 1 << 40, 1 << 50, 1 << 60} {
		for _, m := range []int64{1, 9, 10, 99, 100, 512, 999, 1000, 1023} {
			if base > (1<<62)/m {
				continue
			}
			n := base * m
			cases = append(cases, n-1, n, n+1, n+n/20, n+n/20-1, n+n/200)
		}
	}
	cases = append(cases, 0, -5, 1<<62, 4096, 276*1<<20, 10239, 10240, 1048063, 1048064)
	for _, n := range cases {
		want := humanize.IBytes(uint64(max(n, 0)))
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, go-humanize says %q", n, got, want)
		}
	}
}

// TestBarLine: the bar fits the terminal without touching its last
// column, shows the copy's own percentage (not 100% for a copy that
// stopped part way) and the same figures as the log line; a terminal too
// narrow for a bar gets the figures.
func TestBarLine(t *testing.T) {
	p := volcopy.Progress{AllocatedDone: 1 << 30, AllocatedTotal: 4 << 30, Rate: 180 << 20, ETA: 17 * time.Second}
	for _, width := range []int{0, 20, 40, 60, 80, 81, 200} {
		line := barLine(p, width)
		limit := width - 1
		if width == 0 {
			limit = 79
		}
		if len(line) > limit {
			t.Errorf("width %d: %d columns: %q", width, len(line), line)
		}
		if !strings.HasPrefix(line, "copy  25% ") {
			t.Errorf("width %d: %q does not start with the percentage", width, line)
		}
		if width >= 80 && !strings.HasSuffix(line, "1.0 GiB / 4.0 GiB, 180 MiB/s, eta 17s") {
			t.Errorf("width %d: %q lacks the figures", width, line)
		}
	}
	if line := barLine(p, 100); !strings.Contains(line, "[") || strings.Count(line, "#") == 0 {
		t.Errorf("no bar at 100 columns: %q", line)
	}
	// A quarter done: about a quarter of the cells filled.
	line := barLine(p, 200)
	bar := line[strings.Index(line, "[")+1 : strings.Index(line, "]")]
	if full := strings.Count(bar, "#"); full != len(bar)/4 {
		t.Errorf("%d of %d cells filled at 25%%: %q", full, len(bar), line)
	}
	if line := barLine(volcopy.Progress{}, 80); !strings.HasPrefix(line, "copy 100% ") {
		t.Errorf("nothing to copy is done: %q", line)
	}
	if line := barLine(volcopy.Progress{AllocatedDone: 5, AllocatedTotal: 4}, 80); !strings.HasPrefix(line, "copy 100% ") {
		t.Errorf("overshoot: %q", line)
	}
}

// TestBarFinish: the last draw ends its line, so the summary (or the
// error) starts on a line of its own, and every draw returns to the line's
// start and clears what a longer line left.
func TestBarFinish(t *testing.T) {
	var buf bytes.Buffer
	b := &progressBar{w: &buf, width: func() int { return 80 }}
	b.draw(volcopy.Progress{AllocatedDone: 1, AllocatedTotal: 4})
	b.finish(volcopy.Progress{AllocatedDone: 2, AllocatedTotal: 4})
	out := buf.String()
	if strings.Count(out, "\r") != 2 || strings.Count(out, "\x1b[K") != 2 || !strings.HasSuffix(out, "\x1b[K\n") {
		t.Errorf("output %q", out)
	}
	if !strings.Contains(out, "\rcopy  50% ") {
		t.Errorf("the last draw is not where the copy stopped: %q", out)
	}
}
