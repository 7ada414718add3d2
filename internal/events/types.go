package events

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/taskd/taskd/internal/keys"
)

// Kind is the type of a timeline event: the value of a log line's "event"
// attribute, an Event's Type and the filter of `taskctl events --type`.
// The strings are part of the interface: operators grep journals and logs
// for them, so a constant's value never changes.
type Kind string

// Attr is the log attribute that makes a log line an event of kind k: a
// component records an event by logging a line with it.
func (k Kind) Attr() slog.Attr { return slog.String(attrKey, string(k)) }

// attrKey is the log attribute that carries an event's kind.
const attrKey = "event"

// The event kinds taskd records (docs/operations.md, "Event timeline").
const (
	Audit                 Kind = "audit"
	ClockOffset           Kind = "clock_offset"
	ClockSet              Kind = "clock_set"
	Election              Kind = "election"
	ExecLog               Kind = "exec_log"
	ExecOutput            Kind = "exec_output"
	FenceFinished         Kind = "fence_finished"
	FenceStarted          Kind = "fence_started"
	Health                Kind = "health"
	Join                  Kind = "join"
	MemberForgotten       Kind = "member_forgotten"
	Priority              Kind = "priority"
	Recovered             Kind = "recovered"
	ScheduleBuffered      Kind = "schedule_buffered"
	ScheduleCaughtUp      Kind = "schedule_caught_up"
	ScheduleClockBehind   Kind = "schedule_clock_behind"
	ScheduleClockStep     Kind = "schedule_clock_step"
	ScheduleFired         Kind = "schedule_fired"
	ScheduleMissed        Kind = "schedule_missed"
	ScheduleSkipped       Kind = "schedule_skipped"
	ScheduleTickStood     Kind = "schedule_tick_stood"
	Session               Kind = "session"
	SessionRevoked        Kind = "session_revoked"
	Start                 Kind = "start"
	Starved               Kind = "starved"
	TaskDependencyFailed  Kind = "task_dependency_failed"
	TaskParked            Kind = "task_parked"
	TaskReassigned        Kind = "task_reassigned"
	TokenRotated          Kind = "token_rotated"
	VIPAssign             Kind = "vip_assign"
	VIPDefended           Kind = "vip_defended"
	VIPDuplicate          Kind = "vip_duplicate"
	VIPHeld               Kind = "vip_held"
	VIPLapsed             Kind = "vip_lapsed"
	VIPPreferenceDropped  Kind = "vip_preference_dropped"
	VIPProbeConflict      Kind = "vip_probe-conflict"
	VIPRefused            Kind = "vip_refused"
	VIPRelease            Kind = "vip_release"
	VIPReleased           Kind = "vip_released"
	VIPReleasedOnConflict Kind = "vip_released-on-conflict"
	VIPStaleRemoved       Kind = "vip_stale_removed"
	VIPTake               Kind = "vip_take"
	VIPUnassign           Kind = "vip_unassign"
)

// Types are the event kinds taskd records; TestTypesAreComplete keeps the
// list in step with the constants, the code and the docs.
var Types = []Kind{
	Audit, ClockOffset, ClockSet, Election, ExecLog, ExecOutput, FenceFinished,
	FenceStarted, Health, Join, MemberForgotten, Priority, Recovered,
	ScheduleBuffered, ScheduleCaughtUp, ScheduleClockBehind, ScheduleClockStep,
	ScheduleFired, ScheduleMissed, ScheduleSkipped, ScheduleTickStood, Session,
	SessionRevoked, Start, Starved, TaskDependencyFailed, TaskParked, TaskReassigned, TokenRotated,
	VIPAssign, VIPDefended, VIPDuplicate, VIPHeld, VIPLapsed, VIPPreferenceDropped,
	VIPProbeConflict, VIPRefused, VIPRelease, VIPReleased, VIPReleasedOnConflict,
	VIPStaleRemoved, VIPTake, VIPUnassign,
}

// TypeNames are Types as strings (shell completion, error messages).
func TypeNames() []string {
	out := make([]string, len(Types))
	for i, k := range Types {
		out[i] = string(k)
	}
	return out
}

// ValidType refuses a type filter that matches no event taskd records: a
// typo would otherwise print an empty timeline. "" (every type) is valid.
func ValidType(t string) error {
	if t == "" || slices.Contains(Types, Kind(t)) {
		return nil
	}
	return fmt.Errorf("%w: unknown event type %q; known types: %s", keys.ErrInvalid, t, strings.Join(TypeNames(), ", "))
}
