package ctl

import (
	"fmt"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/taskd/taskd/api/taskdv1"
)

// Times in tables carry their zone (the host's): a bare 14:02 read on
// another host, or across a DST change, is ambiguous.
const (
	tableTime = "2006-01-02 15:04:05 MST"
	clockTime = "15:04:05 MST"
)

// Sizes and rates are shown in one unit family everywhere, IEC (KiB, MiB,
// GiB), as taskd volume copy and the docs do.
func humanBytes(n int64) string { return humanize.IBytes(uint64(max(n, 0))) }

func humanRate(bps float64) string { return humanBytes(int64(bps)) + "/s" }

// percentText is the share done ("42.0%"), or "-" without a total.
func percentText(p *taskdv1.TaskProgress) string {
	if p == nil || p.Total <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(min(p.Done, p.Total))/float64(p.Total))
}

// progressDetail is a task's progress in its own units, without the
// percentage: "2.0 GiB / 4.0 GiB, 180 MiB/s, eta 12s" for a copy (allocated
// bytes, so that the rate and the ETA of a sparse copy agree with it),
// "3s / 10s" for a sleep, "3 / 10" otherwise; "" without a total.
func progressDetail(t *taskdv1.Task) string {
	p := t.GetProgress()
	if p == nil || p.Total <= 0 {
		return ""
	}
	switch t.Type {
	case "copy":
		parts := []string{humanBytes(p.Done) + " / " + humanBytes(p.Total)}
		if t.State == "running" && p.Done < p.Total {
			parts = append(parts, humanRate(p.Rate))
			eta := "eta unknown"
			if p.EtaSeconds > 0 {
				eta = "eta " + human(time.Duration(p.EtaSeconds*float64(time.Second)))
			}
			parts = append(parts, eta)
		}
		return strings.Join(parts, ", ")
	case "sleep":
		ms := func(n int64) string { return human(time.Duration(n) * time.Millisecond) }
		return ms(p.Done) + " / " + ms(p.Total)
	}
	return fmt.Sprintf("%d / %d", p.Done, p.Total)
}

// progressLine is the percentage followed by the detail: "50.0% 2.0 GiB /
// 4.0 GiB, 180 MiB/s, eta 12s"; "-" without a total.
func progressLine(t *taskdv1.Task) string {
	d := progressDetail(t)
	if d == "" {
		return "-"
	}
	return percentText(t.Progress) + " " + d
}
