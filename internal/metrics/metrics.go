// Package metrics holds taskd's Prometheus metrics. One Set exists per
// node; components get the few instruments they update, and the node's
// state (session, leadership, members, health) is read at scrape time from
// the quorum's view, so the figures are never stale.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/taskd/taskd/internal/quorum"
)

// Set is a node's metrics.
type Set struct {
	reg *prometheus.Registry

	// DispatchLatency: task creation to its first assignment.
	DispatchLatency prometheus.Histogram
	// Tasks counts unfinished tasks by state and type, as the leader's
	// dispatcher sees them (other nodes export none).
	Tasks *prometheus.GaugeVec
	// Assignments counts attempts started by this node's dispatcher.
	Assignments prometheus.Counter
	// GivenBack counts tasks taken from runners whose session ended.
	GivenBack prometheus.Counter
	// Attempts counts attempts this node's runner ended, by outcome.
	Attempts *prometheus.CounterVec
	// RunnerWrites counts the runner's attempt writes that went through
	// its batcher (--runner-batch-writes), by whether they were joined
	// with others into one store transaction; RunnerBatches counts those
	// transactions.
	RunnerWrites  *prometheus.CounterVec
	RunnerBatches prometheus.Counter
	// CopyBytes counts bytes written by copy tasks on this node.
	CopyBytes prometheus.Counter
	// CopyRate is the rate of the copy tasks running here, summed.
	CopyRate prometheus.Gauge
	// VIPHolding is 1 while this node holds (or is acquiring) a service's VIP.
	VIPHolding *prometheus.GaugeVec
	// Fences and FenceDuration describe this node's fences.
	Fences        *prometheus.CounterVec
	FenceDuration prometheus.Histogram
	// Starvation (internal/starve): how late the session heartbeats are
	// sent, the Go scheduler's latency, the cgroup's CPU throttling, and
	// whether the node counts as starved.
	HeartbeatLateness   prometheus.Histogram
	HeartbeatRoundTrip  prometheus.Histogram
	SchedLatencyP99     prometheus.Gauge
	CPUPeriods          prometheus.Counter
	CPUThrottledPeriods prometheus.Counter
	CPUThrottledSeconds prometheus.Counter
	Starved             prometheus.Gauge
}

// New registers every metric; view is read at each scrape (nil before the
// quorum exists).
func New(view func() *quorum.View) *Set {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s := &Set{
		reg: reg,
		DispatchLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "taskd_dispatch_latency_seconds", Help: "Time from a task's creation to its first assignment.",
			Buckets: []float64{.001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5},
		}),
		Tasks: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "taskd_tasks", Help: "Unfinished tasks by state and type (exported by the leader).",
		}, []string{"state", "type"}),
		Assignments: prometheus.NewCounter(prometheus.CounterOpts{Name: "taskd_dispatch_assignments_total", Help: "Attempts assigned by this node as leader."}),
		GivenBack:   prometheus.NewCounter(prometheus.CounterOpts{Name: "taskd_dispatch_given_back_total", Help: "Tasks taken back from runners whose session ended."}),
		Attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "taskd_runner_attempts_total", Help: "Attempts this node's runner ended, by outcome.",
		}, []string{"outcome"}),
		RunnerWrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "taskd_runner_batched_writes_total", Help: "Attempt writes through the runner's batcher (--runner-batch-writes), by how they reached the store: joined with others in one transaction, or alone.",
		}, []string{"how"}),
		RunnerBatches: prometheus.NewCounter(prometheus.CounterOpts{Name: "taskd_runner_write_batches_total", Help: "Store transactions that carried more than one attempt write (--runner-batch-writes)."}),
		CopyBytes:     prometheus.NewCounter(prometheus.CounterOpts{Name: "taskd_copy_bytes_written_total", Help: "Bytes written by copy tasks on this node."}),
		CopyRate:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "taskd_copy_rate_bytes_per_second", Help: "Summed rate of the copy tasks running on this node."}),
		VIPHolding:    prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "taskd_vip_holding", Help: "1 while this node holds or acquires the service's virtual IP."}, []string{"service"}),
		Fences: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "taskd_fences_total", Help: "Fences of this node, by whether they finished before the session could expire.",
		}, []string{"before_expiry"}),
		FenceDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "taskd_fence_duration_seconds", Help: "How long fencing took (roles cancelled and awaited).",
			Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2.5},
		}),
		HeartbeatLateness: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "taskd_heartbeat_lateness_seconds", Help: "How late each session heartbeat (keepalive) was sent against its schedule.",
			Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2, 4, 8},
		}),
		HeartbeatRoundTrip: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "taskd_heartbeat_round_trip_seconds", Help: "How long each session heartbeat took, to its answer or its failure.",
			Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2, 4, 8},
		}),
		SchedLatencyP99: prometheus.NewGauge(prometheus.GaugeOpts{Name: "taskd_sched_latency_p99_seconds",
			Help: "99th percentile of the Go scheduler's latency (runnable goroutines waiting to run) in the last sampling period."}),
		CPUPeriods: prometheus.NewCounter(prometheus.CounterOpts{Name: "taskd_cgroup_cpu_periods_total",
			Help: "CFS enforcement periods of the node's cgroup (cpu.stat nr_periods), counted while taskd observed them."}),
		CPUThrottledPeriods: prometheus.NewCounter(prometheus.CounterOpts{Name: "taskd_cgroup_cpu_throttled_periods_total",
			Help: "CFS periods in which the node's cgroup was throttled by its CPU quota (cpu.stat nr_throttled)."}),
		CPUThrottledSeconds: prometheus.NewCounter(prometheus.CounterOpts{Name: "taskd_cgroup_cpu_throttled_seconds_total",
			Help: "Time the node's cgroup spent throttled by its CPU quota (cpu.stat throttled_time / throttled_usec)."}),
		Starved: prometheus.NewGauge(prometheus.GaugeOpts{Name: "taskd_starved", Help: "1 while this node counts as starved of CPU."}),
	}
	reg.MustRegister(s.DispatchLatency, s.Tasks, s.Assignments, s.GivenBack, s.Attempts, s.RunnerWrites, s.RunnerBatches, s.CopyBytes, s.CopyRate,
		s.VIPHolding, s.Fences, s.FenceDuration, s.HeartbeatLateness, s.HeartbeatRoundTrip, s.SchedLatencyP99, s.CPUPeriods, s.CPUThrottledPeriods,
		s.CPUThrottledSeconds, s.Starved, &viewCollector{view: view})
	// Present from the start, at 0: a rate() or an alert on fences needs
	// the series before the first fence.
	s.Fences.WithLabelValues("true")
	s.Fences.WithLabelValues("false")
	s.RunnerWrites.WithLabelValues("joined")
	s.RunnerWrites.WithLabelValues("alone")
	return s
}

