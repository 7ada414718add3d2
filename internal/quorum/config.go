package quorum

import (
	"errors"
	"fmt"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/keys"
)

// Config configures a member of the quorum.
type Config struct {
	// Name is the member's unique name in the cluster.
	Name string
	// NodeID identifies this node's data directory. A member record with the
	// same name and NodeID is an earlier incarnation of this node and is
	// replaced; with another NodeID it is a different node and joining fails.
	NodeID string
	// Address is the API address other members and clients use.
	Address string
	// Version is the taskd version, shown in member records.
	Version string
	// Priority is the initial election priority, 0-255, higher wins. A
	// priority stored by `taskctl service set-priority` takes precedence.
	Priority int
	// SessionTimeout is the store's session timeout.
	SessionTimeout time.Duration
	// DeadlineFraction places the local deadline at last confirmed contact +
	// DeadlineFraction × SessionTimeout. At the deadline the node fences.
	DeadlineFraction float64
	// FenceBudget is the least time that must remain between the local
	// deadline and the earliest server-side expiry for fencing to finish.
	FenceBudget time.Duration
	// YieldGrace is how long a higher-priority member must be seen, stable,
	// before the leader hands over to it. It prevents flapping.
	YieldGrace time.Duration
	// CampaignStagger delays the campaign of each lower-ranked member, so
	// that the best candidate normally wins without contention while a
	// silent best candidate cannot leave the cluster leaderless.
	CampaignStagger time.Duration
	// SeenInterval is how often a joined node refreshes the last-seen time
	// of its known-member record: a dead member shows as down since at
	// most this long before it died.
	SeenInterval time.Duration
	// Root is the store directory of the cluster.
	Root string
}

// DefaultConfig returns the defaults: a 6 s session (as the original), local
// deadline at 0.6 of it (3.6 s, as the original's local timer).
func DefaultConfig() Config {
	return Config{
		Priority:         100,
		SessionTimeout:   6 * time.Second,
		DeadlineFraction: 0.6,
		FenceBudget:      500 * time.Millisecond,
		YieldGrace:       5 * time.Second,
		CampaignStagger:  2 * time.Second,
		SeenInterval:     10 * time.Second,
		Root:             "/taskd",
	}
}

// ValidatePriority checks a priority value.
func ValidatePriority(p int) error {
	if p < 0 || p > 255 {
		return fmt.Errorf("%w: priority %d is out of range: use 0-255 (higher wins)", ErrInvalid, p)
	}
	return nil
}

// DeadlineOf is sess's local deadline: its last confirmed contact plus
// LocalDeadline. The quorum fences at it, and the runner stops counting its
// attempts active at it; both use this one function.
func (c Config) DeadlineOf(sess coord.Session) time.Time {
	return sess.LastContact().Add(c.LocalDeadline())
}

// LocalDeadline is the time after last confirmed contact at which the node
// fences.
func (c Config) LocalDeadline() time.Duration {
	return time.Duration(c.DeadlineFraction * float64(c.SessionTimeout))
}

// Validate checks ranges and the timing relations fencing depends on:
// heartbeat interval < local deadline, and local deadline + fence budget <
// session timeout.
func (c Config) Validate() error {
	var errs []error
	if err := keys.ValidName(c.Name); err != nil {
		errs = append(errs, err)
	}
	if c.NodeID == "" {
		errs = append(errs, errors.New("node id is empty"))
	}
	if err := ValidatePriority(c.Priority); err != nil {
		errs = append(errs, err)
	}
	if c.SessionTimeout < 2*time.Second || c.SessionTimeout > 120*time.Second {
		errs = append(errs, fmt.Errorf("session timeout %v: use 2s-120s", c.SessionTimeout))
	}
	if c.DeadlineFraction <= 0 || c.DeadlineFraction >= 1 {
		errs = append(errs, fmt.Errorf("deadline fraction %v: must be in (0, 1)", c.DeadlineFraction))
	}
	hb := coord.HeartbeatInterval(c.SessionTimeout)
	if c.LocalDeadline() <= 2*hb {
		errs = append(errs, fmt.Errorf("local deadline %v must exceed two heartbeat intervals (%v): raise the deadline fraction", c.LocalDeadline(), 2*hb))
	}
	if c.LocalDeadline()+c.FenceBudget >= c.SessionTimeout {
		errs = append(errs, fmt.Errorf("local deadline %v + fence budget %v must stay below the session timeout %v: lower the deadline fraction",
			c.LocalDeadline(), c.FenceBudget, c.SessionTimeout))
	}
	if c.YieldGrace < 0 || c.CampaignStagger <= 0 {
		errs = append(errs, fmt.Errorf("yield grace %v must be >= 0 and campaign stagger %v > 0", c.YieldGrace, c.CampaignStagger))
	}
	if c.SeenInterval < time.Second || c.SeenInterval > 10*time.Minute {
		errs = append(errs, fmt.Errorf("seen interval %v: use 1s-10m", c.SeenInterval))
	}
	if err := keys.ValidRoot(c.Root); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
