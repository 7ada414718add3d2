package peerwatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/keys"
)

// Sample is how often a Reporter reads its member's links: a silence is
// reported at most this much later than it reaches the threshold.
const Sample = 200 * time.Millisecond

// Report is the value of a member's silence record.
type Report struct {
	// Silent are the peers its raft transport has not been linked to
	// for at least the session timeout, with how long, in milliseconds,
	// when the record was written (for operators; the decision uses only
	// the names).
	Silent map[string]int64 `json:"silent_ms"`
}

// Reporter publishes its member's silent peers (see the package comment).
type Reporter struct {
	links     Links
	store     coord.Store
	key       string
	threshold time.Duration
	log       *slog.Logger
}

// NewReporter reports for member self under root; threshold is the
// session timeout.
func NewReporter(links Links, store coord.Store, root keys.Root, self string, threshold time.Duration, log *slog.Logger) (*Reporter, error) {
	key, err := root.Quorum().SilenceKey(self)
	if err != nil {
		return nil, err
	}
	if threshold <= 0 {
		return nil, fmt.Errorf("peer silence threshold %v: want a positive duration", threshold)
	}
	return &Reporter{links: links, store: store, key: key, threshold: threshold, log: log}, nil
}

// Run samples the links every Sample and rewrites the record, bound to
// sess, whenever the set of silent peers changes, until ctx ends. A write
// that fails is retried at the next sample; the record ends with sess.
func (r *Reporter) Run(ctx context.Context, sess coord.Session) error {
	tr := newTracker(r.threshold)
	tick := time.NewTicker(Sample)
	defer tick.Stop()
	var written []string // the silent peers the record holds
	exists := false
	warned := false
	for {
		links, err := r.links.PeerLinks()
		if err != nil {
			if !warned {
				r.log.Warn("cannot read the embedded etcd's peer links; a dead member that led raft keeps its session until its lease expires", "err", err)
				warned = true
			}
		} else {
			silent := tr.observe(time.Now(), links)
			if now := names(silent); !slices.Equal(now, written) {
				if err := r.write(ctx, sess, silent, exists); err != nil {
					r.log.Debug("cannot write the silence record yet", "err", err)
				} else {
					if len(now) > len(written) {
						r.log.Info("peers silent on the raft transport for a session timeout", "peers", now)
					}
					written, exists = now, len(now) > 0
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-sess.Done():
			return nil
		case <-tick.C:
		}
	}
}

// write makes the record say silent (deleting it when nobody is silent).
func (r *Reporter) write(ctx context.Context, sess coord.Session, silent map[string]time.Duration, exists bool) error {
	if len(silent) == 0 {
		if err := r.store.Delete(ctx, r.key, 0); err != nil && !errors.Is(err, coord.ErrNotFound) {
			return fmt.Errorf("delete %s: %w", r.key, err)
		}
		return nil
	}
	rep := Report{Silent: map[string]int64{}}
	for p, d := range silent {
		rep.Silent[p] = d.Milliseconds()
	}
	val, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	if exists {
		_, err = r.store.Update(ctx, r.key, val, 0)
		if !errors.Is(err, coord.ErrNotFound) {
			return err
		}
	}
	if _, err = r.store.Create(ctx, r.key, val, coord.WithSession(sess)); errors.Is(err, coord.ErrExists) {
		_, err = r.store.Update(ctx, r.key, val, 0)
	}
	return err
}
