package volcmd

import (
	"strings"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/volcopy"
)

// TestSummaryOfResumedVerify: a resumed run verified only the extents it
// copied; its verified line says so instead of claiming all.
func TestSummaryOfResumedVerify(t *testing.T) {
	p := progressFor(8, 5)
	out := summary(p, 0, true)
	if strings.Contains(out, "verified: all") || !strings.Contains(out, "5 of 8 checkpoint units") || !strings.Contains(out, "3 copied before the checkpoint") {
		t.Errorf("resumed verify: %q", out)
	}
	if out := summary(progressFor(1, 1), 0, true); !strings.Contains(out, "verified: source and target hash equal (XXH3, one checkpoint unit)") {
		t.Errorf("one unit: %q", out)
	}
	if out := summary(progressFor(8, 0), 0, true); strings.Contains(out, "verified") {
		t.Errorf("nothing verified, yet: %q", out)
	}
}

func progressFor(total, verified int64) volcopy.Progress {
	return volcopy.Progress{ExtentsTotal: total, ExtentsDone: total, ExtentsVerified: verified, LogicalTotal: 8 << 20, BytesRead: 8 << 20}
}

// TestFormatProgressETA: a copy without a usable rate (none measured yet,
// or stalled) shows "eta unknown", never a negative or overflowed figure.
func TestFormatProgressETA(t *testing.T) {
	for _, tc := range []struct {
		p    volcopy.Progress
		want string
	}{
		{volcopy.Progress{AllocatedDone: 1 << 20, AllocatedTotal: 4 << 20, Rate: 1 << 20, ETA: 3 * time.Second}, "eta 3s"},
		{volcopy.Progress{AllocatedDone: 1 << 20, AllocatedTotal: 4 << 20}, "eta unknown"},
		{volcopy.Progress{AllocatedDone: 4 << 20, AllocatedTotal: 4 << 20}, "eta 0s"},
	} {
		if got := formatProgress(tc.p); !strings.HasSuffix(got, tc.want) || strings.Contains(got, "-") {
			t.Errorf("formatProgress(%+v) = %q, want it to end in %q", tc.p, got, tc.want)
		}
	}
}
