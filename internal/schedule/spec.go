package schedule

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/robfig/cron/v3"
)

// Limits of a schedule's timing.
const (
	// MinEvery is the shortest interval. Intervals under a minute exist
	// for tests and benchmarks; every tick is a task and a store write.
	MinEvery = time.Second
	// MaxEvery is the longest interval.
	MaxEvery = 366 * 24 * time.Hour
	// cronHorizon: a cron expression that does not fire within this long
	// of a time (robfig/cron's own limit is five years) never fires.
	cronHorizon = 5 * 366 * 24 * time.Hour
)

// cronParser reads the standard five fields (minute hour day-of-month
// month day-of-week) and the descriptors @yearly, @monthly, @weekly,
// @daily and @hourly.
var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// Timetable computes a schedule's ticks. It is immutable and safe for
// concurrent use.
//
// A cron timetable works on the wall clock of its zone. robfig/cron parses
// the expression; the walk over matching wall-clock times is robfig's own
// Next, run on a clock without daylight saving time (the wall time read as
// UTC), and this package maps each wall time to an instant itself:
//
//   - a wall time that occurs once is that instant;
//   - a wall time that does not occur (clocks go forward over it) is the
//     instant the gap ends, the next valid time; several ticks in one gap
//     become one tick there, and a tick that also falls there is the same
//     tick;
//   - a wall time that occurs twice (clocks go back) is its first
//     occurrence only: a tick in the repeated hour runs once.
//
// robfig's own Next in the zone would skip a tick in a gap and run a tick
// in a repeated hour twice, the failures of other schedulers around DST.
//
// An interval timetable ticks at Anchor + k·Every in absolute time; daylight
// saving time does not affect it.
type Timetable struct {
	cron   *cron.SpecSchedule // Location is UTC: it walks the wall clock
	loc    *time.Location
	every  time.Duration
	anchor time.Time
}

// Spec says when a schedule ticks: a cron expression in an IANA zone, or
// an interval. It is part of the stored record.
type Spec struct {
	Cron string `json:"cron,omitempty"`
	Zone string `json:"zone,omitempty"`
	// Every is a Go duration ("6h", "90m").
	Every string `json:"every,omitempty"`
}

// Compile validates the spec; anchor is the start of an interval
// timetable (the schedule's creation, whole seconds).
func (s Spec) Compile(anchor time.Time) (*Timetable, error) {
	switch {
	case s.Cron != "" && s.Every != "":
		return nil, fmt.Errorf("%w: give a cron expression or an interval, not both", ErrInvalid)
	case s.Every != "":
		if s.Zone != "" {
			return nil, fmt.Errorf("%w: a zone applies to a cron expression, not to an interval (it runs in absolute time)", ErrInvalid)
		}
		d, err := time.ParseDuration(s.Every)
		if err != nil {
			return nil, fmt.Errorf("%w: interval %s: %w", ErrInvalid, quote(s.Every), err)
		}
		if d < MinEvery || d > MaxEvery || d%time.Second != 0 {
			return nil, fmt.Errorf("%w: interval %v: use whole seconds from %v to %v", ErrInvalid, d, MinEvery, MaxEvery)
		}
		if anchor.IsZero() {
			return nil, fmt.Errorf("%w: an interval schedule needs its creation time", ErrInvalid)
		}
		return &Timetable{every: d, anchor: anchor.Truncate(time.Second).UTC()}, nil
	case s.Cron != "":
		return compileCron(s.Cron, s.Zone)
	}
	return nil, fmt.Errorf("%w: give a cron expression (--cron) or an interval (--every)", ErrInvalid)
}

func compileCron(expr, zone string) (*Timetable, error) {
	if len(expr) > 200 {
		return nil, fmt.Errorf("%w: cron expression of %d bytes is too long", ErrInvalid, len(expr))
	}
	trimmed := strings.TrimSpace(expr)
	if strings.HasPrefix(trimmed, "TZ=") || strings.HasPrefix(trimmed, "CRON_TZ=") {
		return nil, fmt.Errorf("%w: cron expression %s: give the zone with --zone, not inside the expression", ErrInvalid, quote(expr))
	}
	if strings.HasPrefix(trimmed, "@every") {
		return nil, fmt.Errorf("%w: cron expression %s: use --every for an interval", ErrInvalid, quote(expr))
	}
	if zone == "" {
		zone = "UTC"
	}
	loc, err := loadZone(zone)
	if err != nil {
		return nil, err
	}
	parsed, err := cronParser.Parse(trimmed)
	if err != nil {
		return nil, fmt.Errorf("%w: cron expression %s: %w (five fields: minute hour day-of-month month day-of-week, or @daily, @hourly, @weekly, @monthly, @yearly)", ErrInvalid, quote(expr), err)
	}
	spec, ok := parsed.(*cron.SpecSchedule)
	if !ok {
		return nil, fmt.Errorf("%w: cron expression %s is not a calendar expression", ErrInvalid, quote(expr))
	}
	walk := *spec
	walk.Location = time.UTC
	tt := &Timetable{cron: &walk, loc: loc}
	// An expression that matches no date ("0 0 30 2 *") never fires.
	if probe := walk.Next(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)); probe.IsZero() {
		return nil, fmt.Errorf("%w: cron expression %s matches no date", ErrInvalid, quote(expr))
	}
	return tt, nil
}

