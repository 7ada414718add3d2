package vips

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/taskd/taskd/internal/backoff"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/vipaddr"
)

// HoldFunc holds s on this node until ctx ends, and returns only after the
// address is gone from the interface. It calls report whenever the address
// comes up or goes down (err says why); report does not block.
type HoldFunc func(ctx context.Context, s vipaddr.Spec, report func(up bool, err error))

// Holder holds the VIPs assigned to its node.
type Holder struct {
	store  coord.Store
	l      keys.VIPs
	self   string
	policy vipaddr.Policy
	hold   HoldFunc
	log    *slog.Logger
}

// NewHolder returns the holder of node self. policy is the node's VIP
// allowlist: the holder publishes it (NodePolicy) so that the leader
// assigns the VIPs it refuses elsewhere; hold enforces it.
func NewHolder(store coord.Store, root keys.Root, self string, policy vipaddr.Policy, hold HoldFunc, log *slog.Logger) *Holder {
	return &Holder{store: store, l: root.VIPs(), self: self, policy: policy, hold: hold, log: log}
}

// publishUntilDone publishes the node's allowlist, retrying with backoff
// until it is written or ctx ends.
func (h *Holder) publishUntilDone(ctx context.Context, first, most time.Duration) {
	retry := backoff.New(first, most)
	for {
		err := h.publish(ctx)
		if err == nil || ctx.Err() != nil {
			return
		}
		h.log.Warn("cannot publish this node's vip allowlist; retrying", "err", err, "retry_in", retry.Next())
		if retry.Wait(ctx) != nil {
			return
		}
	}
}

// publish writes the node's NodePolicy record unless it already says the
// same.
func (h *Holder) publish(ctx context.Context) error {
	key, err := h.l.NodeKey(h.self)
	if err != nil {
		return err
	}
	rec := NodePolicy{Node: h.self, Policy: h.policy, UpdatedAt: time.Now().UTC()}
	kv, err := h.store.Get(ctx, key)
	if errors.Is(err, coord.ErrNotFound) {
		_, err = h.store.Create(ctx, key, encode(rec))
		return err
	}
	if err != nil {
		return err
	}
	if old, derr := decode[NodePolicy](kv.Key, kv.Value); derr == nil && string(encode(old.Policy)) == string(encode(h.policy)) {
		return nil
	}
	_, err = h.store.Update(ctx, key, encode(rec), kv.Version)
	return err
}

// holding is one VIP being held.
type holding struct {
	spec     vipaddr.Spec
	cancel   context.CancelFunc
	stopping bool
}

// Run holds, while sess lives, every VIP assigned to this node and session.
// It takes a VIP only when no other session holds it, and releases one (the
// address first, then the held key) when its assignment moves, its
// configuration changes or ctx ends. It returns after every hold has ended.
func (h *Holder) Run(ctx context.Context, sess coord.Session) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	active := map[string]*holding{}
	defer func() {
		cancel()
		wg.Wait()
	}()
	cfgs := watchDir(ctx, h.store, h.l.ConfigDir())
	defer cfgs.close()
	asg := watchDir(ctx, h.store, h.l.AssignDir())
	defer asg.close()
	held := watchDir(ctx, h.store, h.l.HeldDir())
	defer held.close()
	finished := make(chan string)
	retryTimer := time.NewTimer(time.Hour)
	defer retryTimer.Stop()
	// A failed write is retried soon, then less often (see Assigner).
	const firstRetry, maxRetry = 50 * time.Millisecond, 2 * time.Second
	retry := backoff.New(firstRetry, maxRetry)
	// The allowlist is published beside the loop: a slow store must not
	// hold up a release.
	wg.Add(1)
	go func() { defer wg.Done(); h.publishUntilDone(ctx, firstRetry, maxRetry) }()
	for {
		if cfgs.synced && asg.synced && held.synced {
			if h.reconcile(ctx, sess, cfgs, asg, held, active, &wg, finished) {
				retryTimer.Reset(retry.Advance())
			} else {
				retry.Reset()
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-cfgs.ch:
			if !cfgs.apply(ev, ok) || !cfgs.drain() {
				return nil
			}
		case ev, ok := <-asg.ch:
			if !asg.apply(ev, ok) || !asg.drain() {
				return nil
			}
		case ev, ok := <-held.ch:
			if !held.apply(ev, ok) || !held.drain() {
				return nil
			}
		case svc := <-finished:
			delete(active, svc)
		case <-retryTimer.C:
		}
	}
}

