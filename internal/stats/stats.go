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
	q := func(p float64) time.Duration { return sortedQuantile(s, p).Round(time.Millisecond) }
	return fmt.Sprintf("n=%d min=%v p50=%v p99=%v max=%v", len(s), q(0), q(0.5), q(0.99), q(1))
}

// Quantile is the p-quantile (0 <= p <= 1) of s as Summary reports it (the
// nearest rank, unrounded), or 0 for no samples.
func Quantile(s []time.Duration, p float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	s = slices.Clone(s)
	slices.Sort(s)
	return sortedQuantile(s, p)
}

func sortedQuantile(s []time.Duration, p float64) time.Duration {
	return s[int(p*float64(len(s)-1)+0.5)]
}
