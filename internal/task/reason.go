package task

import (
	"fmt"
	"slices"
	"time"
)

// WaitReason says why r is not running at now, given the runners, and when
// that may change by itself (zero if only an event can change it). It
// returns "" for a waiting task that can be dispatched now, and for a task
// that is running or finished.
func (r *Record) WaitReason(runners []Runner, now time.Time) (reason string, wake time.Time) {
	if why, wake := r.Ready(now); why != "" || r.State != Waiting {
		return why, wake
	}
	return r.runnerReason(runners)
}

// Ready says why r may not run at now regardless of runners (paused,
// backing off, outside its window), and when that changes by the clock.
// It returns "" for a waiting task that may run now, and for a task that is
// running or finished.
func (r *Record) Ready(now time.Time) (reason string, wake time.Time) {
	switch r.State {
	case Paused:
		return "paused by a user", time.Time{}
	case Waiting:
	default:
		return "", time.Time{}
	}
	if now.Before(r.NotBefore) {
		msg := "backing off"
		if r.Error != nil {
			msg += " after error: " + r.Error.Message
		}
		return fmt.Sprintf("%s; retry %d of %d at %s", msg, r.Retries, r.MaxRetries, r.NotBefore.UTC().Format(time.RFC3339)), r.NotBefore
	}
	if w, err := r.Window.Parse(); err != nil {
		return "its run window cannot be read: " + err.Error(), time.Time{}
	} else if w.IsSet() && !w.Contains(now) {
		open := w.NextOpen(now)
		return fmt.Sprintf("outside its run window %s (%s); opens at %s", r.Window.Spec, r.Window.Zone, open.UTC().Format(time.RFC3339)), open
	}
	return "", time.Time{}
}

// runnerReason says why no runner takes r ("" if one does).
func (r *Record) runnerReason(runners []Runner) (string, time.Time) {
	var matching, cordoned, full int
	for i := range runners {
		rn := &runners[i]
		if !rn.Live || (r.Node != "" && r.Node != rn.Info.Node) || !slices.Contains(rn.Info.Types, r.Type) {
			continue
		}
		matching++
		ok, _ := rn.Accepts(r)
		switch {
		case ok:
			return "", time.Time{}
		case rn.Marks.Cordoned || rn.Marks.Draining:
			cordoned++
		default:
			full++
		}
	}
	switch {
	case matching == 0 && r.Node != "":
		return fmt.Sprintf("no live runner matches constraint node=%s (type %s)", r.Node, r.Type), time.Time{}
	case matching == 0:
		return "no live runner runs type " + r.Type, time.Time{}
	case full == 0:
		return fmt.Sprintf("every matching runner (%d) is cordoned or draining", cordoned), time.Time{}
	}
	return fmt.Sprintf("every matching runner is full (%d full, %d cordoned)", full, cordoned), time.Time{}
}