// Fenced records a fence.
func (s *Set) Fenced(r quorum.FenceReport) {
	before := "false"
	if r.BeforeExpiry {
		before = "true"
	}
	s.Fences.WithLabelValues(before).Inc()
	s.FenceDuration.Observe(r.Duration.Seconds())
}

// CountEventDrops exports the events the recorder dropped because a queue
// was full, as taskd_events_dropped_total{queue="journal"|"store"}; dropped
// (events.Recorder.Dropped) is read at every scrape. Call it once.
func (s *Set) CountEventDrops(dropped func() (journal, store uint64)) error {
	return s.reg.Register(dropCollector{dropped})
}

var droppedDesc = prometheus.NewDesc("taskd_events_dropped_total",
	"Timeline events dropped because their queue was full (journal: the local disk; store: the coordination store's ring).", []string{"queue"}, nil)

type dropCollector struct {
	dropped func() (journal, store uint64)
}

func (c dropCollector) Describe(ch chan<- *prometheus.Desc) { ch <- droppedDesc }

func (c dropCollector) Collect(ch chan<- prometheus.Metric) {
	journal, store := c.dropped()
	ch <- prometheus.MustNewConstMetric(droppedDesc, prometheus.CounterValue, float64(journal), "journal")
	ch <- prometheus.MustNewConstMetric(droppedDesc, prometheus.CounterValue, float64(store), "store")
}

// Handler serves the registry in the Prometheus text format.
func (s *Set) Handler() http.Handler {
	return promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg})
}

var (
	sessionDesc = prometheus.NewDesc("taskd_session_state", "1 for this node's current coordination session state.", []string{"state"}, nil)
	leaderDesc  = prometheus.NewDesc("taskd_is_leader", "1 if this node is the leader.", nil, nil)
	epochDesc   = prometheus.NewDesc("taskd_epoch", "The election epoch this node sees.", nil, nil)
	membersDesc = prometheus.NewDesc("taskd_members", "Members this node sees, by session state.", []string{"session"}, nil)
	readyDesc   = prometheus.NewDesc("taskd_ready", "1 if this node has joined with a live session.", nil, nil)
	healthDesc  = prometheus.NewDesc("taskd_healthy", "1 if this node reports itself healthy.", nil, nil)
)

// viewCollector reads the quorum's view at scrape time.
type viewCollector struct{ view func() *quorum.View }

func (c *viewCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{sessionDesc, leaderDesc, epochDesc, membersDesc, readyDesc, healthDesc} {
		ch <- d
	}
}

func (c *viewCollector) Collect(ch chan<- prometheus.Metric) {
	v := c.view()
	if v == nil {
		ch <- prometheus.MustNewConstMetric(sessionDesc, prometheus.GaugeValue, 1, "connecting")
		ch <- prometheus.MustNewConstMetric(readyDesc, prometheus.GaugeValue, 0)
		return
	}
	for _, st := range []string{"running", "connecting", "expired", "stopped"} {
		val := 0.0
		if v.Session == st {
			val = 1
		}
		ch <- prometheus.MustNewConstMetric(sessionDesc, prometheus.GaugeValue, val, st)
	}
	ch <- prometheus.MustNewConstMetric(leaderDesc, prometheus.GaugeValue, b2f(v.Leader != "" && v.Leader == v.Self))
	ch <- prometheus.MustNewConstMetric(epochDesc, prometheus.GaugeValue, float64(v.Epoch))
	ch <- prometheus.MustNewConstMetric(readyDesc, prometheus.GaugeValue, b2f(v.Ready))
	counts := map[string]int{}
	healthy := true
	for _, m := range v.Members {
		counts[m.Session]++
		if m.Name == v.Self && m.Health != "" && m.Health != "ok" {
			healthy = false
		}
	}
	for st, n := range counts {
		ch <- prometheus.MustNewConstMetric(membersDesc, prometheus.GaugeValue, float64(n), st)
	}
	ch <- prometheus.MustNewConstMetric(healthDesc, prometheus.GaugeValue, b2f(healthy))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
