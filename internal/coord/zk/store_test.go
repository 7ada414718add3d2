package zk_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/coord/coordtest"
	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/testenv"
)

func open(t *testing.T, ens *harness.Ensemble, chroot string) coord.Store {
	t.Helper()
	return testenv.OpenZK(t, ens, chroot)
}

func TestContract(t *testing.T) {
	ens := testenv.StartEnsemble(t, 1)
	coordtest.Run(t, func(t *testing.T) coord.Store { return open(t, ens, "/taskd-test") })
}

// TestServerLossKeepsSession kills the server a session is connected to, in
// a three-server ensemble: the client must move to another server without
// the session expiring, and a watch must deliver a change made meanwhile.
func TestServerLossKeepsSession(t *testing.T) {
	ens := testenv.StartEnsemble(t, 3)
	s := open(t, ens, "")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sess, err := s.NewSession(ctx, 6*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close(ctx)
	if _, err := s.Create(ctx, "/loss/eph", nil, coord.WithSession(sess)); err != nil {
		t.Fatal(err)
	}
	w := s.Watch(ctx, "/loss")
	defer w.Close()
	events := w.Events()
	for ev := range events {
		if ev.Type == coord.EventSynced {
			break
		}
	}
	server := sess.(interface{ Server() string }).Server()
	var victim *harness.ZKServer
	for _, z := range ens.Servers {
		if z.Addr() == server {
			victim = z
		}
	}
	if victim == nil {
		t.Fatalf("session server %q not in ensemble %v", server, ens.Addrs())
	}
	victim.Kill()
	// A write made through the store while the session's server is gone.
	// If the store's connection was on the killed server too, a request in
	// flight fails with ErrUnavailable and an unknown outcome (see
	// coord.ErrUnavailable); the caller retries, and ErrExists on a retry
	// means the first attempt landed, which its content must show.
	for attempt := 1; ; attempt++ {
		_, err := s.Create(ctx, "/loss/during", []byte("x"))
		if err == nil {
			break
		}
		if errors.Is(err, coord.ErrExists) && attempt > 1 {
			kv, gerr := s.Get(ctx, "/loss/during")
			if gerr != nil || string(kv.Value) != "x" {
				t.Fatalf("create retried after an unknown outcome: exists, but get = %v, %v", kv, gerr)
			}
			break
		}
		if !errors.Is(err, coord.ErrUnavailable) || attempt == 5 {
			t.Fatalf("create during failover (attempt %d): %v", attempt, err)
		}
		t.Logf("create during failover, attempt %d: %v; retrying", attempt, err)
	}
	got := false
	deadline := time.After(10 * time.Second)
	for !got {
		select {
		case ev := <-events:
			got = ev.Type == coord.EventPut && ev.KV.Key == "/loss/during"
		case <-deadline:
			t.Fatal("watch missed the change made during failover")
		}
	}
	// The session must be confirmed on another server, never expired.
	err = testenv.WaitFor(ctx, 50*time.Millisecond, func() bool {
		st, _ := sess.State()
		return st == coord.StateRunning && sess.(interface{ Server() string }).Server() != server
	})
	if err != nil {
		st, _ := sess.State()
		t.Fatalf("session did not recover on another server: state %v: %v", st, err)
	}
	select {
	case <-sess.Done():
		t.Fatal("session ended after losing one server of three")
	default:
	}
	if kv, err := s.Get(ctx, "/loss/eph"); err != nil || !kv.Ephemeral {
		t.Fatalf("ephemeral key lost with the server: %v", err)
	}
}

// TestCutOffFollowerConfirmsNoContact: a follower that has lost its leader
// keeps answering reads until it notices (syncLimit ticks later), but the
// leader, which expires sessions, hears nothing from it. A session on such
// a follower must not count its answers as contact, or the local deadline
// would be measured from a time the leader never saw and the node could
// fence after its session expired. The heartbeat therefore goes through to
// the leader (sync).
func TestCutOffFollowerConfirmsNoContact(t *testing.T) {
	ens := testenv.StartEnsemble(t, 3)
	var follower *harness.ZKServer
	var others []*harness.ZKServer
	for _, z := range ens.Servers {
		if follower == nil && z.Mode() == "follower" {
			follower = z
		} else {
			others = append(others, z)
		}
	}
	if follower == nil {
		t.Fatal("no follower in the ensemble")
	}
	s := testenv.OpenZKWith(t, testenv.ZKConfig(t, ens, []string{follower.Addr()}, ""))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sess, err := s.NewSession(ctx, 6*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close(ctx)
	// Cut the follower off: the other two servers, the leader among them,
	// hang. The follower notices after syncLimit × tickTime (2.5 s here).
	frozen := time.Now()
	for _, z := range others {
		z.Freeze()
	}
	defer func() {
		for _, z := range others {
			z.Thaw()
		}
	}()
	// Watch the session for as long as the follower keeps answering reads.
	// Its heartbeat runs every second, so an answered read would show as
	// contact after the freeze within this window.
	window := time.NewTimer(2 * time.Second)
	<-window.C
	if lc := sess.LastContact(); lc.After(frozen) {
		t.Fatalf("contact confirmed %v after the leader hung, through a follower cut off from it", lc.Sub(frozen))
	}
	for _, z := range others {
		z.Thaw()
	}
	// After the outage the session is confirmed again (it did not expire:
	// the outage was shorter than its timeout).
	if err := testenv.WaitFor(ctx, 20*time.Millisecond, func() bool { return sess.LastContact().After(frozen) }); err != nil {
		t.Fatalf("no contact after the servers resumed: %v", err)
	}
	if st, _ := sess.State(); st != coord.StateRunning {
		t.Fatalf("session state after the outage: %v", st)
	}
}

// TestHungServerMovesSessionBeforeDeadline freezes (SIGSTOP) the follower a
// session is connected to: the server neither answers nor closes, as a
// hung host or a partition that drops packets. The library alone leaves
// such a server after its receive timeout, two thirds of the session
// timeout, later than the node's local deadline (0.6 of it): the node
// fenced although the ensemble kept its session (chaos campaign seed 6 on
// ZooKeeper: a partition of one node made the two others fence). The
// session must be confirmed on another server before the local deadline
// would have passed, and never expire. At the default 6 s timeout the
// library's own move comes at 4 s, past the 3.6 s deadline; taskd's at
// about two heartbeat intervals (2 s), which leaves the reconnect a
// second and a half of slack on a loaded machine.
func TestHungServerMovesSessionBeforeDeadline(t *testing.T) {
	ens, s := followersOnly(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const timeout = 6 * time.Second // taskd's default
	deadline := time.Duration(0.6 * float64(timeout))
	sess, err := s.NewSession(ctx, timeout)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close(ctx)
	server := func() string { return sess.(interface{ Server() string }).Server() }
	hung := serverAt(t, ens, server())
	// Let a heartbeat confirm contact, then hang the server right after
	// the confirmation.
	start := sess.LastContact()
	if err := testenv.WaitFor(ctx, 5*time.Millisecond, func() bool { return sess.LastContact().After(start) }); err != nil {
		t.Fatal(err)
	}
	before := sess.LastContact()
	hung.Freeze()
	defer hung.Thaw()
	var after time.Time
	err = testenv.WaitFor(ctx, 5*time.Millisecond, func() bool {
		after = sess.LastContact()
		return after.After(before)
	})
	if err != nil {
		t.Fatalf("no contact after the server hung: %v", err)
	}
	gap := after.Sub(before)
	t.Logf("contact confirmed %v after the last one before the hang, on %s (local deadline %v)", gap, server(), deadline)
	if gap >= deadline {
		t.Fatalf("contact confirmed again only after %v: past the local deadline %v, the node would have fenced", gap, deadline)
	}
	if got := server(); got == hung.Addr() {
		t.Fatalf("session still on the hung server %s", got)
	}
	select {
	case <-sess.Done():
		t.Fatal("session ended after one of three servers hung")
	default:
	}
}

// followersOnly starts a three-server ensemble and opens a store that
// knows its two followers only (the library shuffles its list), so its
// connections are on a follower and move to the other one; hanging the
// leader would add an election.
func followersOnly(t *testing.T) (*harness.Ensemble, coord.Store) {
	t.Helper()
	ens := testenv.StartEnsemble(t, 3)
	var followers []string
	for _, z := range ens.Servers {
		if z.Mode() == "follower" {
			followers = append(followers, z.Addr())
		}
	}
	if len(followers) != 2 {
		t.Fatalf("followers %v, want 2", followers)
	}
	return ens, testenv.OpenZKWith(t, testenv.ZKConfig(t, ens, followers, ""))
}

// serverAt is the ensemble's server at addr.
func serverAt(t *testing.T, ens *harness.Ensemble, addr string) *harness.ZKServer {
	t.Helper()
	for _, z := range ens.Servers {
		if z.Addr() == addr {
			return z
		}
	}
	t.Fatalf("server %q not in ensemble %v", addr, ens.Addrs())
	return nil
}
