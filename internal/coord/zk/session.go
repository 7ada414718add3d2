package zk

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/go-zookeeper/zk"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/coord/internal/backend"
)

// session is one ZooKeeper connection used as a coord.Session.
type session struct {
	*backend.SessionCore
	c      *conn
	log    *slog.Logger
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewSession connects a new ZooKeeper session and waits until the ensemble
// has granted it or ctx ends.
//
// The library reconnects to another ensemble member on its own when its
// server fails, keeping the session; the state goes connecting -> running.
// The ensemble must allow timeout (minSessionTimeout <= timeout <=
// maxSessionTimeout), or it negotiates another value.
func (s *Store) NewSession(ctx context.Context, timeout time.Duration) (coord.Session, error) {
	sent := time.Now()
	zs := &session{}
	var coreMu sync.Mutex // the callback may run before SessionCore exists
	var early []zk.State
	onState := func(st zk.State) {
		coreMu.Lock()
		defer coreMu.Unlock()
		if zs.SessionCore == nil {
			early = append(early, st)
			return
		}
		applyState(zs.SessionCore, st)
	}
	c, err := s.dial(ctx, timeout, onState)
	if err != nil {
		return nil, err
	}
	if s.chroot != "" {
		if err := s.ensureParents(c, s.chrootKey()); err != nil {
			c.Close()
			return nil, err
		}
	}
	hctx, cancel := context.WithCancel(context.Background())
	coreMu.Lock()
	zs.SessionCore = backend.NewSessionCore(timeout, sent)
	zs.c, zs.cancel, zs.log = c, cancel, s.log
	if f := s.observe.Load(); f != nil {
		zs.ObserveLateness(*f)
	}
	// Before the session existed the library reported connecting/connected;
	// only an expiry in that window matters.
	for _, st := range early {
		if st == zk.StateExpired {
			applyState(zs.SessionCore, st)
		}
	}
	coreMu.Unlock()
	zs.wg.Add(1)
	go func() {
		defer zs.wg.Done()
		backend.RunHeartbeat(hctx, zs.SessionCore, zs.ping)
	}()
	return zs, nil
}

// chrootKey is a key whose parents are the chroot itself.
func (s *Store) chrootKey() string { return "/.chroot" }

func applyState(core *backend.SessionCore, st zk.State) {
	switch st {
	case zk.StateDisconnected, zk.StateConnecting:
		core.Disconnected()
	case zk.StateHasSession:
		core.Reconnected()
	case zk.StateExpired:
		core.End(coord.StateExpired)
	}
}

// ping is a round trip on the session's own connection; the server answers
// it only while the session is alive.
// ping confirms the session with a sync, which a follower forwards to the
// ensemble's leader. A read would not do: a follower cut off from its leader
// keeps answering reads until it notices (syncLimit ticks later), while the
// leader, which is what expires sessions, hears nothing; the local deadline
// would then count from contact the leader never saw.
//
// The heartbeat gives the ping one interval (ctx's deadline). A sync not
// answered by then, on a connection that read nothing else either, leaves
// its server: that connection is dropped and the library moves the
// session to the next server at once (conn.dropQuiet), well before the
// local deadline. An answer that comes after the ping gave up still
// confirms contact, as of the sync's sending.
func (zs *session) ping(ctx context.Context) (bool, error) {
	nc, start := zs.c.current(), time.Now()
	done := make(chan error, 1)
	zs.wg.Add(1)
	go func() {
		defer zs.wg.Done()
		_, err := zs.c.Sync("/")
		if err == nil {
			zs.Confirm(start) // also when the ping gave up before the answer
		}
		done <- err
	}()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		select {
		case err = <-done: // answered as the wait ended
		default:
			if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return false, ctx.Err() // the session is closing
			}
			server := zs.c.Server()
			if zs.c.dropQuiet(nc, start) {
				zs.log.Warn("leaving a ZooKeeper server that does not answer: the session moves to the next server",
					"server", server, "session", zs.ID(), "no_contact_for", time.Since(zs.LastContact()).Round(time.Millisecond).String())
			}
			return false, fmt.Errorf("zookeeper sync on %s: no answer within the heartbeat interval: %w", server, coord.ErrUnavailable)
		}
	}
	if errors.Is(err, zk.ErrSessionExpired) {
		return true, err
	}
	return false, err
}

func (zs *session) ID() string { return fmt.Sprintf("zk-%x", zs.c.SessionID()) }

// Server is the ensemble member the session is connected to.
func (zs *session) Server() string { return zs.c.Server() }

// Close closes the session; the ensemble deletes its ephemeral keys.
func (zs *session) Close(context.Context) error {
	zs.cancel()
	zs.c.Close()
	zs.wg.Wait()
	zs.End(coord.StateStopped)
	return nil
}
