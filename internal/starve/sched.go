package starve

import (
	"math"
	"runtime/metrics"
	"time"
)

const schedMetric = "/sched/latencies:seconds"

// schedReader reads the Go runtime's scheduling latency histogram (time
// goroutines spend runnable before they run) and reports the 99th
// percentile of the latencies recorded since the previous read.
type schedReader struct {
	sample []metrics.Sample
	prev   []uint64
}

func newSchedReader() *schedReader {
	return &schedReader{sample: []metrics.Sample{{Name: schedMetric}}}
}

// p99 returns the period's 99th percentile, 0 when nothing was recorded.
func (r *schedReader) p99() time.Duration {
	metrics.Read(r.sample)
	if r.sample[0].Value.Kind() != metrics.KindFloat64Histogram {
		return 0
	}
	h := r.sample[0].Value.Float64Histogram()
	counts := make([]uint64, len(h.Counts))
	copy(counts, h.Counts)
	var d []uint64
	if len(r.prev) == len(counts) {
		d = make([]uint64, len(counts))
		for i := range counts {
			d[i] = counts[i] - r.prev[i]
		}
	}
	r.prev = counts
	if d == nil {
		return 0
	}
	return quantile(d, h.Buckets, 0.99)
}

// quantile of a histogram: counts[i] holds values in [buckets[i],
// buckets[i+1]); the answer is the upper bound of the bucket that holds
// the q-th value (its lower bound for the open-ended last bucket).
func quantile(counts []uint64, buckets []float64, q float64) time.Duration {
	var total uint64
	for _, c := range counts {
		total += c
	}
	if total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(total)))
	var seen uint64
	for i, c := range counts {
		seen += c
		if seen >= rank {
			v := buckets[i+1]
			if math.IsInf(v, 1) {
				v = buckets[i]
			}
			return time.Duration(v * float64(time.Second))
		}
	}
	return 0
}
