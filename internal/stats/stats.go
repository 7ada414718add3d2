// Package stats summarises measured durations for benchmark and campaign
// reports.
package stats

import (
	"fmt"
	"slices"
	"time"
)

// Summary is "n=N min=.. p50=.. p99=.. max=..", or "n=0" for no samples.
func Summary(s []time.Duration) string {
	if len(s) == 0 {
		return "n=0"
	}
	s = slices.Clone(s)
	slices.Sort(s)
	q := func(p float64) time.Duration {
		i := int(p*float64(len(s)-1) + 0.5)
		return s[i].Round(time.Millisecond)
	}
	return fmt.Sprintf("n=%d min=%v p50=%v p99=%v max=%v", len(s), s[0].Round(time.Millisecond), q(0.5), q(0.99), s[len(s)-1].Round(time.Millisecond))
}
