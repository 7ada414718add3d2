package events

import (
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTapJournalAndMerge: only lines with an "event" attribute are
// recorded, with the logger's own attributes; the journal survives a
// reopen with its sequence; it is cut back when it grows too long; Merge
// orders by time and drops duplicates.
func TestTapJournalAndMerge(t *testing.T) {
	p := filepath.Join(t.TempDir(), "events.jsonl")
	r, err := Open(p, "n1", "/taskd")
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(Tap(slog.NewTextHandler(io.Discard, nil), r)).With("session", "s1")
	log.Info("not an event")
	log.Info("elected leader", "event", "election", "epoch", 3)
	ev, err := r.Local()
	if err != nil || len(ev) != 1 {
		t.Fatalf("journal %v %v; want one event", ev, err)
	}
	if e := ev[0]; e.Type != "election" || e.Attrs["epoch"] != "3" || e.Attrs["session"] != "s1" || e.Seq != 1 || e.Node != "n1" {
		t.Fatalf("event %+v", e)
	}
	r.Close()
	r, err = Open(p, "n1", "/taskd")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.Record("start", "taskd starting", nil)
	ev, _ = r.Local()
	if len(ev) != 2 || ev[1].Seq != 2 {
		t.Fatalf("after reopen: %+v", ev)
	}
	for i := range journalMax {
		r.Record("health", "x", nil)
		select { // keep the queue from filling: nothing publishes here
		case <-r.queue:
		default:
		}
		if i%1000 == 0 { // stand in for RunJournal, without racing it
			r.mu.Lock()
			r.flushLocked(nil)
			r.mu.Unlock()
		}
	}
	ev, _ = r.Local()
	if len(ev) > journalMax || ev[len(ev)-1].Seq != uint64(journalMax+2) {
		t.Fatalf("journal not cut back: %d lines, last seq %d", len(ev), ev[len(ev)-1].Seq)
	}
	t0 := time.Now()
	a := Event{Time: t0.Add(time.Second), Node: "n2", Seq: 1}
	b := Event{Time: t0, Node: "n1", Seq: 7}
	m := Merge([]Event{a, b}, []Event{b})
	if len(m) != 2 || m[0].Node != "n1" {
		t.Fatalf("merge %+v", m)
	}
}

// TestTapIgnoresLogLevel: an event logged at info is recorded even when
// the log shows only warnings, and the log still shows only warnings.
func TestTapIgnoresLogLevel(t *testing.T) {
	r, err := Open(filepath.Join(t.TempDir(), "events.jsonl"), "n1", "/taskd")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var out strings.Builder
	log := slog.New(Tap(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelWarn}), r))
	log.Info("SetVIP iscsi by token 0123abcd (admin): ok", "event", "audit")
	log.Debug("debug event", "event", "noise")
	ev, err := r.Local()
	if err != nil || len(ev) != 1 || ev[0].Type != "audit" {
		t.Fatalf("journal %+v %v; want the audit event", ev, err)
	}
	if out.Len() != 0 {
		t.Fatalf("the info line reached a warn-level log: %q", out.String())
	}
}
