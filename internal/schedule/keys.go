package schedule

import (
	"github.com/taskd/taskd/internal/keys"
)

// ErrInvalid: bad input; nothing was changed. It is keys.ErrInvalid (as
// task.ErrInvalid is), so the API maps it to InvalidArgument in one place.
var ErrInvalid = keys.ErrInvalid

// MaxName bounds a schedule name, in bytes.
const MaxName = keys.MaxName

// ValidName is the one check of a schedule name, the only value from a
// request that becomes a store key segment in this package (trigger ids
// and record ids are UUIDs): keys.ValidSchedule.
func ValidName(s string) error { return keys.ValidSchedule(s) }

// validUID checks a record id (a schedule's uid, a trigger id): a UUID in
// its canonical lower-case form.
func validUID(_, s string) error { return keys.ValidUID(s) }

// quote renders a value for a message (keys.Quote).
func quote(s string) string { return keys.Quote(s) }

// Layout names the store keys of schedules under a root; every key comes
// from the validated builders of internal/keys.
//
//	schedules/defs/NAME           the schedule as an operator set it
//	schedules/state/UID           what the leader fired (leader only, fenced)
//	schedules/triggers/NAME@ID    a pending `schedule trigger` request
type Layout struct{ keys.Schedules }

// newLayout returns the layout under root.
func newLayout(root keys.Root) Layout { return Layout{root.Schedules()} }

// parseTriggerKey reads NAME and ID back from a trigger key.
func (l Layout) parseTriggerKey(key string) (name, id string, err error) {
	return l.ParseTrigger(key)
}
