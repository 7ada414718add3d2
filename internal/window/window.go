// Package window is the daily run window of a task: "HH:MM-HH:MM" in a time
// zone, start inclusive, end exclusive. An end at or before the start crosses
// midnight ("22:00-06:00"). The window is wall-clock time in its zone, so it
// follows daylight saving time:
//
//   - on the day clocks go forward, wall-clock times in the gap do not occur;
//     a window inside the gap does not open that day, and one that starts in
//     the gap opens when the gap ends;
//   - on the day clocks go back, the repeated hour occurs twice; a window
//     covering it is open both times (it lasts an hour longer that day).
//
// Functions take the time as an argument, so that callers decide the clock
// and tests can inject one.
package window

import (
	"errors"
	"fmt"
	"time"
)

// ErrInvalid marks a window that cannot be parsed or is empty.
var ErrInvalid = errors.New("invalid run window")

// Window is a daily run window. The zero value is "always open".
type Window struct {
	start, end int // minutes after midnight, wall clock
	loc        *time.Location
	set        bool
}

// Parse reads "HH:MM-HH:MM" (24-hour clock) for the zone loc (nil = UTC).
func Parse(s string, loc *time.Location) (Window, error) {
	var sh, sm, eh, em int
	var rest string
	n, _ := fmt.Sscanf(s, "%2d:%2d-%2d:%2d%s", &sh, &sm, &eh, &em, &rest)
	if n != 4 || len(s) != len("HH:MM-HH:MM") {
		return Window{}, fmt.Errorf("%w: %q: want HH:MM-HH:MM, e.g. 22:00-06:00", ErrInvalid, s)
	}
	for _, v := range [][2]int{{sh, sm}, {eh, em}} {
		if v[0] < 0 || v[0] > 23 || v[1] < 0 || v[1] > 59 {
			return Window{}, fmt.Errorf("%w: %q: hours are 00-23 and minutes 00-59", ErrInvalid, s)
		}
	}
	w := Window{start: sh*60 + sm, end: eh*60 + em, loc: loc, set: true}
	if w.start == w.end {
		return Window{}, fmt.Errorf("%w: %q is empty (start equals end); clear the window to run at any time", ErrInvalid, s)
	}
	if w.loc == nil {
		w.loc = time.UTC
	}
	return w, nil
}

// IsSet reports whether the window restricts anything.
func (w Window) IsSet() bool { return w.set }

// String gives the window back as HH:MM-HH:MM ("" when unset).
func (w Window) String() string {
	if !w.set {
		return ""
	}
	return fmt.Sprintf("%02d:%02d-%02d:%02d", w.start/60, w.start%60, w.end/60, w.end%60)
}

// Contains reports whether the window is open at t.
func (w Window) Contains(t time.Time) bool {
	if !w.set {
		return true
	}
	lt := t.In(w.loc)
	m := lt.Hour()*60 + lt.Minute()
	if w.start < w.end {
		return m >= w.start && m < w.end
	}
	return m >= w.start || m < w.end
}

// horizon bounds the search for the next change: a window opens and
// closes at least once a day, DST days included.
const horizon = 50 * time.Hour

// NextOpen returns t if the window is open at t, else the first instant
// after t at which it opens.
func (w Window) NextOpen(t time.Time) time.Time { return w.next(t, true) }

// NextClose returns t if the window is closed at t, else the first instant
// after t at which it closes.
func (w Window) NextClose(t time.Time) time.Time {
	if !w.set {
		return time.Time{} // never closes
	}
	return w.next(t, false)
}

// next scans minute boundaries: windows are in whole minutes and zone
// transitions fall on minute boundaries, so the first boundary with the
// wanted state is exact. At most 3000 steps; callers use it to set timers.
func (w Window) next(t time.Time, open bool) time.Time {
	if w.Contains(t) == open {
		return t
	}
	c := t.Truncate(time.Minute)
	for end := t.Add(horizon); c.Before(end); {
		c = c.Add(time.Minute)
		if w.Contains(c) == open {
			return c
		}
	}
	// Unreachable for a valid window; answer "later" rather than "now".
	return t.Add(horizon)
}
