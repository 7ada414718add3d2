package node

import (
	"context"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
)

// fixedSession is a session frozen at one last contact, with the timeout
// the store granted (etcd rounds a lease up to whole seconds).
type fixedSession struct {
	coord.Session
	lastContact time.Time
	granted     time.Duration
}

func (s fixedSession) LastContact() time.Time                       { return s.lastContact }
func (s fixedSession) Timeout() time.Duration                       { return s.granted }
func (s fixedSession) Close(ctx context.Context) error              { return nil }
func (s fixedSession) State() (coord.SessionState, <-chan struct{}) { return coord.StateRunning, nil }

// TestRunnerDeadlineIsTheQuorums: the runner stops counting attempts
// active at the very instant the quorum fences, for any session timeout
// and fraction, including a timeout the store rounds up (a 2.5 s session
// is a 3 s etcd lease): a runner deadline computed from the granted
// timeout would outlive the fence.
func TestRunnerDeadlineIsTheQuorums(t *testing.T) {
	lc := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		timeout, granted time.Duration
		fraction         float64
	}{
		{10 * time.Second, 10 * time.Second, 0.6},
		{2500 * time.Millisecond, 3 * time.Second, 0.6},
		{7500 * time.Millisecond, 8 * time.Second, 0.5},
	} {
		cfg := DefaultConfig()
		cfg.Name, cfg.SessionTimeout, cfg.DeadlineFraction = "n1", tc.timeout, tc.fraction
		rc, err := cfg.runnerConfig()
		if err != nil {
			t.Fatal(err)
		}
		sess := fixedSession{lastContact: lc, granted: tc.granted}
		want := cfg.quorumConfig("id").DeadlineOf(sess)
		if got := rc.Deadline(sess); !got.Equal(want) {
			t.Errorf("timeout %v (granted %v), fraction %v: runner deadline %v after contact, quorum fences %v after", tc.timeout, tc.granted, tc.fraction, got.Sub(lc), want.Sub(lc))
		}
		if fence := lc.Add(time.Duration(tc.fraction * float64(tc.timeout))); !want.Equal(fence) {
			t.Errorf("quorum deadline %v after contact, want %v", want.Sub(lc), fence.Sub(lc))
		}
	}
}
