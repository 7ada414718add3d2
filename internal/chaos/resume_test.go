package chaos

import (
	"testing"
	"time"
)

func TestFaultsIn(t *testing.T) {
	t0 := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	spans := []faultSpan{
		{n: 1, began: at(0), whole: at(5)},
		{n: 2, began: at(10), whole: at(15)},
		{n: 3, began: at(20), whole: at(30)},
	}
	for _, c := range []struct {
		from, to int
		want     []int
	}{
		{from: 6, to: 9, want: nil},          // between faults
		{from: 4, to: 11, want: []int{1, 2}}, // ends of two faults
		{from: 5, to: 10, want: []int{1, 2}}, // touching both edges
		{from: 22, to: 25, want: []int{3}},   // inside one fault
		{from: -5, to: 40, want: []int{1, 2, 3}},
	} {
		var got []int
		for _, f := range faultsIn(spans, at(c.from), at(c.to)) {
			got = append(got, f.n)
		}
		if len(got) != len(c.want) {
			t.Errorf("[%d,%d]: got faults %v, want %v", c.from, c.to, got, c.want)
			continue
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Errorf("[%d,%d]: got faults %v, want %v", c.from, c.to, got, c.want)
				break
			}
		}
	}
}

func TestSlowResumeUnknownPhase(t *testing.T) {
	s := SlowResume{Task: "t1", Attempts: "1->2", Gap: 11 * time.Second, Noticed: 9 * time.Second, Dispatched: -1, Started: 20 * time.Millisecond}
	want := "slow resume t1 attempt 1->2: 11s = noticed 9s + dispatched ? + started 20ms (runner  -> ) faults in the gap: "
	if got := s.String(); got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
}

// TestKeyWaits: only other tasks of the same key count, only their work
// inside the gap, each attempt from its first ledger line to its last.
func TestKeyWaits(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	at := func(s float64) int64 { return t0.Add(time.Duration(s * float64(time.Second))).UnixNano() }
	lines := func(attempt int, secs ...float64) []ledgerLine {
		var out []ledgerLine
		for _, s := range secs {
			out = append(out, ledgerLine{attempt: attempt, at: at(s)})
		}
		return out
	}
	r := &run{keyOf: map[string]string{"t": "k0", "same": "k0", "other": "k1"}}
	r.gaps = []resumeGap{
		{task: "t", from: 1, to: 2, lastWork: time.Unix(0, at(10)), firstWork: time.Unix(0, at(20))},
		{task: "plain", from: 1, to: 2, lastWork: time.Unix(0, at(10)), firstWork: time.Unix(0, at(20))},
	}
	byTask := map[string][]ledgerLine{
		"t": append(lines(1, 5, 10), lines(2, 20, 22)...),
		// Attempt 1 works 8-12 (2 s in the gap), attempt 2 works 15-18
		// (3 s): 5 s of the key's time.
		"same":  append(lines(1, 8, 12), lines(2, 15, 16, 18)...),
		"other": lines(1, 11, 19), // another key: never counts
		"plain": lines(1, 11, 19),
	}
	r.keyWaits(byTask)
	if g := r.gaps[0]; g.key != "k0" || g.keyBusy != 5*time.Second {
		t.Errorf("keyed gap: key %q busy %v; want k0, 5s", g.key, g.keyBusy)
	}
	if g := r.gaps[1]; g.key != "" || g.keyBusy != 0 {
		t.Errorf("unkeyed gap: key %q busy %v; want none", g.key, g.keyBusy)
	}
}