// reconcile starts and stops holds; it reports whether a store write
// failed and should be retried.
func (h *Holder) reconcile(ctx context.Context, sess coord.Session, cfgs, asg, held *mirror, active map[string]*holding, wg *sync.WaitGroup, finished chan<- string) (retry bool) {
	want := map[string]vipaddr.Spec{}
	for svc, akv := range asg.keys {
		a, err := decode[Assignment](akv.Key, akv.Value)
		if err != nil || a.Node != h.self || a.Session != sess.ID() {
			continue
		}
		ckv, ok := cfgs.keys[svc]
		if !ok {
			continue
		}
		c, err := decode[ServiceVIP](ckv.Key, ckv.Value)
		if err == nil && c.Service != svc {
			err = fmt.Errorf("%w: the record names service %s", keys.ErrInvalid, keys.Quote(c.Service))
		}
		if err != nil {
			h.log.Error("unreadable vip configuration", "service", svc, "err", err)
			continue
		}
		spec, err := c.Spec()
		if err != nil {
			h.log.Error("invalid vip configuration in the store", "service", svc, "err", err)
			continue
		}
		want[svc] = spec
	}
	for svc, a := range active {
		if s, ok := want[svc]; (!ok || s != a.spec) && !a.stopping {
			a.stopping = true
			a.cancel()
		}
	}
	for svc, spec := range want {
		if active[svc] != nil {
			continue
		}
		var kv coord.KV
		var err error
		rec := Held{Node: h.self, Session: sess.ID(), Since: time.Now().UTC()}
		if hkv, ok := held.keys[svc]; ok {
			other, derr := decode[Held](hkv.Key, hkv.Value)
			if derr == nil && other.Session != sess.ID() {
				continue // the previous holder still holds it; its release wakes us
			}
			// Our own key, left by an earlier hold of this session.
			kv, err = h.store.Update(ctx, hkv.Key, encode(rec), hkv.Version)
		} else if key, kerr := h.l.HeldKey(svc); kerr != nil {
			err = kerr
		} else {
			kv, err = h.store.Create(ctx, key, encode(rec), coord.WithSession(sess))
		}
		if errors.Is(err, coord.ErrExists) || errors.Is(err, coord.ErrConflict) || errors.Is(err, coord.ErrNotFound) {
			continue // the watch brings the change
		}
		if err != nil {
			if ctx.Err() == nil {
				h.log.Warn("cannot mark the vip as held; retrying", "service", svc, "err", err)
			}
			retry = true
			continue
		}
		hctx, hcancel := context.WithCancel(ctx)
		active[svc] = &holding{spec: spec, cancel: hcancel}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer hcancel()
			h.run(hctx, ctx, spec, rec, kv)
			select {
			case finished <- svc:
			case <-ctx.Done():
			}
		}()
	}
	return retry
}

// run holds one VIP and keeps its held record current; after the hold ends
// (the address is gone) it deletes the record.
func (h *Holder) run(hctx, ctx context.Context, spec vipaddr.Spec, rec Held, kv coord.KV) {
	status := make(chan Held, 1)
	var sw sync.WaitGroup
	sw.Add(1)
	go func() {
		defer sw.Done()
		for r := range status {
			nkv, err := h.store.Update(ctx, kv.Key, encode(r), kv.Version)
			if err != nil {
				h.log.Warn("cannot record the vip's state", "service", spec.Service, "up", r.Up, "err", err)
				continue
			}
			kv = nkv
		}
	}()
	var mu sync.Mutex
	closed := false
	report := func(up bool, err error) {
		mu.Lock()
		defer mu.Unlock()
		if closed {
			return
		}
		rec.Up, rec.Error = up, ""
		if err != nil {
			rec.Error = err.Error()
		}
		select { // keep only the latest state
		case <-status:
		default:
		}
		status <- rec
	}
	h.hold(hctx, spec, report)
	mu.Lock()
	closed = true
	close(status)
	mu.Unlock()
	sw.Wait()
	// When the whole holder is ending (a fence or a shutdown) the key is
	// left to the session: a fence must not wait on a store it may not
	// reach, and until the session ends no other node takes the VIP.
	if ctx.Err() != nil {
		return
	}
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := h.store.Delete(dctx, kv.Key, kv.Version); err != nil && !errors.Is(err, coord.ErrNotFound) {
		h.log.Warn("cannot clear the vip's held record; it goes with the session", "service", spec.Service, "err", err)
	}
}
