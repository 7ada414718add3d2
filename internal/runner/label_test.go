package runner

import (
	"regexp"
	"testing"
)

// TestMetricLabel (issue 13): the outcomes of attempts, some of several
// words, become label values without spaces.
func TestMetricLabel(t *testing.T) {
	ok := regexp.MustCompile(`^[a-z_]+$`)
	for in, want := range map[outcome]string{outcomeWindowClosed: "window_closed", outcomeDrained: "runner_drained", outcomeStopped: "stopped_on_request", outcomeSucceeded: "succeeded", outcomeFailed: "failed"} {
		if got := metricLabel(in); got != want || !ok.MatchString(got) {
			t.Errorf("metricLabel(%q) = %q, want %q", in, got, want)
		}
	}
}
