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
