package events

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestHandlerDoesNotWaitForJournal plays a hung disk: the journal is a
// FIFO nobody reads, so its writes block once the pipe's buffer is full.
// Logging events (fence_started is one) must still return at once; the
// events the journal could not take are counted as dropped, and once the
// disk moves again the journal catches up with what it queued.
func TestHandlerDoesNotWaitForJournal(t *testing.T) {
	dir := t.TempDir()
	r, err := Open(filepath.Join(dir, "events.jsonl"), "n1", "/taskd")
	if err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "stalled")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// The read end is opened first (non-blocking) so that the write end
	// opens; it is read only at the end, to unblock the writer.
	rd, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	wr, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	r.f.Close()
	r.f = wr
	r.mu.Unlock()
	stopJournal := startJournal(t, r)

	log := slog.New(Tap(slog.NewTextHandler(io.Discard, nil), r))
	// Far more than a pipe buffer (64 KiB) and both queues hold.
	const events = 20000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range events {
			log.Info("fencing started", "event", "fence_started", "i", i)
		}
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		// Unblock the handler so the test can end, then fail.
		go io.Copy(io.Discard, rd)
		<-done
		t.Fatalf("logging %d events took more than 20s with the journal stalled: the handler waits for the disk", events)
	}
	checkDrops(t, r, events)
	// The disk moves again: the writer finishes its write and ends.
	var drain sync.WaitGroup
	drain.Add(1)
	go func() { defer drain.Done(); io.Copy(io.Discard, rd) }()
	stopJournal()
	r.mu.Lock()
	wr.Close()
	r.f, _ = os.OpenFile(filepath.Join(dir, "events.jsonl"), os.O_WRONLY|os.O_APPEND, 0o640)
	r.mu.Unlock()
	drain.Wait()
	r.Close()
}

// startJournal runs r's journal writer until the returned stop is called
// (or the test ends).
func startJournal(t *testing.T, r *Recorder) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.RunJournal(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

// checkDrops: with the journal stalled, some events were dropped from its
// queue, and no more than were recorded.
func checkDrops(t *testing.T, r *Recorder, recorded int) {
	t.Helper()
	journal, _ := r.Dropped()
	if journal == 0 || journal > uint64(recorded) {
		t.Fatalf("%d events dropped from the stalled journal's queue, want between 1 and %d", journal, recorded)
	}
}
