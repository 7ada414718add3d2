package vips_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/testenv"
	"github.com/taskd/taskd/internal/vipaddr"
	"github.com/taskd/taskd/internal/vips"
)

// TestWatchesEndWithOwner plays a component that returns while the store
// keeps running: the store watches it started must have ended by the time
// it returns, not some time later (nor, for a component that returns an
// error under a live context, never). Each owner runs in a goroutine of its
// own; the check counts the watch goroutines created from that goroutine
// that are still alive at the instant the owner has returned.
func TestWatchesEndWithOwner(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			store, root := b.Open(t), testRoot(t)
			owners := map[string]func(ctx context.Context) error{
				"holder": func(ctx context.Context) error {
					sess, err := store.NewSession(ctx, 10*time.Second)
					if err != nil {
						return err
					}
					defer sess.Close(context.Background())
					h := vips.NewHolder(store, root, "n1", vipaddr.Policy{}, newLedger().holdFunc("n1"), slog.Default())
					return h.Run(ctx, sess)
				},
				"assigner": func(ctx context.Context) error {
					// A one-member quorum gives the assigner a leadership;
					// the assigner itself runs in the owner's goroutine.
					cfg := quorum.DefaultConfig()
					cfg.Name, cfg.NodeID, cfg.Address, cfg.Root = "n1", "id-n1", "n1:1", root.String()
					cfg.CampaignStagger = 100 * time.Millisecond
					leads := make(chan *quorum.Leadership, 1)
					q, err := quorum.New(cfg, store, quorum.Roles{Leader: func(lctx context.Context, l *quorum.Leadership) error {
						leads <- l
						<-lctx.Done()
						return nil
					}}, slog.Default())
					if err != nil {
						return err
					}
					qctx, qcancel := context.WithCancel(context.Background())
					qdone := make(chan error, 1)
					go func() { qdone <- q.Run(qctx) }()
					defer func() { qcancel(); <-qdone }()
					select {
					case l := <-leads:
						return vips.NewAssigner(store, root, "n1", time.Second, nil, slog.Default()).Run(ctx, l, q.View)
					case <-ctx.Done():
						return ctx.Err()
					}
				},
				"registry wait": func(ctx context.Context) error {
					err := vips.NewRegistry(store, root, func() quorum.View { return quorum.View{} }, nil).WaitHeld(ctx, "web", "n1")
					if ctx.Err() != nil {
						return nil
					}
					return err
				},
			}
			for name, run := range owners {
				t.Run(name, func(t *testing.T) {
					started := make(chan int64, 1)
					left := make(chan int, 1)
					ctx, cancel := context.WithCancel(context.Background())
					defer cancel()
					errs := make(chan error, 1)
					go func() {
						gid := goroutineID()
						started <- gid
						errs <- run(ctx)
						left <- watchesStartedBy(gid)
					}()
					gid := <-started
					wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer wcancel()
					if err := testenv.WaitFor(wctx, 5*time.Millisecond, func() bool { return watchesStartedBy(gid) > 0 }); err != nil {
						t.Fatalf("%s started no watch: %v", name, err)
					}
					cancel()
					if err := <-errs; err != nil {
						t.Fatalf("%s: %v", name, err)
					}
					if n := <-left; n != 0 {
						t.Fatalf("%s returned with %d of its store watches still running", name, n)
					}
				})
			}
		})
	}
}

// goroutineID is the id of the calling goroutine, from its stack header
// ("goroutine 42 [running]:").
func goroutineID() int64 {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	f := strings.Fields(string(buf))
	id, _ := strconv.ParseInt(f[1], 10, 64)
	return id
}

// watchesStartedBy counts the live goroutines that a store watch started
// on behalf of goroutine gid (the backends' Watch, or coord's watcher).
func watchesStartedBy(gid int64) int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	suffix := fmt.Sprintf(" in goroutine %d", gid)
	count := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		for _, line := range strings.Split(string(g), "\n") {
			if !strings.HasPrefix(line, "created by ") || !strings.HasSuffix(line, suffix) {
				continue
			}
			if strings.Contains(line, "internal/coord.StartWatcher") || strings.Contains(line, ").Watch in goroutine") {
				count++
			}
		}
	}
	return count
}
