package schedule

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"github.com/taskd/taskd/internal/quorum"
)

// ErrInvalid: bad input; nothing was changed. It is quorum.ErrInvalid (as
// task.ErrInvalid is), so the API maps it to InvalidArgument in one place.
var ErrInvalid = quorum.ErrInvalid

// MaxName bounds a schedule name, in bytes.
const MaxName = 63

// ValidName is the one check of a schedule name, the only value from a
// request that becomes a store key segment in this package (trigger ids
// and record ids are UUIDs this package checks with validUID). A name is
// 1-63 bytes of ASCII letters, digits, '.', '_' and '-', starting with a
// letter or a digit, with no "..": no traversal, separator, control
// character or empty segment can get through.
func ValidName(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: schedule name is empty: use 1-%d letters, digits, '.', '_' or '-'", ErrInvalid, MaxName)
	case len(s) > MaxName:
		return fmt.Errorf("%w: schedule name %s is %d bytes long: use at most %d", ErrInvalid, quote(s), len(s), MaxName)
	case strings.Contains(s, ".."):
		return fmt.Errorf("%w: schedule name %s contains \"..\"", ErrInvalid, quote(s))
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || (c != '.' && c != '_' && c != '-')) {
			return fmt.Errorf("%w: schedule name %s: use letters, digits, '.', '_' or '-', starting with a letter or digit", ErrInvalid, quote(s))
		}
	}
	return nil
}

// validUID checks a record id (a schedule's uid, a trigger id): a UUID in
// its canonical lower-case form.
func validUID(kind, s string) error {
	u, err := uuid.Parse(s)
	if err != nil || u.String() != s {
		return fmt.Errorf("%w: %s %s is not a UUID", ErrInvalid, kind, quote(s))
	}
	return nil
}

// quote renders a value for a message: quoted with Go escapes, cut at 64
// bytes, so that control characters cannot forge a log line.
func quote(s string) string {
	if len(s) > 64 {
		return strconv.Quote(s[:64]) + "..."
	}
	return strconv.Quote(s)
}

// Layout names the store keys of schedules under a root. Every key is
// built here from a validated segment (ValidName, validUID), so no request
// can name a key outside its directory. When internal/keys lands, these
// builders move there unchanged.
//
//	schedules/defs/NAME           the schedule as an operator set it
//	schedules/state/UID           what the leader fired (leader only, fenced)
//	schedules/triggers/NAME@ID    a pending `schedule trigger` request
type Layout struct{ Root string }

// DefsDir holds the schedule definitions.
func (l Layout) DefsDir() string { return l.Root + "/schedules/defs" }

// StateDir holds the leader's per-schedule state.
func (l Layout) StateDir() string { return l.Root + "/schedules/state" }

// TriggersDir holds pending trigger requests.
func (l Layout) TriggersDir() string { return l.Root + "/schedules/triggers" }

// DefKey is the definition key of schedule name.
func (l Layout) DefKey(name string) (string, error) {
	if err := ValidName(name); err != nil {
		return "", err
	}
	return l.DefsDir() + "/" + name, nil
}

// StateKey is the state key of the schedule with uid.
func (l Layout) StateKey(uid string) (string, error) {
	if err := validUID("schedule uid", uid); err != nil {
		return "", err
	}
	return l.StateDir() + "/" + uid, nil
}

// TriggerKey is the key of trigger request id of schedule name.
func (l Layout) TriggerKey(name, id string) (string, error) {
	if err := ValidName(name); err != nil {
		return "", err
	}
	if err := validUID("trigger id", id); err != nil {
		return "", err
	}
	return l.TriggersDir() + "/" + name + "@" + id, nil
}

// child returns the last segment of key if key is DIR/SEGMENT.
func child(dir, key string) (string, error) {
	seg, ok := strings.CutPrefix(key, dir+"/")
	if !ok || seg == "" || strings.Contains(seg, "/") {
		return "", fmt.Errorf("%w: key %s is not one segment below %s", ErrInvalid, quote(key), dir)
	}
	return seg, nil
}

// parseTriggerKey reads NAME and ID back from a trigger key.
func (l Layout) parseTriggerKey(key string) (name, id string, err error) {
	seg, err := child(l.TriggersDir(), key)
	if err != nil {
		return "", "", err
	}
	name, id, ok := strings.Cut(seg, "@")
	if !ok {
		return "", "", fmt.Errorf("%w: trigger key %s has no @", ErrInvalid, quote(key))
	}
	return name, id, errors.Join(ValidName(name), validUID("trigger id", id))
}
