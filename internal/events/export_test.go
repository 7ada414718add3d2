package events

import (
	"context"
	"log/slog"
	"time"
)

// Queue sizes, for the external tests.
const (
	JournalQueueSize = journalQueueSize
	StoreQueueSize   = queueSize
)

// ReportDropsOn is ReportDrops driven by the test's ticks.
func (r *Recorder) ReportDropsOn(ctx context.Context, ticks <-chan time.Time, log *slog.Logger) {
	r.reportDrops(ctx, ticks, time.Minute, log)
}
