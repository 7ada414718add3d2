package events_test

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/metrics"
	"github.com/taskd/taskd/internal/quorum"
)

// lineCatcher keeps the records logged to it.
type lineCatcher struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (c *lineCatcher) Enabled(context.Context, slog.Level) bool { return true }
func (c *lineCatcher) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.recs = append(c.recs, r.Clone())
	return nil
}
func (c *lineCatcher) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *lineCatcher) WithGroup(string) slog.Handler      { return c }

func (c *lineCatcher) lines() []map[string]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []map[string]uint64
	for _, r := range c.recs {
		m := map[string]uint64{}
		r.Attrs(func(a slog.Attr) bool {
			if a.Value.Kind() == slog.KindUint64 {
				m[a.Key] = a.Value.Uint64()
			}
			return true
		})
		out = append(out, m)
	}
	return out
}

// TestDropsReportedAndExported: events dropped on full queues (nobody
// writes the journal or publishes to the store) are logged once per
// interval with the interval's count, never for an interval without
// drops, and exported as taskd_events_dropped_total per queue.
func TestDropsReportedAndExported(t *testing.T) {
	r, err := events.Open(filepath.Join(t.TempDir(), "events.jsonl"), "n1", "/taskd")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	taps := slog.New(events.Tap(slog.NewTextHandler(io.Discard, nil), r))
	const extra = 7
	for i := range events.JournalQueueSize + extra {
		taps.Info("x", "event", "test_event", "i", i)
	}
	wantJournal, wantStore := uint64(extra), uint64(events.JournalQueueSize+extra-events.StoreQueueSize)
	if j, s := r.Dropped(); j != wantJournal || s != wantStore {
		t.Fatalf("Dropped: journal %d store %d, want %d and %d", j, s, wantJournal, wantStore)
	}

	set := metrics.New(func() *quorum.View { return nil })
	if err := set.CountEventDrops(r.Dropped); err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	set.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{
		`taskd_events_dropped_total{queue="journal"} 7`,
		`taskd_events_dropped_total{queue="store"} ` + strconv.FormatUint(wantStore, 10),
	} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("scrape lacks %s", want)
		}
	}

	// The reporter runs on ticks the test sends: a send returns once the
	// loop took the tick, that is after it handled the one before. The
	// last tick sent may still be in hand when the test goes on.
	catch := &lineCatcher{}
	ticks := make(chan time.Time)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.ReportDropsOn(ctx, ticks, slog.New(catch)) }()
	defer func() { cancel(); <-done }()
	tick := func(n int) {
		for range n {
			ticks <- time.Time{}
		}
	}
	tick(3) // one interval with the drops above, then two without
	if lines := catch.lines(); len(lines) != 1 {
		t.Fatalf("%d report lines after one interval with drops and one without, want 1: %v", len(lines), lines)
	} else if l := lines[0]; l["journal_dropped"] != wantJournal || l["store_dropped"] != wantStore {
		t.Errorf("first report %v, want journal_dropped %d store_dropped %d", l, wantJournal, wantStore)
	}
	// Two more drops on each queue. The third tick above may be handled
	// between the two (CI saw it), so they are counted in one interval or
	// split over two: together the later intervals count those two, not
	// the totals, and an interval without drops adds no line.
	for i := range 2 {
		taps.Info("x", "event", "test_event", "i", i)
	}
	tick(3) // at most one of these sees drops; the last two see none
	lines := catch.lines()[1:]
	if len(lines) < 1 || len(lines) > 2 {
		t.Fatalf("%d more report lines for two drops on each queue, want 1 or 2: %v", len(lines), lines)
	}
	var journal, store uint64
	for _, l := range lines {
		if l["journal_dropped"] == 0 && l["store_dropped"] == 0 {
			t.Errorf("a report line for an interval without drops: %v", l)
		}
		journal += l["journal_dropped"]
		store += l["store_dropped"]
	}
	last := lines[len(lines)-1]
	if journal != 2 || store != 2 || last["journal_dropped_total"] != wantJournal+2 || last["store_dropped_total"] != wantStore+2 {
		t.Errorf("later reports %v: want 2 and 2 over their intervals, totals %d and %d", lines, wantJournal+2, wantStore+2)
	}
}
