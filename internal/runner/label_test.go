package runner

import (
	"regexp"
	"testing"
)

// TestMetricLabel (issue 13): the outcomes of attempts, some of several
// words, become label values without spaces.
func TestMetricLabel(t *testing.T) {
	ok := regexp.MustCompile(`^[a-z_]+$`)
	for in, want := range map[string]string{"window closed": "window_closed", "runner drained": "runner_drained", "stopped on request": "stopped_on_request", "succeeded": "succeeded"} {
		if got := metricLabel(in); got != want || !ok.MatchString(got) {
			t.Errorf("metricLabel(%q) = %q, want %q", in, got, want)
		}
	}
}