// loadZone loads an IANA zone; "Local" is refused, since every node may
// have its own.
func loadZone(zone string) (*time.Location, error) {
	if zone == "Local" || len(zone) > 64 {
		return nil, fmt.Errorf("%w: time zone %s: use an IANA name such as Europe/Berlin or UTC", ErrInvalid, quote(zone))
	}
	if loc, ok := zones.Load(zone); ok {
		return loc.(*time.Location), nil
	}
	loc, err := time.LoadLocation(zone)
	if err != nil {
		return nil, fmt.Errorf("%w: time zone %s: %w", ErrInvalid, quote(zone), err)
	}
	zones.Store(zone, loc)
	return loc, nil
}

// zones caches the zones loaded, by name. time.LoadLocation reads and
// parses the zone file on every call (some 50 µs); a new leader compiles
// every schedule at once, and 10 000 of them spent seconds there before
// the first tick fired. Only zones that loaded are kept, so the cache
// holds at most the zone database's names. A zone file updated on disk
// is seen after a restart.
var zones sync.Map // string -> *time.Location

// Next returns the first tick strictly after t (zero if none within five
// years).
func (tt *Timetable) Next(t time.Time) time.Time {
	if tt.cron == nil {
		if t.Before(tt.anchor) {
			return tt.anchor
		}
		k := t.Sub(tt.anchor)/tt.every + 1
		return tt.anchor.Add(k * tt.every)
	}
	// The lowest wall time any instant after t shows: the wall time of t,
	// or lower where the clocks go back soon after t. Every tick after t
	// is a wall time at or after it.
	from := naive(t.In(tt.loc))
	for _, b := range tt.zoneStarts(t, t.Add(26*time.Hour)) {
		from = minTime(from, naive(b.In(tt.loc)))
	}
	w := tt.cron.Next(from.Add(-time.Second).Truncate(time.Second))
	limit := from.Add(cronHorizon)
	for !w.IsZero() && w.Before(limit) {
		if at := tt.instant(w); at.After(t) {
			return at
		}
		w = tt.cron.Next(w)
	}
	return time.Time{}
}

// IsInterval reports whether the timetable is an interval.
func (tt *Timetable) IsInterval() bool { return tt.cron == nil }

// Every is the interval (zero for cron).
func (tt *Timetable) Every() time.Duration { return tt.every }

// naive reads the wall clock of t as a UTC time: a clock with no DST.
func naive(t time.Time) time.Time {
	y, mo, d := t.Date()
	h, mi, s := t.Clock()
	return time.Date(y, mo, d, h, mi, s, t.Nanosecond(), time.UTC)
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// zoneStarts lists the instants in (from, to] at which a new zone offset
// starts in tt.loc.
func (tt *Timetable) zoneStarts(from, to time.Time) []time.Time {
	var out []time.Time
	for t := from; ; {
		_, end := t.In(tt.loc).ZoneBounds()
		if end.IsZero() || end.After(to) || !end.After(t) {
			return out
		}
		out = append(out, end)
		t = end
	}
}

// instant maps wall time w (read as UTC) in tt.loc to the instant of its
// tick: its only or first occurrence, or the end of the gap it falls in.
func (tt *Timetable) instant(w time.Time) time.Time {
	// Offsets are within ±26 h, so every instant showing w lies in
	// [w-26h, w+26h]; walk the zones that cover that span.
	lo, hi := w.Add(-26*time.Hour), w.Add(26*time.Hour)
	var best time.Time
	var gapEnd time.Time
	t := lo
	for {
		lt := t.In(tt.loc)
		_, off := lt.Zone()
		start, end := lt.ZoneBounds()
		cand := w.Add(-time.Duration(off) * time.Second)
		if (start.IsZero() || !cand.Before(start)) && (end.IsZero() || cand.Before(end)) {
			if best.IsZero() || cand.Before(best) {
				best = cand
			}
		}
		// A zone whose first wall time is already after w, entered from
		// one whose wall times were all before it: w is in the gap.
		if gapEnd.IsZero() && !start.IsZero() && start.After(lo) && naive(lt.Add(0)).After(w) && naive(start.Add(-time.Nanosecond).In(tt.loc)).Before(w) {
			gapEnd = start
		}
		if end.IsZero() || end.After(hi) {
			break
		}
		t = end
	}
	if !best.IsZero() {
		return best
	}
	return gapEnd
}
