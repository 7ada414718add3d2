package window

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
	_ "time/tzdata" // the zones below, whatever the machine has installed
)

func mustLoc(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in  string
		ok  bool
		out string
	}{
		{"22:00-06:00", true, "22:00-06:00"},
		{"00:00-23:59", true, "00:00-23:59"},
		{"09:30-17:00", true, "09:30-17:00"},
		{"25:00-01:00", false, ""},
		{"10:60-11:00", false, ""},
		{"10:00-10:00", false, ""},
		{"1000-1100", false, ""},
		{"10:00-11:00x", false, ""},
		{"9:00-11:00", false, ""},
		{"", false, ""},
		{"-1:00-02:00", false, ""},
	} {
		w, err := Parse(tc.in, nil)
		if tc.ok != (err == nil) {
			t.Errorf("Parse(%q): err = %v, want ok=%v", tc.in, err, tc.ok)
			continue
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("Parse(%q): err %v does not wrap ErrInvalid", tc.in, err)
		}
		if tc.ok && w.String() != tc.out {
			t.Errorf("Parse(%q).String() = %q", tc.in, w.String())
		}
	}
}

func TestContainsAndNext(t *testing.T) {
	utc := time.UTC
	at := func(s string) time.Time {
		v, err := time.ParseInLocation("2006-01-02 15:04:05", s, utc)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	day, _ := Parse("09:00-17:00", utc)
	night, _ := Parse("22:00-06:00", utc)
	for _, tc := range []struct {
		name      string
		w         Window
		now       string
		open      bool
		nextOpen  string
		nextClose string
	}{
		{"before a day window", day, "2026-03-02 08:59:30", false, "2026-03-02 09:00:00", "2026-03-02 08:59:30"},
		{"start is inclusive", day, "2026-03-02 09:00:00", true, "2026-03-02 09:00:00", "2026-03-02 17:00:00"},
		{"end is exclusive", day, "2026-03-02 17:00:00", false, "2026-03-03 09:00:00", "2026-03-02 17:00:00"},
		{"night window before midnight", night, "2026-03-02 23:10:00", true, "2026-03-02 23:10:00", "2026-03-03 06:00:00"},
		{"night window after midnight", night, "2026-03-03 05:59:59", true, "2026-03-03 05:59:59", "2026-03-03 06:00:00"},
		{"night window closed by day", night, "2026-03-03 12:00:00", false, "2026-03-03 22:00:00", "2026-03-03 12:00:00"},
		{"across the year end", night, "2026-12-31 21:00:00", false, "2026-12-31 22:00:00", "2026-12-31 21:00:00"},
	} {
		now := at(tc.now)
		if got := tc.w.Contains(now); got != tc.open {
			t.Errorf("%s: Contains = %v", tc.name, got)
		}
		if got := tc.w.NextOpen(now); !got.Equal(at(tc.nextOpen)) {
			t.Errorf("%s: NextOpen = %v, want %s", tc.name, got, tc.nextOpen)
		}
		if got := tc.w.NextClose(now); !got.Equal(at(tc.nextClose)) {
			t.Errorf("%s: NextClose = %v, want %s", tc.name, got, tc.nextClose)
		}
	}
}

// America/New_York: clocks go forward at 2026-03-08 02:00 EST to 03:00 EDT,
// and back at 2026-11-01 02:00 EDT to 01:00 EST.
func TestDaylightSaving(t *testing.T) {
	ny := mustLoc(t, "America/New_York")
	inNY := func(y int, m time.Month, d, h, min int) time.Time { return time.Date(y, m, d, h, min, 0, 0, ny) }

	// A window inside the spring gap does not open that day.
	gap, _ := Parse("02:15-02:45", ny)
	from := inNY(2026, 3, 8, 0, 0)
	if got, want := gap.NextOpen(from), inNY(2026, 3, 9, 2, 15); !got.Equal(want) {
		t.Errorf("window in the DST gap: NextOpen = %v, want the next day %v", got, want)
	}
	// A window starting in the gap opens when the gap ends (03:00 EDT).
	intoGap, _ := Parse("02:30-04:00", ny)
	gapEnd := time.Date(2026, 3, 8, 7, 0, 0, 0, time.UTC) // 03:00 EDT
	if got := intoGap.NextOpen(from); !got.Equal(gapEnd) {
		t.Errorf("window starting in the DST gap: NextOpen = %v, want %v", got, gapEnd)
	}
	// The spring night is an hour shorter: 22:00 EST to 06:00 EDT is 7 h.
	night, _ := Parse("22:00-06:00", ny)
	open := night.NextOpen(inNY(2026, 3, 7, 12, 0))
	if d := night.NextClose(open).Sub(open); d != 7*time.Hour {
		t.Errorf("night window over spring-forward lasts %v, want 7h", d)
	}
	// The autumn night is an hour longer, and the repeated 01:xx hour is
	// inside the window both times.
	open = night.NextOpen(inNY(2026, 10, 31, 12, 0))
	if d := night.NextClose(open).Sub(open); d != 9*time.Hour {
		t.Errorf("night window over fall-back lasts %v, want 9h", d)
	}
	first := time.Date(2026, 11, 1, 5, 30, 0, 0, time.UTC)  // 01:30 EDT
	second := time.Date(2026, 11, 1, 6, 30, 0, 0, time.UTC) // 01:30 EST
	oneAM, _ := Parse("01:00-02:00", ny)
	if !oneAM.Contains(first) || !oneAM.Contains(second) {
		t.Error("the repeated hour is not inside 01:00-02:00 both times")
	}
	if got, want := oneAM.NextClose(first), time.Date(2026, 11, 1, 7, 0, 0, 0, time.UTC); !got.Equal(want) {
		t.Errorf("01:00-02:00 on fall-back closes at %v, want %v (02:00 EST)", got, want)
	}
}

func TestUnsetIsAlwaysOpen(t *testing.T) {
	var w Window
	now := time.Date(2026, 1, 1, 3, 0, 0, 0, time.UTC)
	if !w.Contains(now) || !w.NextOpen(now).Equal(now) || !w.NextClose(now).IsZero() || w.IsSet() {
		t.Fatal("the zero window must be open at all times and never close")
	}
}

// Over a year of random instants and windows in a DST zone: NextOpen is
// open, not before now, and nothing between now and it is open; NextClose
// likewise.
func TestNextProperties(t *testing.T) {
	ny := mustLoc(t, "America/New_York")
	rng := rand.New(rand.NewPCG(1, 2))
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for range 2000 {
		s, e := rng.IntN(24*60), rng.IntN(24*60)
		if s == e {
			continue
		}
		w, err := Parse(fmt.Sprintf("%02d:%02d-%02d:%02d", s/60, s%60, e/60, e%60), ny)
		if err != nil {
			t.Fatal(err)
		}
		now := base.Add(time.Duration(rng.Int64N(int64(365 * 24 * time.Hour))))
		o := w.NextOpen(now)
		if o.Before(now) || !w.Contains(o) {
			t.Fatalf("%v at %v: NextOpen %v is before now or closed", w, now, o)
		}
		for m := now.Truncate(time.Minute).Add(time.Minute); m.Before(o); m = m.Add(time.Minute) {
			if w.Contains(m) {
				t.Fatalf("%v at %v: open at %v, before NextOpen %v", w, now, m, o)
			}
		}
		c := w.NextClose(o)
		if !c.After(o) || w.Contains(c) {
			t.Fatalf("%v: NextClose(%v) = %v is not a later closed instant", w, o, c)
		}
	}
}
