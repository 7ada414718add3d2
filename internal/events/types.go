package events

import (
	"fmt"
	"slices"
	"strings"

	"github.com/taskd/taskd/internal/keys"
)

// Types are the event types taskd records (docs/operations.md, "Event
// timeline"); TestTypesAreComplete keeps the list in step with the code.
var Types = []string{
	"audit", "clock_offset", "clock_set", "election", "exec_log", "exec_output", "fence_finished",
	"fence_started", "health", "join", "member_forgotten", "priority", "recovered",
	"schedule_buffered", "schedule_caught_up", "schedule_clock_behind", "schedule_clock_step",
	"schedule_fired", "schedule_missed", "schedule_skipped", "schedule_tick_stood", "session",
	"start", "starved", "task_dependency_failed", "task_parked", "task_reassigned", "token_rotated",
	"vip_assign", "vip_defended", "vip_duplicate", "vip_held", "vip_lapsed", "vip_preference_dropped",
	"vip_probe-conflict", "vip_refused", "vip_release", "vip_released", "vip_released-on-conflict",
	"vip_stale_removed", "vip_take", "vip_unassign",
}

// ValidType refuses a type filter that matches no event taskd records: a
// typo would otherwise print an empty timeline. "" (every type) is valid.
func ValidType(t string) error {
	if t == "" || slices.Contains(Types, t) {
		return nil
	}
	return fmt.Errorf("%w: unknown event type %q; known types: %s", keys.ErrInvalid, t, strings.Join(Types, ", "))
}
