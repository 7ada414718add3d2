package schedule

import (
	"strings"
	"testing"
	"time"
)

func mustZone(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

// TestNextDST walks the ticks of cron expressions across both DST
// transitions of a year, from an injected instant: a tick in a skipped
// hour runs once at the end of the gap, a tick in a repeated hour once
// (its first occurrence), and nothing else moves.
func TestNextDST(t *testing.T) {
	cases := []struct {
		name, cron, zone string
		from             string
		want             []string // successive ticks, UTC
	}{
		// America/New_York 2025: 9 March 02:00 EST -> 03:00 EDT,
		// 2 November 02:00 EDT -> 01:00 EST.
		{"ny spring: tick in the gap runs at its end, once", "30 2 * * *", "America/New_York", "2025-03-08T12:00:00Z",
			[]string{"2025-03-09T07:00:00Z", "2025-03-10T06:30:00Z"}},
		{"ny spring: two ticks in the gap are one", "*/30 2 * * *", "America/New_York", "2025-03-08T12:00:00Z",
			[]string{"2025-03-09T07:00:00Z", "2025-03-10T06:00:00Z", "2025-03-10T06:30:00Z"}},
		{"ny spring: gap tick and the tick at the gap's end are one", "0 2,3 * * *", "America/New_York", "2025-03-08T12:00:00Z",
			[]string{"2025-03-09T07:00:00Z", "2025-03-10T06:00:00Z", "2025-03-10T07:00:00Z"}},
		{"ny spring: hourly has 23 ticks that day", "0 * * * *", "America/New_York", "2025-03-09T05:30:00Z",
			[]string{"2025-03-09T06:00:00Z", "2025-03-09T07:00:00Z", "2025-03-09T08:00:00Z"}},
		{"ny spring: tick after the gap is untouched", "30 3 * * *", "America/New_York", "2025-03-08T12:00:00Z",
			[]string{"2025-03-09T07:30:00Z", "2025-03-10T07:30:00Z"}},
		{"ny fall: tick in the repeated hour runs once", "30 1 * * *", "America/New_York", "2025-11-01T12:00:00Z",
			[]string{"2025-11-02T05:30:00Z", "2025-11-03T06:30:00Z"}},
		{"ny fall: from inside the second pass, the first pass counts", "30 1 * * *", "America/New_York", "2025-11-02T06:10:00Z",
			[]string{"2025-11-03T06:30:00Z"}},
		{"ny fall: from inside the first pass", "45 1 * * *", "America/New_York", "2025-11-02T05:10:00Z",
			[]string{"2025-11-02T05:45:00Z", "2025-11-03T06:45:00Z"}},
		{"ny fall: hourly fires once per wall-clock hour", "0 * * * *", "America/New_York", "2025-11-02T03:30:00Z",
			[]string{"2025-11-02T04:00:00Z", "2025-11-02T05:00:00Z", "2025-11-02T07:00:00Z", "2025-11-02T08:00:00Z"}},
		{"ny fall: every 20 minutes in the repeated hour", "*/20 1 * * *", "America/New_York", "2025-11-02T04:30:00Z",
			[]string{"2025-11-02T05:00:00Z", "2025-11-02T05:20:00Z", "2025-11-02T05:40:00Z", "2025-11-03T06:00:00Z"}},
		// Europe/Berlin 2025: 30 March 02:00 CET -> 03:00 CEST, 26 October
		// 03:00 CEST -> 02:00 CET.
		{"berlin spring: 02:30 runs at 03:00 CEST", "30 2 * * *", "Europe/Berlin", "2025-03-29T12:00:00Z",
			[]string{"2025-03-30T01:00:00Z", "2025-03-31T00:30:00Z"}},
		{"berlin fall: 02:30 runs once", "30 2 * * *", "Europe/Berlin", "2025-10-25T12:00:00Z",
			[]string{"2025-10-26T00:30:00Z", "2025-10-27T01:30:00Z"}},
		{"berlin weekly on the DST sunday", "15 2 * * 0", "Europe/Berlin", "2025-03-28T00:00:00Z",
			[]string{"2025-03-30T01:00:00Z", "2025-04-06T00:15:00Z"}},
		// São Paulo 2018: midnight of 4 November did not exist (00:00 ->
		// 01:00): a daily midnight tick runs at 01:00.
		{"sao paulo: missing midnight", "0 0 * * *", "America/Sao_Paulo", "2018-11-03T12:00:00Z",
			[]string{"2018-11-04T03:00:00Z", "2018-11-05T02:00:00Z"}},
		// Lord Howe: half-hour DST (6 April 2025 02:00 -> 01:30).
		{"lord howe: half-hour fall back", "45 1 * * *", "Australia/Lord_Howe", "2025-04-05T00:00:00Z",
			[]string{"2025-04-05T14:45:00Z", "2025-04-06T15:15:00Z"}},
		{"utc daily descriptor", "@daily", "UTC", "2025-01-01T00:00:00Z",
			[]string{"2025-01-02T00:00:00Z", "2025-01-03T00:00:00Z"}},
		{"shanghai 02:00", "0 2 * * *", "Asia/Shanghai", "2025-01-01T00:00:00Z",
			[]string{"2025-01-01T18:00:00Z", "2025-01-02T18:00:00Z"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tt, err := Spec{Cron: c.cron, Zone: c.zone}.Compile(time.Time{})
			if err != nil {
				t.Fatal(err)
			}
			at := utc(c.from)
			for i, w := range c.want {
				at = tt.Next(at)
				if !at.Equal(utc(w)) {
					t.Fatalf("tick %d after %s: got %s (%s), want %s", i+1, c.from, at.UTC().Format(time.RFC3339),
						at.In(mustZone(t, c.zone)).Format("2006-01-02 15:04 MST"), w)
				}
			}
		})
	}
}

// TestNextEveryTickOnce walks every minute of both DST days of New York
// and Berlin with an every-minute and a daily expression: ticks strictly
// increase, and each wall-clock minute appears exactly once (the gap's
// minutes as the gap's end).
func TestNextEveryTickOnce(t *testing.T) {
	for _, zone := range []string{"America/New_York", "Europe/Berlin"} {
		loc := mustZone(t, zone)
		for _, day := range []string{"2025-03-08T12:00:00Z", "2025-10-25T12:00:00Z", "2025-11-01T12:00:00Z"} {
			tt, err := Spec{Cron: "* * * * *", Zone: zone}.Compile(time.Time{})
			if err != nil {
				t.Fatal(err)
			}
			start := utc(day)
			end := start.Add(48 * time.Hour)
			seen := map[string]int{}
			prev := start
			for at := tt.Next(start); at.Before(end); at = tt.Next(at) {
				if !at.After(prev) {
					t.Fatalf("%s: tick %s not after %s", zone, at, prev)
				}
				prev = at
				seen[at.In(loc).Format("2006-01-02 15:04")]++
			}
			for wall, n := range seen {
				if n != 1 {
					t.Errorf("%s: wall time %s ticked %d times", zone, wall, n)
				}
			}
			// Count: the minutes of 48 hours after start (the end
			// excluded); a repeated hour ticks once, so 60 fewer.
			if n := len(seen); n != 48*60-1 && n != 48*60-61 {
				t.Errorf("%s from %s: %d distinct minutes", zone, day, n)
			}
		}
	}
}

func TestInterval(t *testing.T) {
	anchor := utc("2025-03-09T06:59:30Z")
	tt, err := Spec{Every: "30m"}.Compile(anchor)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct{ from, want string }{
		{"2025-03-01T00:00:00Z", "2025-03-09T06:59:30Z"},
		{"2025-03-09T06:59:30Z", "2025-03-09T07:29:30Z"},
		{"2025-03-09T07:29:29Z", "2025-03-09T07:29:30Z"},
		{"2025-11-02T05:59:30Z", "2025-11-02T06:29:30Z"}, // DST does not touch it
	}
	for _, c := range cases {
		if got := tt.Next(utc(c.from)); !got.Equal(utc(c.want)) {
			t.Errorf("Next(%s) = %s, want %s", c.from, got.Format(time.RFC3339), c.want)
		}
	}
}

func TestSpecInvalid(t *testing.T) {
	anchor := utc("2025-01-01T00:00:00Z")
	cases := []struct {
		spec Spec
		want string
	}{
		{Spec{}, "give a cron expression"},
		{Spec{Cron: "* * * * *", Every: "1h"}, "not both"},
		{Spec{Cron: "61 * * * *"}, "cron expression"},
		{Spec{Cron: "* * * *"}, "cron expression"},
		{Spec{Cron: "0 0 30 2 *"}, "matches no date"},
		{Spec{Cron: "CRON_TZ=UTC 0 0 * * *"}, "--zone"},
		{Spec{Cron: "@every 1h"}, "--every"},
		{Spec{Cron: "0 2 * * *", Zone: "Mars/Olympus"}, "time zone"},
		{Spec{Cron: "0 2 * * *", Zone: "Local"}, "IANA"},
		{Spec{Cron: "0 2 * * *", Zone: "../../etc/passwd"}, "time zone"},
		{Spec{Every: "500ms"}, "whole seconds"},
		{Spec{Every: "0s"}, "whole seconds"},
		{Spec{Every: "-1h"}, "whole seconds"},
		{Spec{Every: "1.5s"}, "whole seconds"},
		{Spec{Every: "9000h"}, "whole seconds"},
		{Spec{Every: "soon"}, "interval"},
		{Spec{Every: "1h", Zone: "UTC"}, "absolute time"},
		{Spec{Cron: strings.Repeat("1", 300)}, "too long"},
	}
	for _, c := range cases {
		_, err := c.spec.Compile(anchor)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: got %v, want an error with %q", c.spec, err, c.want)
		}
	}
}
