package starve

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/taskd/taskd/internal/metrics"
	"github.com/taskd/taskd/internal/quorum"
)

// eventLog captures the "event" attribute of log records.
type eventLog struct {
	mu     sync.Mutex
	events []string
}

func (l *eventLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *eventLog) Handle(_ context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "event" {
			l.mu.Lock()
			l.events = append(l.events, a.Value.String())
			l.mu.Unlock()
		}
		return true
	})
	return nil
}
func (l *eventLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *eventLog) WithGroup(string) slog.Handler      { return l }

// TestMonitorRun drives the real sampling loop with late heartbeats: it
// reports starved (event, callback, metric) and, once the heartbeats are
// on time for the grace, recovered.
func TestMonitorRun(t *testing.T) {
	cfg := Config{Policy: Policy{Threshold: 200 * time.Millisecond, EnterLate: 2, EnterWindow: time.Second, Grace: 600 * time.Millisecond, Window: 2 * time.Second},
		Interval: 50 * time.Millisecond, Refresh: time.Second}
	met := metrics.New(func() *quorum.View { return nil })
	logs := &eventLog{}
	changes := make(chan bool, 16)
	m, err := New(cfg, met, slog.New(logs), func(starved bool, reason string) {
		if starved && !strings.Contains(reason, "heartbeats up to") {
			t.Errorf("starved reason %q", reason)
		}
		changes <- starved
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); m.Run(ctx) }()
	defer func() { cancel(); wg.Wait() }()

	// Late heartbeats, one per sampling period, until the monitor says so.
	tick := time.NewTicker(cfg.Interval)
	defer tick.Stop()
	deadline := time.After(5 * time.Second)
	for entered := false; !entered; {
		select {
		case st := <-changes:
			if !st {
				t.Fatal("recovered before starving")
			}
			entered = true
		case <-tick.C:
			m.ObserveHeartbeat(500*time.Millisecond, time.Millisecond)
		case <-deadline:
			t.Fatal("not starved after 5 s of heartbeats 500 ms late")
		}
	}
	if st := m.Status(); !st.Starved || st.Figures.MaxLate < 500*time.Millisecond {
		t.Fatalf("status %+v", st)
	}
	if got := gauge(met.Starved); got != 1 {
		t.Fatalf("taskd_starved = %v", got)
	}
	// On-time heartbeats: recovered after the grace.
	start := time.Now()
	deadline = time.After(5 * time.Second)
	for recovered := false; !recovered; {
		select {
		case st := <-changes:
			recovered = !st
		case <-tick.C:
			m.ObserveHeartbeat(time.Millisecond, time.Millisecond)
		case <-deadline:
			t.Fatal("not recovered after 5 s of heartbeats on time")
		}
	}
	if el := time.Since(start); el < cfg.Grace {
		t.Fatalf("recovered after %v, before the grace %v", el, cfg.Grace)
	}
	logs.mu.Lock()
	got := strings.Join(logs.events, ",")
	logs.mu.Unlock()
	if got != "starved,recovered" {
		t.Fatalf("events %q, want starved,recovered", got)
	}
	if gauge(met.Starved) != 0 {
		t.Fatal("taskd_starved still 1 after recovery")
	}
}

func gauge(g prometheus.Gauge) float64 {
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		return -1
	}
	return m.GetGauge().GetValue()
}
