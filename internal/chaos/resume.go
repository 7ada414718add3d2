package chaos

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"
)

// faultSpan is one injected fault: from its injection to the moment the
// cluster was whole again.
type faultSpan struct {
	n            int
	kind, what   string
	began, whole time.Time
}

// resumeGap is one resume sample: the gap between the last work of one
// attempt of a task and the first work of the next.
type resumeGap struct {
	task                string
	from, to            int
	lastWork, firstWork time.Time
	// key is the task's concurrency key ("" for none); keyBusy, the time
	// within the gap that other tasks of that key were working.
	key     string
	keyBusy time.Duration
}

// SlowResume explains one resume sample over the campaign's goal
// (2 × session timeout + 2 s): where its time went, and which faults fell
// into it.
type SlowResume struct {
	Task     string
	Attempts string        // "2->3"
	Gap      time.Duration // last work of one attempt to first of the next
	// Noticed: last work to the end of the old attempt in the task's
	// history (session expiry or fence, plus the leader's requeue).
	// Dispatched: that end to the start of the next attempt. Started: the
	// next attempt's start to its first work. A phase the history does not
	// show is negative.
	Noticed, Dispatched, Started time.Duration
	OldRunner, NewRunner         string
	Faults                       []string // "3:partition n1" for each fault in the gap
	// Key is the task's concurrency key, KeyBusy the part of the gap in
	// which other tasks of the key worked.
	Key     string
	KeyBusy time.Duration
}

func (s SlowResume) String() string {
	ph := func(d time.Duration) string {
		if d < 0 {
			return "?"
		}
		return d.Round(10 * time.Millisecond).String()
	}
	key := ""
	if s.Key != "" {
		key = fmt.Sprintf("; key %s busy with other tasks' work for %v of the gap", s.Key, s.KeyBusy.Round(10*time.Millisecond))
	}
	return fmt.Sprintf("slow resume %s attempt %s: %v = noticed %s + dispatched %s + started %s (runner %s -> %s)%s faults in the gap: %s",
		s.Task, s.Attempts, s.Gap.Round(10*time.Millisecond), ph(s.Noticed), ph(s.Dispatched), ph(s.Started),
		s.OldRunner, s.NewRunner, key, strings.Join(s.Faults, ", "))
}

// faultsIn lists the faults whose span meets [from, to].
func faultsIn(spans []faultSpan, from, to time.Time) []faultSpan {
	var out []faultSpan
	for _, f := range spans {
		if !f.began.After(to) && !f.whole.Before(from) {
			out = append(out, f)
		}
	}
	return out
}

// historyEntry is one attempt of `taskctl task show -o json`.
type historyEntry struct {
	N       int       `json:"n"`
	Runner  string    `json:"runner"`
	Started time.Time `json:"started"`
	Ended   time.Time `json:"ended"`
	Outcome string    `json:"outcome"`
}

// breakDownResumes splits the resume samples by how many faults fell into
// each gap, and explains every gap over the goal from the task's history.
func (r *run) breakDownResumes() {
	goal := 2*r.cfg.SessionTimeout + 2*time.Second
	r.mu.Lock()
	gaps, spans := r.gaps, r.spans
	r.mu.Unlock()
	sort.Slice(gaps, func(i, j int) bool { return gaps[i].lastWork.Before(gaps[j].lastWork) })
	for _, g := range gaps {
		gap := g.firstWork.Sub(g.lastWork)
		r.rep.ResumeKeyFree = append(r.rep.ResumeKeyFree, gap-g.keyBusy)
		in := faultsIn(spans, g.lastWork.Add(-time.Second), g.firstWork)
		if len(in) > 1 {
			r.rep.ResumeCompound = append(r.rep.ResumeCompound, gap)
		} else {
			r.rep.ResumeSingle = append(r.rep.ResumeSingle, gap)
		}
		if gap <= goal {
			continue
		}
		s := SlowResume{Task: g.task, Attempts: fmt.Sprintf("%d->%d", g.from, g.to), Gap: gap, Noticed: -1, Dispatched: -1, Started: -1,
			Key: g.key, KeyBusy: g.keyBusy}
		for _, f := range in {
			s.Faults = append(s.Faults, fmt.Sprintf("%d:%s (%s, %s after the last work; whole again %s after it)", f.n, f.kind, f.what,
				f.began.Sub(g.lastWork).Round(100*time.Millisecond), f.whole.Sub(g.lastWork).Round(100*time.Millisecond)))
		}
		r.explain(&s, g)
		r.rep.SlowResumes = append(r.rep.SlowResumes, s)
	}
}

// explain fills the phases of s from the task's attempt history.
func (r *run) explain(s *SlowResume, g resumeGap) {
	out, err := r.ctl("task", "show", g.task, "-o", "json")
	if err != nil {
		return
	}
	var t struct {
		History []historyEntry `json:"history"`
	}
	if json.Unmarshal([]byte(out), &t) != nil {
		return
	}
	var old, next *historyEntry
	for i := range t.History {
		switch t.History[i].N {
		case g.from:
			old = &t.History[i]
		case g.to:
			next = &t.History[i]
		}
	}
	if old != nil {
		s.OldRunner = old.Runner + "/" + old.Outcome
		if !old.Ended.IsZero() {
			s.Noticed = old.Ended.Sub(g.lastWork)
		}
	}
	if next != nil {
		s.NewRunner = next.Runner
		if old != nil && !old.Ended.IsZero() {
			s.Dispatched = next.Started.Sub(old.Ended)
		}
		s.Started = g.firstWork.Sub(next.Started)
	}
}

// explainVIPMove records a VIP move over the goal (timeout + 2 s) with the
// faults that fell into it.
func (r *run) explainVIPMove(last, first time.Time) {
	gap := first.Sub(last)
	if gap <= r.cfg.SessionTimeout+2*time.Second {
		return
	}
	var fs []string
	for _, f := range faultsIn(r.spans, last.Add(-time.Second), first) {
		fs = append(fs, fmt.Sprintf("%d:%s (%s, %s after the last answer; whole again %s after it)", f.n, f.kind, f.what,
			f.began.Sub(last).Round(100*time.Millisecond), f.whole.Sub(last).Round(100*time.Millisecond)))
	}
	r.rep.SlowVIPMoves = append(r.rep.SlowVIPMoves, fmt.Sprintf("slow vip move at %s: %v; faults in the gap: %s",
		last.Format(time.StampMilli), gap.Round(10*time.Millisecond), strings.Join(fs, ", ")))
}
